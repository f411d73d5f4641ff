"""User admin routes (who: admin_auth.py), LiteLLM's shapes: /user/new, /user/info, /user/update,
/user/delete, /user/list. Handlers parse, call one UserAdmin method, render.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from faregate.accounts.teams import member_view, team_view
from faregate.accounts.users import UserAdmin, UserFilters, UserSettings, user_view
from faregate.api.admin_auth import Access, Roles
from faregate.api.admin_fields import Id, TermFields
from faregate.api.storable_input import StorableInput
from faregate.errors import InvalidRequest, NotFound
from faregate.keys.admin import KeyAdmin
from faregate.wire.storable import INT32_MAX


class UserFields(TermFields):
    user_email: str | None = Field(default=None, max_length=256)
    user_alias: str | None = Field(default=None, max_length=256)
    user_role: str | None = None
    models: list[Annotated[str, Field(max_length=256)]] | None = None
    metadata: dict[str, Any] | None = None
    budget_id: str | None = Field(default=None, max_length=256)

    def settings(self) -> UserSettings:
        return UserSettings(**{n: getattr(self, n) for n in UserSettings.__dataclass_fields__})

    def given(self) -> set[str]:
        return set(self.model_fields_set) & set(UserSettings.__dataclass_fields__)


class NewUser(UserFields):
    user_id: Id | None = None
    # LiteLLM makes a key with every new user unless told not to; faregate makes none
    # (generate one with /key/generate and this user_id): only false is accepted.
    auto_create_key: bool | None = None
    send_invite_email: bool | None = None


class UpdateUser(UserFields):
    user_id: Id | None = None


class DeleteUsers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[Id] = Field(min_length=1, max_length=1000)


def build_user_routes(roles: Roles, users: UserAdmin, keys: KeyAdmin) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]   # api/admin_auth.py ROUTES

    @router.post("/user/new")
    async def new(body: NewUser, _: Who) -> dict[str, Any]:
        if body.auto_create_key or body.send_invite_email:
            field = "auto_create_key" if body.auto_create_key else "send_invite_email"
            raise InvalidRequest(f"'{field}' is not supported: faregate makes no key with a "
                                 "user and sends no email. Send false, then call "
                                 "/key/generate with this user_id", param=field,
                                 code="field_not_supported")
        record = await users.create(body.settings(), body.given(), body.user_id)
        return {**user_view(record), "teams": [], "key": None}   # a new user is in none

    @router.get("/user/info")
    async def info(who: Who, user_id: str | None = None) -> dict[str, Any]:
        user_id = who.user(user_id or who.user_id)      # not given: the caller's own
        if not user_id:
            raise InvalidRequest("Pass ?user_id=...", param="user_id")
        found = await users.info(user_id)
        return {"user_id": user_id, "user_info": {
                    **user_view(found.user), "teams": [m.team_id for m in found.teams]},
                "keys": [keys.view(k) for k in found.keys],
                # LiteLLM lists the user's teams (its list_team objects), each here with
                # the user's own membership
                "teams": [{**team_view(found.team_records[m.team_id]),
                           "team_memberships": [member_view(m)]}
                          for m in found.teams if m.team_id in found.team_records]}

    @router.post("/user/update")
    async def update(body: UpdateUser, _: Who) -> dict[str, Any]:
        user_id = body.user_id
        if user_id is None:
            if body.user_email is None:
                raise InvalidRequest("Say which user: 'user_id' (or 'user_email')",
                                     param="user_id")
            found = await users.by_email(body.user_email)
            if found is None:
                raise NotFound(f"No user has the email {body.user_email!r}",
                               code="user_not_found", param="user_email")
            user_id = found.user_id
        record = await users.update(user_id, body.settings(), body.given())
        return {"user_id": record.user_id, "data": user_view(record)}

    @router.post("/user/delete")
    async def delete(body: DeleteUsers, _: Who) -> dict[str, Any]:
        deleted = await users.delete(body.user_ids, keys.delete)
        if not deleted:
            raise NotFound("None of the given users exist", code="user_not_found",
                           param="user_ids")
        return {"deleted_users": deleted}

    @router.get("/user/list")
    async def list_users(_: Who, page: Annotated[int, Query(ge=1, le=INT32_MAX)] = 1,
                         page_size: Annotated[int, Query(ge=1, le=100)] = 25,
                         user_ids: str | None = None, role: str | None = None,
                         user_email: str | None = None,
                         team: str | None = None) -> dict[str, Any]:
        filters = UserFilters(
            user_ids=None if user_ids is None else tuple(
                i.strip() for i in user_ids.split(",") if i.strip()),
            user_role=role, user_email=user_email, team_id=team)
        found, total = await users.list(filters, page, page_size)
        return {"users": [user_view(u) for u in found], "total": total, "page": page,
                "page_size": page_size, "total_pages": (total + page_size - 1) // page_size}

    return router

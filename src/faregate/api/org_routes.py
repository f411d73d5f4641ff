"""Organization admin routes (who: admin_auth.py), LiteLLM's shapes: /organization/new, /info,
/update, /delete, /list, /member_add, /member_update, /member_delete. LiteLLM takes update
and member_update as PATCH and the deletes as DELETE; POST is taken too. Handlers parse, call
one OrganizationAdmin method, render.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from faregate.accounts.organizations import OrganizationAdmin, member_view
from faregate.api.admin_auth import Access, Roles
from faregate.api.admin_fields import Id, TermFields, Unsupported
from faregate.api.storable_input import StorableInput
from faregate.errors import InvalidRequest
from faregate.storage.protocols import PageAfter

Role = Literal["org_admin", "internal_user", "internal_user_viewer"]

# LiteLLM's organization fields faregate does not implement, and why
NOT_SUPPORTED: dict[str, str] = {
    "soft_budget": "faregate sends no soft-budget alerts",
    "model_max_budget": "per-model budgets are not enforced yet",
    "model_rpm_limit": "per-model limits of an organization are not enforced yet",
    "model_tpm_limit": "per-model limits of an organization are not enforced yet",
    "object_permission": "per-organization MCP/vector-store permissions are not offered",
    "tags": "organization tags are not offered",
    "spend": "an organization's spend is the sum of its ledger rows; it cannot be set",
    "budget_reset_at": "the period ends budget_duration after it starts",
    "max_budget_in_organization": "a member's budget within an organization is not "
                                  "enforced; give the member's team or user a budget",
}


class _Unsupported(Unsupported):
    unsupported = NOT_SUPPORTED


class OrgFields(TermFields, _Unsupported):
    models: list[Annotated[str, Field(max_length=256)]] | None = Field(default=None,
                                                                     max_length=1000)
    budget_id: Id | None = None
    metadata: dict[str, Any] | None = None
    blocked: bool | None = None

    def fields(self) -> dict[str, Any]:
        names = {"organization_alias", "models", "budget_id", "metadata", "blocked"}
        return {**self.terms(),
                **{n: getattr(self, n) for n in self.model_fields_set if n in names}}


class NewOrg(OrgFields):
    organization_id: Id | None = None
    organization_alias: str = Field(min_length=1, max_length=256)


class UpdateOrg(OrgFields):
    organization_id: Id
    organization_alias: str | None = Field(default=None, min_length=1, max_length=256)


class OrgIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    organization_ids: list[Id] = Field(min_length=1, max_length=1000)


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id | None = None
    user_email: str | None = Field(default=None, max_length=256)
    role: Role


class MemberAdd(_Unsupported):
    model_config = ConfigDict(extra="forbid")
    organization_id: Id
    member: Member | list[Member]


class MemberUpdate(_Unsupported):
    model_config = ConfigDict(extra="forbid")
    organization_id: Id
    user_id: Id | None = None
    user_email: str | None = Field(default=None, max_length=256)
    role: Role


class MemberDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")
    organization_id: Id
    user_id: Id | None = None
    user_email: str | None = Field(default=None, max_length=256)


def build_org_routes(roles: Roles, orgs: OrganizationAdmin) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]   # api/admin_auth.py ROUTES

    @router.post("/organization/new")
    async def new(body: NewOrg, _: Who) -> dict[str, Any]:
        return orgs.view(await orgs.new(body.organization_id,
                                        {**body.fields(),
                                         "organization_alias": body.organization_alias}))

    @router.get("/organization/info")
    async def info(who: Who, organization_id: Annotated[str, Query(min_length=1,
                                                                       max_length=256)]
                   ) -> dict[str, Any]:
        await who.organization(organization_id)
        record = await orgs.get(organization_id)
        return orgs.view(record, await orgs.teams(organization_id),
                         await orgs.members(organization_id))

    @router.patch("/organization/update")
    @router.post("/organization/update")
    async def update(body: UpdateOrg, _: Who) -> dict[str, Any]:
        if "organization_alias" in body.model_fields_set and body.organization_alias is None:
            raise InvalidRequest("'organization_alias' cannot be null",
                                 param="organization_alias")
        return orgs.view(await orgs.update(body.organization_id, body.fields()))

    @router.delete("/organization/delete")
    @router.post("/organization/delete")
    async def delete(body: OrgIds, _: Who) -> list[dict[str, Any]]:
        return [orgs.view(r) for r in await orgs.delete(body.organization_ids)]

    @router.get("/organization/list")
    async def list_orgs(_: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                        after: Annotated[str | None, Query(max_length=256)] = None
                        ) -> list[dict[str, Any]]:
        """Oldest first; `after`: the last organization_id of the previous page."""
        start = None
        if after is not None:
            last = await orgs.get(after)
            if last.created_at is not None:
                start = PageAfter(last.created_at, last.organization_id)
        return [orgs.view(r) for r in (await orgs.page(start, limit)).items]

    @router.post("/organization/member_add")
    async def member_add(body: MemberAdd, who: Who) -> dict[str, Any]:
        await who.organization(body.organization_id)
        members = body.member if isinstance(body.member, list) else [body.member]
        if not members:
            raise InvalidRequest("'member' names nobody", param="member")
        added = await orgs.add_members(body.organization_id,
                                       [(m.user_id, m.user_email, m.role) for m in members])
        return {"organization_id": body.organization_id,
                "updated_users": [{"user_id": m.user_id} for m in added],
                "updated_organization_memberships": [member_view(m) for m in added]}

    @router.patch("/organization/member_update")
    @router.post("/organization/member_update")
    async def member_update(body: MemberUpdate, who: Who) -> dict[str, Any]:
        await who.organization(body.organization_id)
        return member_view(await orgs.update_member(body.organization_id, body.user_id,
                                                    body.user_email, body.role))

    @router.delete("/organization/member_delete")
    @router.post("/organization/member_delete")
    async def member_delete(body: MemberDelete, who: Who) -> dict[str, Any]:
        await who.organization(body.organization_id)
        user_id = await orgs.delete_member(body.organization_id, body.user_id,
                                           body.user_email)
        return {"organization_id": body.organization_id, "user_id": user_id,
                "deleted": True}

    return router

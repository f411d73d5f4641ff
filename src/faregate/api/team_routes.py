"""Team admin routes (who: admin_auth.py), LiteLLM's shapes: /team/new, /team/info, /team/update,
/team/delete, /team/list, /team/member_add, /team/member_delete, /team/member_update,
/team/block, /team/unblock, /team/model/add, /team/model/delete. Handlers parse, call one
TeamAdmin method, render.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from faregate.accounts.teams import NewMember, TeamAdmin, TeamSettings, member_view, team_view
from faregate.api.admin_auth import Access, Roles
from faregate.api.admin_fields import Dollars, Id, TermFields
from faregate.api.storable_input import StorableInput
from faregate.errors import InvalidRequest
from faregate.keys.admin import KeyAdmin


class Member(BaseModel):
    """LiteLLM's Member: a user by user_id or user_email, with a role in the team."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id | None = None
    user_email: str | None = Field(default=None, max_length=256)
    role: str = "user"

    def new(self) -> NewMember:
        return NewMember(self.user_id, self.user_email, self.role)


class TeamFields(TermFields):
    team_alias: str | None = Field(default=None, max_length=256)
    models: list[Annotated[str, Field(max_length=256)]] | None = None
    metadata: dict[str, Any] | None = None
    organization_id: str | None = Field(default=None, max_length=256)
    blocked: bool | None = None
    budget_id: str | None = Field(default=None, max_length=256)

    def settings(self) -> TeamSettings:
        return TeamSettings(**{n: getattr(self, n) for n in TeamSettings.__dataclass_fields__})

    def given(self) -> set[str]:
        return set(self.model_fields_set) & set(TeamSettings.__dataclass_fields__)


class NewTeam(TeamFields):
    team_id: Id | None = None
    members_with_roles: list[Member] | None = Field(default=None, max_length=1000)


class UpdateTeam(TeamFields):
    team_id: Id


class TeamRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_id: Id


class DeleteTeams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_ids: list[Id] = Field(min_length=1, max_length=1000)


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_id: Id
    member: Member | list[Member]
    max_budget_in_team: Dollars | None = None


class MemberRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_id: Id
    user_id: Id | None = None
    user_email: str | None = Field(default=None, max_length=256)


class MemberUpdate(MemberRef):
    role: str | None = None
    max_budget_in_team: Dollars | None = None


class TeamModels(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team_id: Id
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=1000)


def build_team_routes(roles: Roles, teams: TeamAdmin, keys: KeyAdmin) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]   # api/admin_auth.py ROUTES

    async def shown(team_id: str) -> dict[str, Any]:
        found = await teams.info(team_id)
        return team_view(found.team, found.members)

    @router.post("/team/new")
    async def new(body: NewTeam, who: Who) -> dict[str, Any]:
        await who.new_team(body.organization_id)
        members = [m.new() for m in body.members_with_roles or []]
        record = await teams.create(body.settings(), body.given(), body.team_id, members)
        return await shown(record.team_id)

    @router.get("/team/info")
    async def info(who: Who, team_id: str | None = None) -> dict[str, Any]:
        if not team_id:
            raise InvalidRequest("Pass ?team_id=...", param="team_id")
        await who.team(team_id)
        found = await teams.info(team_id)
        return {"team_id": team_id, "team_info": team_view(found.team, found.members),
                "keys": [keys.view(k) for k in found.keys],
                "team_memberships": [member_view(m) for m in found.members]}

    @router.post("/team/update")
    async def update(body: UpdateTeam, _: Who) -> dict[str, Any]:
        record = await teams.update(body.team_id, body.settings(), body.given())
        return {"team_id": record.team_id, "data": await shown(record.team_id)}

    @router.post("/team/delete")
    async def delete(body: DeleteTeams, _: Who) -> dict[str, Any]:
        return {"deleted_teams": await teams.delete(body.team_ids)}

    @router.get("/team/list")
    async def list_teams(who: Who, user_id: str | None = None,
                         organization_id: str | None = None) -> list[dict[str, Any]]:
        return [team_view(t) for t in await teams.find(organization_id, who.user(user_id))]

    @router.post("/team/member_add")
    async def member_add(body: MemberAdd, who: Who) -> dict[str, Any]:
        await who.team(body.team_id)
        members = body.member if isinstance(body.member, list) else [body.member]
        added = await teams.add_members(body.team_id, [m.new() for m in members],
                                        body.max_budget_in_team)
        return {**await shown(body.team_id),
                "updated_users": [{"user_id": m.user_id} for m in added],
                "updated_team_memberships": [member_view(m) for m in added]}

    @router.post("/team/member_delete")
    async def member_delete(body: MemberRef, who: Who) -> dict[str, Any]:
        await who.team(body.team_id)
        await teams.remove_member(body.team_id, body.user_id, body.user_email)
        return await shown(body.team_id)

    @router.post("/team/member_update")
    async def member_update(body: MemberUpdate, who: Who) -> dict[str, Any]:
        await who.team(body.team_id)
        record = await teams.update_member(body.team_id, body.user_id, body.user_email,
                                           body.role, body.max_budget_in_team,
                                           body.model_fields_set)
        return member_view(record)

    @router.post("/team/block")
    async def block(body: TeamRef, _: Who) -> dict[str, Any]:
        return team_view(await teams.set_blocked(body.team_id, True))

    @router.post("/team/unblock")
    async def unblock(body: TeamRef, _: Who) -> dict[str, Any]:
        return team_view(await teams.set_blocked(body.team_id, False))

    @router.post("/team/model/add")
    async def model_add(body: TeamModels, _: Who) -> dict[str, Any]:
        return team_view(await teams.add_models(body.team_id, body.models))

    @router.post("/team/model/delete")
    async def model_delete(body: TeamModels, _: Who) -> dict[str, Any]:
        return team_view(await teams.delete_models(body.team_id, body.models))

    return router

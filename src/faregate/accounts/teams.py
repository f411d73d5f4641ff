"""Team administration: the business of /team/* (the handlers only parse and render).

A team pays for its keys' requests, and each member within it (max_budget_in_team) too
(docs/hierarchy.md). Changes land in the database, then admission is told, so the next request
sees them. Deleting a team deletes its keys, as LiteLLM does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from faregate.accounts.changes import PayerChanges
from faregate.accounts.terms import Terms, iso, record_terms, spend_view, terms_view
from faregate.accounts.users import DeleteKeys, UserAdmin, all_pages
from faregate.errors import InvalidRequest, NotFound
from faregate.money import dollars_to_nanos, nanos_to_dollars
from faregate.records import KeyRecord, MemberRecord, TeamRecord
from faregate.storage.protocols import DuplicateId, HierarchyStore, scope
from faregate.wire.storable import check_stored_size

# LiteLLM's roles within a team
MEMBER_ROLES = ("admin", "user")
_PAGE = 1000


@dataclass(frozen=True)
class TeamSettings(Terms):
    """The settable fields of a team, its terms and the rest, in LiteLLM's names; None =
    not given."""

    team_alias: str | None = None
    models: list[str] | None = None
    metadata: dict[str, Any] | None = None
    organization_id: str | None = None
    blocked: bool | None = None
    budget_id: str | None = None


@dataclass(frozen=True)
class NewMember:
    """A member to add: by user_id, else by user_email (a user made when none has it)."""

    user_id: str | None = None
    user_email: str | None = None
    role: str = "user"


@dataclass(frozen=True)
class TeamInfo:
    team: TeamRecord
    members: list[MemberRecord]
    keys: list[KeyRecord]


class TeamAdmin:
    def __init__(self, storage: HierarchyStore, users: UserAdmin, notices: PayerChanges,
                 now: Callable[[], datetime], delete_keys: DeleteKeys) -> None:
        self._storage = storage
        self._users = users
        self._notices = notices
        self._now = now
        self._delete_keys = delete_keys     # KeyAdmin.delete: the directory forgets them too

    async def create(self, settings: TeamSettings, given: Collection[str],
                     team_id: str | None = None,
                     members: Collection[NewMember] = ()) -> TeamRecord:
        now = self._now()
        changes = await self._changes(settings, set(given), now)
        _check_members(members, ())
        record = TeamRecord(team_id=team_id or str(uuid.uuid4()), created_at=now,
                            updated_at=now, **changes)
        try:
            await self._storage.insert_team(record)
        except DuplicateId:
            raise InvalidRequest(f"Team {record.team_id!r} already exists; change it with "
                                 "/team/update", param="team_id", code="team_exists") from None
        if members:
            await self.add_members(record.team_id, members, None)
        return record

    async def get(self, team_id: str) -> TeamRecord:
        found = await self._storage.get_team(team_id)
        if found is None:
            raise NotFound(f"Team {team_id!r} does not exist", code="team_not_found",
                           param="team_id")
        return found

    async def info(self, team_id: str) -> TeamInfo:
        team = await self.get(team_id)
        members = await self._storage.list_team_members(team_id)
        keys = await all_pages(lambda after: self._storage.list_keys_page(
            {"team_id": team_id}, after, _PAGE))
        return TeamInfo(team, members, keys)

    async def update(self, team_id: str, settings: TeamSettings,
                     given: Collection[str]) -> TeamRecord:
        await self.get(team_id)
        changes = await self._changes(settings, set(given), self._now())
        record = await self._storage.update_team(team_id, changes)
        if record is None:
            raise NotFound(f"Team {team_id!r} was deleted meanwhile", code="team_not_found")
        await self._notices.changed(scope("team", team_id), record.budget_reset_at,
                                    new_period="budget_duration" in changes)
        return record

    async def set_blocked(self, team_id: str, blocked: bool) -> TeamRecord:
        return await self.update(team_id, TeamSettings(blocked=blocked), {"blocked"})

    async def add_models(self, team_id: str, models: list[str]) -> TeamRecord:
        team = await self.get(team_id)
        merged = [*team.models, *(m for m in models if m not in team.models)]
        return await self.update(team_id, TeamSettings(models=merged), {"models"})

    async def delete_models(self, team_id: str, models: list[str]) -> TeamRecord:
        team = await self.get(team_id)
        kept = [m for m in team.models if m not in set(models)]
        return await self.update(team_id, TeamSettings(models=kept), {"models"})

    async def delete(self, team_ids: list[str]) -> list[str]:
        """The teams, their memberships and their keys go (as LiteLLM deletes a team's keys);
        spend rows stay. All must exist, or nothing is deleted."""
        for team_id in team_ids:
            await self.get(team_id)
        deleted: list[str] = []
        for team_id in team_ids:
            info = await self.info(team_id)
            if info.keys:
                await self._delete_keys([k.token for k in info.keys])
            if await self._storage.delete_team(team_id):
                deleted.append(team_id)
            await self._notices.changed(scope("team", team_id))
            for member in info.members:
                await self._notices.changed(scope("member", team_id, member.user_id))
        return deleted

    async def find(self, organization_id: str | None = None,
                   user_id: str | None = None) -> list[TeamRecord]:
        where = {} if organization_id is None else {"organization_id": organization_id}
        teams = await all_pages(lambda after: self._storage.list_teams(where, after, _PAGE))
        if user_id is not None:
            mine = {m.team_id for m in await self._storage.list_user_teams(user_id)}
            teams = [t for t in teams if t.team_id in mine]
        return teams

    async def add_members(self, team_id: str, members: Collection[NewMember],
                          max_budget_in_team: float | None) -> list[MemberRecord]:
        """Each member's user is made if it does not exist (by id, or with a new id for an
        email no user has), as LiteLLM does. A user already in the team is a 400."""
        await self.get(team_id)
        budget = _money(max_budget_in_team, "max_budget_in_team")
        _check_members(members, [m.user_id for m in await self._storage.list_team_members(
            team_id)])
        added: list[MemberRecord] = []
        for member in members:
            user_id = await self._user_of(member.user_id, member.user_email, create=True)
            record = MemberRecord(team_id=team_id, user_id=user_id, role=member.role,
                                  max_budget_in_team_nanos=budget, created_at=self._now())
            try:
                await self._storage.add_team_member(record)
            except DuplicateId:
                raise InvalidRequest(f"User {user_id!r} is already a member of team "
                                     f"{team_id!r}; change it with /team/member_update",
                                     param="member", code="member_exists") from None
            await self._notices.changed(scope("member", team_id, user_id))
            added.append(record)
        return added

    async def update_member(self, team_id: str, user_id: str | None, user_email: str | None,
                            role: str | None, max_budget_in_team: float | None,
                            given: Collection[str]) -> MemberRecord:
        await self.get(team_id)
        user = await self._user_of(user_id, user_email, create=False)
        changes: dict[str, Any] = {}
        if "role" in given and role is not None:
            _check_role(role)
            changes["role"] = role
        if "max_budget_in_team" in given:
            changes["max_budget_in_team_nanos"] = _money(max_budget_in_team,
                                                         "max_budget_in_team")
        if await self._storage.get_team_member(team_id, user) is None:
            raise NotFound(f"User {user!r} is not a member of team {team_id!r}",
                           code="member_not_found", param="user_id")
        record = await self._storage.update_team_member(team_id, user, changes)
        if record is None:
            raise NotFound(f"User {user!r} is not a member of team {team_id!r}",
                           code="member_not_found", param="user_id")
        await self._notices.changed(scope("member", team_id, user))
        return record

    async def remove_member(self, team_id: str, user_id: str | None,
                            user_email: str | None) -> str:
        await self.get(team_id)
        user = await self._user_of(user_id, user_email, create=False)
        if not await self._storage.remove_team_member(team_id, user):
            raise NotFound(f"User {user!r} is not a member of team {team_id!r}",
                           code="member_not_found", param="user_id")
        await self._notices.changed(scope("member", team_id, user))
        return user

    async def _user_of(self, user_id: str | None, user_email: str | None, *,
                       create: bool) -> str:
        if user_id:
            if create:
                await self._users.ensure(user_id)
            return user_id
        if not user_email:
            raise InvalidRequest("Name the member by 'user_id' or 'user_email'",
                                 param="user_id")
        found = await self._users.by_email(user_email)
        if found is not None:
            return found.user_id
        if not create:
            raise NotFound(f"No user has the email {user_email!r}", code="user_not_found",
                           param="user_email")
        return (await self._users.create_with_email(user_email)).user_id

    async def _changes(self, s: TeamSettings, given: set[str],
                       now: datetime) -> dict[str, Any]:
        out = record_terms(s.given_terms(given), now)
        if "team_alias" in given:
            out["team_alias"] = s.team_alias
        if "models" in given:
            out["models"] = tuple(s.models or [])
            check_stored_size(list(out["models"]), "models")
        if "metadata" in given:
            out["metadata"] = s.metadata or {}
            check_stored_size(out["metadata"], "metadata")
        if "blocked" in given:
            out["blocked"] = bool(s.blocked)
        if "organization_id" in given:
            if s.organization_id is not None and await self._storage.get_organization(
                    s.organization_id) is None:
                raise InvalidRequest(f"Organization {s.organization_id!r} does not exist; "
                                     "create it with /organization/new",
                                     param="organization_id")
            out["organization_id"] = s.organization_id
        if "budget_id" in given:
            if s.budget_id is not None and await self._storage.get_budget(s.budget_id) is None:
                raise InvalidRequest(f"Budget {s.budget_id!r} does not exist; create it with "
                                     "/budget/new", param="budget_id")
            out["budget_id"] = s.budget_id
        return out


def _check_members(members: Collection[NewMember], present: Collection[str]) -> None:
    """Before anything is written: every role valid, every member named, no user_id twice
    or already in the team (a request that fails adds no one)."""
    seen = set(present)
    for member in members:
        _check_role(member.role)
        if not member.user_id and not member.user_email:
            raise InvalidRequest("Name each member by 'user_id' or 'user_email'",
                                 param="user_id")
        if member.user_id in seen:
            raise InvalidRequest(f"User {member.user_id!r} is already a member of the team "
                                 "(or named twice); change it with /team/member_update",
                                 param="member", code="member_exists")
        if member.user_id:
            seen.add(member.user_id)


def _check_role(role: str) -> None:
    if role not in MEMBER_ROLES:
        raise InvalidRequest(f"A team member's role must be one of {list(MEMBER_ROLES)}",
                             param="role")


def _money(dollars: float | None, param: str) -> int | None:
    if dollars is None:
        return None
    try:
        return dollars_to_nanos(dollars, param)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=param) from None


def member_view(member: MemberRecord) -> dict[str, Any]:
    """A membership as LiteLLM's team_memberships show it (LiteLLM_TeamMembership: the
    member's budget under litellm_budget_table; money in dollars). A member's terms are its
    own: budget_id is always null."""
    budget = member.max_budget_in_team_nanos
    max_budget = None if budget is None else nanos_to_dollars(budget)
    return {"team_id": member.team_id, "user_id": member.user_id, "role": member.role,
            "max_budget_in_team": max_budget, **spend_view(member),
            "budget_duration": member.budget_duration, "budget_id": None,
            "litellm_budget_table": {
                "budget_id": None, "max_budget": max_budget,
                "budget_duration": member.budget_duration,
                "budget_reset_at": iso(member.budget_reset_at),
                "tpm_limit": member.tpm_limit, "rpm_limit": member.rpm_limit},
            "created_at": iso(member.created_at)}


def team_view(team: TeamRecord, members: list[MemberRecord] | None = None) -> dict[str, Any]:
    """A team as LiteLLM's API shows it (money in dollars)."""
    return {
        "team_id": team.team_id, "team_alias": team.team_alias,
        "organization_id": team.organization_id, "models": list(team.models),
        **spend_view(team), **terms_view(team), "metadata": team.metadata,
        "blocked": team.blocked, "budget_id": team.budget_id,
        "members_with_roles": None if members is None else [
            {"user_id": m.user_id, "role": m.role} for m in members],
        "created_at": iso(team.created_at), "updated_at": iso(team.updated_at),
    }

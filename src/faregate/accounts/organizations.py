"""Organizations and their members: the business of /organization/*.

An organization owns teams (a team's organization_id) and pays for all their rows; its budget,
limits and blocked flag are admission's, so every change is told to admission. Members carry
one of LiteLLM's organization roles.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any

from faregate.accounts.budgets import require_budget
from faregate.accounts.changes import PayerChanges
from faregate.accounts.terms import iso, payer_fields, spend_view, terms_view
from faregate.errors import InvalidRequest, NotFound
from faregate.records import (
    OrganizationMemberRecord,
    OrganizationRecord,
    TeamRecord,
    UserRecord,
)
from faregate.storage.protocols import DuplicateId, HierarchyStore, Page, PageAfter, scope

ORG_ROLES = ("org_admin", "internal_user", "internal_user_viewer")
_SETTABLE = ("organization_alias", "models", "metadata", "budget_id", "blocked")


class OrganizationAdmin:
    def __init__(self, storage: HierarchyStore, changes: PayerChanges,
                 now: Callable[[], datetime]) -> None:
        self._storage = storage
        self._changes = changes
        self._now = now

    async def new(self, organization_id: str | None,
                  fields: Mapping[str, Any]) -> OrganizationRecord:
        now = self._now()
        await require_budget(self._storage, fields.get("budget_id"))
        record = OrganizationRecord(organization_id or str(uuid.uuid4()), created_at=now,
                                    updated_at=now, **self._record_fields(fields, now))
        try:
            await self._storage.insert_organization(record)
        except DuplicateId:
            raise InvalidRequest(f"Organization {record.organization_id!r} already exists",
                                 param="organization_id",
                                 code="organization_exists") from None
        await self._changes.changed(scope("org", record.organization_id),
                                    record.budget_reset_at, new_period=True)
        return await self.get(record.organization_id)

    async def get(self, organization_id: str) -> OrganizationRecord:
        record = await self._storage.get_organization(organization_id)
        if record is None:
            raise NotFound(f"No organization {organization_id!r}",
                           code="organization_not_found")
        return record

    async def update(self, organization_id: str,
                     fields: Mapping[str, Any]) -> OrganizationRecord:
        await self.get(organization_id)
        if "budget_id" in fields:
            await require_budget(self._storage, fields["budget_id"])
        changes = self._record_fields(fields, self._now())
        record = await self._storage.update_organization(organization_id, changes)
        if record is None:
            raise NotFound(f"Organization {organization_id!r} was deleted meanwhile",
                           code="organization_not_found")
        await self._changes.changed(scope("org", organization_id), record.budget_reset_at,
                                    new_period="budget_duration" in changes)
        return record

    async def delete(self, organization_ids: Collection[str]) -> list[OrganizationRecord]:
        """Refused (nothing deleted) while any of them still has teams: their keys would keep
        naming an organization that no longer pays."""
        records = [await self.get(o) for o in organization_ids]
        for record in records:
            teams = await self.teams(record.organization_id, 1)
            if teams:
                raise InvalidRequest(
                    f"Organization {record.organization_id} still has teams (team "
                    f"{teams[0].team_id}); delete them or move them to another organization "
                    "first", param="organization_ids", code="organization_has_teams")
        for record in records:
            await self._storage.delete_organization(record.organization_id)
            await self._changes.changed(scope("org", record.organization_id))
        return records

    async def page(self, after: PageAfter | None, limit: int) -> Page[OrganizationRecord]:
        return await self._storage.list_organizations(None, after, limit)

    async def teams(self, organization_id: str, limit: int = 1000) -> list[TeamRecord]:
        page = await self._storage.list_teams({"organization_id": organization_id}, None,
                                              limit)
        return page.items

    async def members(self, organization_id: str) -> list[OrganizationMemberRecord]:
        return await self._storage.list_organization_members(organization_id)

    # members

    async def add_members(self, organization_id: str,
                          members: list[tuple[str | None, str | None, str]]
                          ) -> list[OrganizationMemberRecord]:
        """`members`: (user_id, user_email, role). A user not known yet is created, as
        LiteLLM does; one found by email alone is used."""
        await self.get(organization_id)
        added = []
        for user_id, user_email, role in members:
            _check_role(role)
            user = await self._user(user_id, user_email, create=True)
            member = OrganizationMemberRecord(organization_id, user, role,
                                              created_at=self._now())
            try:
                await self._storage.add_organization_member(member)
            except DuplicateId:
                raise InvalidRequest(f"User {user} is already a member of organization "
                                     f"{organization_id}; call /organization/member_update",
                                     param="member", code="member_exists") from None
            added.append(member)
        return added

    async def update_member(self, organization_id: str, user_id: str | None,
                            user_email: str | None, role: str) -> OrganizationMemberRecord:
        await self.get(organization_id)
        _check_role(role)
        user = await self._user(user_id, user_email, create=False)
        record = await self._storage.update_organization_member(organization_id, user,
                                                                {"user_role": role})
        if record is None:
            raise NotFound(f"User {user} is not a member of organization {organization_id}",
                           code="member_not_found")
        return record

    async def delete_member(self, organization_id: str, user_id: str | None,
                            user_email: str | None) -> str:
        await self.get(organization_id)
        user = await self._user(user_id, user_email, create=False)
        if not await self._storage.remove_organization_member(organization_id, user):
            raise NotFound(f"User {user} is not a member of organization {organization_id}",
                           code="member_not_found")
        return user

    async def _user(self, user_id: str | None, user_email: str | None, *,
                    create: bool) -> str:
        if user_id is not None:
            if create and await self._storage.get_user(user_id) is None:
                await self._insert_user(UserRecord(user_id, user_email=user_email))
            return user_id
        if user_email is None:
            raise InvalidRequest("Name the member by user_id or user_email", param="user_id")
        found = await self._storage.list_users({"user_email": user_email}, None, 1)
        if found.items:
            return found.items[0].user_id
        if not create:
            raise NotFound(f"No user with user_email {user_email!r}", code="user_not_found")
        user = UserRecord(str(uuid.uuid4()), user_email=user_email)
        await self._insert_user(user)
        return user.user_id

    async def _insert_user(self, user: UserRecord) -> None:
        now = self._now()
        with suppress(DuplicateId):     # made by someone else meanwhile: theirs is the user
            await self._storage.insert_user(UserRecord(
                user.user_id, user_email=user.user_email, created_at=now, updated_at=now))

    @staticmethod
    def _record_fields(fields: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        return payer_fields(fields, _SETTABLE, now)

    @staticmethod
    def view(record: OrganizationRecord, teams: list[TeamRecord] | None = None,
             members: list[OrganizationMemberRecord] | None = None) -> dict[str, Any]:
        """LiteLLM's LiteLLM_OrganizationTable shape (the terms also under
        litellm_budget_table); `teams` and `members` for /organization/info."""
        terms = terms_view(record)
        out: dict[str, Any] = {
            "organization_id": record.organization_id,
            "organization_alias": record.organization_alias, "models": list(record.models),
            "budget_id": record.budget_id, **terms, **spend_view(record),
            "model_spend": {}, "blocked": record.blocked, "metadata": record.metadata,
            "litellm_budget_table": {"budget_id": record.budget_id, **terms},
            "created_at": iso(record.created_at), "updated_at": iso(record.updated_at)}
        if teams is not None:
            out["teams"] = [{"team_id": t.team_id, "team_alias": t.team_alias}
                            for t in teams]
        if members is not None:
            out["members"] = [member_view(m) for m in members]
        return out


def member_view(member: OrganizationMemberRecord) -> dict[str, Any]:
    return {"organization_id": member.organization_id, "user_id": member.user_id,
            "user_role": member.user_role, "created_at": iso(member.created_at)}


def _check_role(role: str) -> None:
    if role not in ORG_ROLES:
        raise InvalidRequest(f"role {role!r} is not an organization role; use one of "
                             f"{', '.join(ORG_ROLES)}", param="role")

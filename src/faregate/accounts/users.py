"""User administration: the business of /user/* (the handlers only parse and render).

A user is a payer above its personal keys (docs/hierarchy.md). Changes land in the database,
then admission is told (PayerNotices), so the next request sees them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from faregate.accounts.changes import PayerChanges
from faregate.accounts.terms import Terms, iso, record_terms, spend_view, terms_view
from faregate.errors import InvalidRequest, NotFound
from faregate.records import KeyRecord, MemberRecord, TeamRecord, UserRecord
from faregate.storage.protocols import (
    DuplicateId,
    HierarchyStore,
    Page,
    PageAfter,
    scope,
)
from faregate.wire.storable import check_stored_size

# LiteLLM's roles for a user (LitellmUserRoles as /user/new takes them).
USER_ROLES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")
_PAGE = 1000
T = TypeVar("T")
DeleteKeys = Callable[[list[str]], Awaitable[list[str]]]


@dataclass(frozen=True)
class UserSettings(Terms):
    """The settable fields of a user, its terms and the rest, in LiteLLM's names; None =
    not given."""

    user_email: str | None = None
    user_alias: str | None = None
    user_role: str | None = None
    models: list[str] | None = None
    metadata: dict[str, Any] | None = None
    budget_id: str | None = None


@dataclass(frozen=True)
class UserFilters:
    """/user/list's filters; None = any."""

    user_ids: tuple[str, ...] | None = None
    user_role: str | None = None
    user_email: str | None = None
    team_id: str | None = None

# DuplicateId's kind from the store when another user holds the email (storage/hierarchy.py).
USER_EMAIL = "user email"


def _email_taken(email: str) -> InvalidRequest:
    return InvalidRequest(f"Another user already has the email {email!r} (emails are compared "
                          "case-insensitively); change that user with /user/update instead",
                          param="user_email", code="user_email_exists")


@dataclass(frozen=True)
class UserInfo:
    user: UserRecord
    keys: list[KeyRecord]
    teams: list[MemberRecord]
    team_records: dict[str, TeamRecord] = field(default_factory=dict)   # by team_id


class UserAdmin:
    def __init__(self, storage: HierarchyStore, notices: PayerChanges,
                 now: Callable[[], datetime]) -> None:
        self._storage = storage
        self._notices = notices
        self._now = now

    async def create(self, settings: UserSettings, given: Collection[str],
                     user_id: str | None = None) -> UserRecord:
        """A new user; its id generated when none is given."""
        now = self._now()
        changes = await self._changes(settings, set(given), now)
        record = UserRecord(user_id=user_id or str(uuid.uuid4()), created_at=now,
                            updated_at=now, **changes)
        await self._check_email_free(changes.get("user_email"), record.user_id)
        try:
            await self._storage.insert_user(record)
        except DuplicateId as exc:
            if exc.kind == USER_EMAIL:      # taken meanwhile, or in another case
                raise _email_taken(exc.entity_id) from None
            raise InvalidRequest(f"User {record.user_id!r} already exists; change it with "
                                 "/user/update", param="user_id",
                                 code="user_exists") from None
        return record

    async def ensure(self, user_id: str) -> UserRecord:
        """The user, created with defaults if it does not exist yet (as LiteLLM does for a
        key's or a team member's unknown user_id)."""
        found = await self._storage.get_user(user_id)
        if found is not None:
            return found
        try:
            return await self.create(UserSettings(), (), user_id)
        except InvalidRequest:          # made meanwhile by another request
            return await self.get(user_id)

    async def create_with_email(self, email: str) -> UserRecord:
        """A new user with a generated id for a team member named only by email."""
        return await self.create(UserSettings(user_email=email), {"user_email"})

    async def get(self, user_id: str) -> UserRecord:
        found = await self._storage.get_user(user_id)
        if found is None:
            raise NotFound(f"User {user_id!r} does not exist", code="user_not_found",
                           param="user_id")
        return found

    async def by_email(self, email: str) -> UserRecord | None:
        page = await self._storage.list_users({"user_email": email}, None, 1)
        return page.items[0] if page.items else None

    async def info(self, user_id: str) -> UserInfo:
        user = await self.get(user_id)
        keys = await all_pages(lambda after: self._storage.list_keys_page(
            {"user_id": user_id}, after, _PAGE))
        teams = await self._storage.list_user_teams(user_id)
        found = [await self._storage.get_team(m.team_id) for m in teams]
        return UserInfo(user, keys, teams, {t.team_id: t for t in found if t is not None})

    async def _keys_of(self, user_id: str) -> list[KeyRecord]:
        return await all_pages(lambda after: self._storage.list_keys_page(
            {"user_id": user_id}, after, _PAGE))

    async def update(self, user_id: str, settings: UserSettings,
                     given: Collection[str]) -> UserRecord:
        await self.get(user_id)
        changes = await self._changes(settings, set(given), self._now())
        await self._check_email_free(changes.get("user_email"), user_id)
        try:
            record = await self._storage.update_user(user_id, changes)
        except DuplicateId as exc:
            raise _email_taken(exc.entity_id) from None
        if record is None:
            raise NotFound(f"User {user_id!r} was deleted meanwhile", code="user_not_found")
        await self._notices.changed(scope("user", user_id), record.budget_reset_at,
                                    new_period="budget_duration" in changes)
        return record

    async def delete(self, user_ids: list[str], delete_keys: DeleteKeys) -> list[str]:
        """The users, their keys (through `delete_keys`, KeyAdmin.delete, so caches forget
        them) and their memberships go, as LiteLLM's /user/delete; spend rows stay."""
        deleted: list[str] = []
        for user_id in user_ids:
            if await self._storage.get_user(user_id) is None:
                continue
            teams = await self._storage.list_user_teams(user_id)
            keys = await self._keys_of(user_id)
            if keys:
                await delete_keys([k.token for k in keys])
            if await self._storage.delete_user(user_id):
                deleted.append(user_id)
                await self._notices.changed(scope("user", user_id))
                for member in teams:
                    await self._notices.changed(scope("member", member.team_id, user_id))
        return deleted

    async def list(self, filters: UserFilters, page: int,
                   page_size: int) -> tuple[list[UserRecord], int]:
        """One page (LiteLLM's page numbers) of the users matching `filters`, and how many
        match. Reads every matching user: /user/list is an admin's listing, not a hot path."""
        where: dict[str, Any] = {}
        if filters.user_role is not None:
            where["user_role"] = filters.user_role
        if filters.user_email is not None:
            where["user_email"] = filters.user_email
        users = await all_pages(lambda after: self._storage.list_users(where, after, _PAGE))
        if filters.user_ids is not None:
            wanted = set(filters.user_ids)
            users = [u for u in users if u.user_id in wanted]
        if filters.team_id is not None:
            members = {m.user_id for m in await self._storage.list_team_members(
                filters.team_id)}
            users = [u for u in users if u.user_id in members]
        start = (page - 1) * page_size
        return users[start:start + page_size], len(users)

    async def _check_email_free(self, email: str | None, user_id: str) -> None:
        """One user per email: /user/update and /team/member_add find users by it, and an
        email naming two users would find either. This look names the holder; the unique
        index on lower(user_email) (migration 0009) refuses what it misses: a holder in
        another case, or one made meanwhile by a concurrent call."""
        if email is None:
            return
        holder = await self.by_email(email)
        if holder is not None and holder.user_id != user_id:
            raise InvalidRequest(f"User {holder.user_id!r} already has the email {email!r}; "
                                 "change that user with /user/update instead",
                                 param="user_email", code="user_email_exists")

    async def _changes(self, s: UserSettings, given: set[str],
                       now: datetime) -> dict[str, Any]:
        out = record_terms(s.given_terms(given), now)
        if "user_role" in given:
            if s.user_role not in USER_ROLES:
                raise InvalidRequest(f"user_role must be one of {list(USER_ROLES)}",
                                     param="user_role")
            out["user_role"] = s.user_role
        for name in ("user_email", "user_alias"):
            if name in given:
                out[name] = getattr(s, name)
        if "models" in given:
            out["models"] = tuple(s.models or [])
        if "metadata" in given:
            out["metadata"] = s.metadata or {}
        for name in {"models", "metadata"} & set(out):
            check_stored_size(list(out[name]) if name == "models" else out[name], name)
        if "budget_id" in given:
            if s.budget_id is not None and await self._storage.get_budget(s.budget_id) is None:
                raise InvalidRequest(f"Budget {s.budget_id!r} does not exist; create it with "
                                     "/budget/new", param="budget_id")
            out["budget_id"] = s.budget_id
        return out


def user_view(user: UserRecord) -> dict[str, Any]:
    """A user as LiteLLM's API shows it (money in dollars)."""
    return {
        "user_id": user.user_id, "user_email": user.user_email,
        "user_alias": user.user_alias, "user_role": user.user_role,
        "models": list(user.models), **spend_view(user), **terms_view(user),
        "metadata": user.metadata, "budget_id": user.budget_id,
        "created_at": iso(user.created_at), "updated_at": iso(user.updated_at),
    }


async def all_pages(read: Callable[[PageAfter | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a keyset-paginated list."""
    out: list[T] = []
    after: PageAfter | None = None
    while True:
        page = await read(after)
        out.extend(page.items)
        if page.next_after is None:
            return out
        after = page.next_after

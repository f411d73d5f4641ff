"""The payers above keys in SQL: budgets, users, teams and their members, organizations and
their members, end users (issue 14), and a key's payers read in one round trip.

Record fields are named as their columns, so one pair of functions maps every record to its
row and back. Spend columns belong to the ledger (storage/payer_spend.py adds to them in the
same transaction as the rows): updates here refuse to set them, and a budget period starts
through start_period. Lists are keyset-paginated by (created_at, id), so a page costs the same
at any depth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import fields
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import orjson
from sqlalchemy import Table, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ColumnElement

from faregate.records import (
    BudgetRecord,
    EndUserRecord,
    KeyPayers,
    KeyRecord,
    MemberRecord,
    OrganizationMemberRecord,
    OrganizationRecord,
    TeamRecord,
    UserRecord,
)
from faregate.storage.protocols import DuplicateId, Page, PageAfter, parse_scope
from faregate.storage.schema import (
    budgets,
    end_users,
    keys,
    organization_members,
    organizations,
    spend_logs,
    team_members,
    teams,
    users,
)

R = TypeVar("R")

_JSON_LIST = frozenset({"models"})
_JSON_OBJECT = frozenset({"metadata"})
_LEDGER_OWNED = frozenset({"spend_nanos", "period_base_nanos"})
_MAX_PAGE = 1000

# scope level -> (table, its id columns), for start_period
_PERIOD_TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "user": (users, ("user_id",)),
    "team": (teams, ("team_id",)),
    "member": (team_members, ("team_id", "user_id")),
    "org": (organizations, ("organization_id",)),
    "end_user": (end_users, ("end_user_id",)),
}


# what DuplicateId calls each table's rows
# DuplicateId's kind when the user_email, not the user_id, is taken.
USER_EMAIL = "user email"
_KINDS = {budgets.name: "budget", users.name: "user", teams.name: "team",
          team_members.name: "team member", organizations.name: "organization",
          organization_members.name: "organization member", end_users.name: "end user"}


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything stored is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _bind(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _JSON_LIST:
        return orjson.dumps(list(value)).decode()
    if name in _JSON_OBJECT:
        return orjson.dumps(value).decode()
    if isinstance(value, datetime):
        # SQLite's DateTime keeps the wall clock and drops the offset: bind UTC.
        return value.astimezone(UTC) if value.tzinfo is not None else value
    return value


def _values(record: Any) -> dict[str, Any]:
    return {f.name: _bind(f.name, getattr(record, f.name)) for f in fields(record)}


def _record(cls: type[R], row: Mapping[Any, Any]) -> R:
    out: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = row[f.name]
        if f.name in _JSON_LIST:
            value = tuple(orjson.loads(value))
        elif f.name in _JSON_OBJECT:
            value = orjson.loads(value)
        elif isinstance(value, datetime):
            value = _utc(value)
        elif f.name == "blocked":
            value = bool(value)
        out[f.name] = value
    return cls(**out)


def _changes(cls: type[Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    owned = set(changes) & (_LEDGER_OWNED | {"created_at"})
    if owned:
        raise ValueError(f"{', '.join(sorted(owned))} cannot be set: the ledger keeps spend "
                         "and budget periods (start_period)")
    return {name: _bind(name, value) for name, value in changes.items()}


# each payer table's id columns -> the spend_logs columns that name it
_ROW_COLUMNS = {users.name: ("user_id",), teams.name: ("team_id",),
                team_members.name: ("team_id", "user_id"),
                organizations.name: ("organization_id",), end_users.name: ("end_user",)}


def _spend_of_rows(table: str, ids: tuple[str, ...]) -> Any:
    """The sum of the spend rows naming the payer, as a subquery of its insert."""
    match = [spend_logs.c[column] == value
             for column, value in zip(_ROW_COLUMNS[table], ids, strict=True)]
    if table == users.name:         # a user pays for its personal keys' rows only
        match.append(spend_logs.c.team_id.is_(None))
    return select(func.coalesce(func.sum(spend_logs.c.spend_nanos), 0)).where(
        *match).scalar_subquery()


def _refuse_nulls(table: Table, values: Mapping[str, Any]) -> None:
    """A null where the column takes none is the caller's mistake: say which, rather than
    let the database's integrity error pass for a duplicate or a 500."""
    nulls = sorted(name for name, value in values.items()
                   if value is None and not table.c[name].nullable)
    if nulls:
        raise ValueError(f"{', '.join(nulls)} cannot be null")


class HierarchyQueries:
    """Mixed into SqlStorage: the hierarchy's queries on the same engine."""

    engine: AsyncEngine

    # generic, table-driven

    async def _insert(self, table: Table, record: Any) -> None:
        values = _values(record)
        now = datetime.now(UTC)
        for stamp in ("created_at", "updated_at"):
            if stamp in values and values[stamp] is None:
                values[stamp] = now
        _refuse_nulls(table, values)
        ids = tuple(str(getattr(record, c.name)) for c in table.primary_key.columns)
        if table.name in _ROW_COLUMNS:
            # Rows may already name this payer (it was deleted and made again, or a key kept
            # its id): its spend is their sum, as always, and its budget starts afresh.
            earlier = _spend_of_rows(table.name, ids)
            values["spend_nanos"] = values["period_base_nanos"] = earlier
        try:
            async with self.engine.begin() as conn:
                await conn.execute(table.insert().values(**values))
        except IntegrityError:
            async with self.engine.connect() as conn:
                taken = (await conn.execute(select(*table.primary_key.columns).where(
                    _is(table, ids)))).first()
            if taken is None:
                if table is users and values.get("user_email") is not None:
                    # another user holds the email, case aside (migration 0009's index)
                    raise DuplicateId(USER_EMAIL, values["user_email"]) from None
                raise
            raise DuplicateId(_KINDS[table.name], "/".join(ids)) from None

    async def _get(self, table: Table, cls: type[R], *ids: str) -> R | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(table).where(_is(table, ids)))).first()
        return _record(cls, row._mapping) if row else None

    async def _update(self, table: Table, cls: type[R], ids: tuple[str, ...],
                      changes: Mapping[str, Any]) -> R | None:
        values = _changes(cls, changes)
        _refuse_nulls(table, values)
        if "updated_at" in table.c and "updated_at" not in values:
            values["updated_at"] = datetime.now(UTC)
        async with self.engine.begin() as conn:
            if values:
                await conn.execute(update(table).where(_is(table, ids)).values(**values))
            row = (await conn.execute(select(table).where(_is(table, ids)))).first()
        return _record(cls, row._mapping) if row else None

    async def _list(self, table: Table, cls: type[R], filters: Mapping[str, Any],
                    after: PageAfter | None, limit: int) -> Page[R]:
        return await self._list_as(table, partial(_record, cls), filters, after, limit)

    async def _list_as(self, table: Table, convert: Callable[[Mapping[Any, Any]], R],
                       filters: Mapping[str, Any], after: PageAfter | None,
                       limit: int) -> Page[R]:
        if not 1 <= limit <= _MAX_PAGE:
            raise ValueError(f"limit must be 1 to {_MAX_PAGE}")
        id_column = table.primary_key.columns.values()[-1]
        created = table.c.created_at
        stmt = select(table)
        for name, value in filters.items():
            if name not in table.c:
                raise ValueError(f"cannot filter {table.name} by {name}")
            stmt = stmt.where(table.c[name].is_(None) if value is None
                              else table.c[name] == value)
        if after is not None:
            at = _bind("created_at", after.created_at)
            stmt = stmt.where(or_(created > at, and_(created == at, id_column > after.id)))
        stmt = stmt.order_by(created, id_column).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(stmt))
        items = [convert(r._mapping) for r in rows[:limit]]
        if len(rows) <= limit:
            return Page(items, None)
        last = rows[limit - 1]._mapping
        return Page(items, PageAfter(_utc(last["created_at"]) or last["created_at"],
                                     last[id_column.name]))

    # budgets

    async def insert_budget(self, record: BudgetRecord) -> None:
        """Raises DuplicateId when the budget_id is taken."""
        await self._insert(budgets, record)

    async def get_budget(self, budget_id: str) -> BudgetRecord | None:
        return await self._get(budgets, BudgetRecord, budget_id)

    async def update_budget(self, budget_id: str,
                            changes: Mapping[str, Any]) -> BudgetRecord | None:
        return await self._update(budgets, BudgetRecord, (budget_id,), changes)

    async def delete_budget(self, budget_id: str) -> bool:
        return await self._delete(budgets, budget_id)

    async def list_budgets(self, after: PageAfter | None = None,
                           limit: int = 100) -> Page[BudgetRecord]:
        return await self._list(budgets, BudgetRecord, {}, after, limit)

    # users

    async def insert_user(self, record: UserRecord) -> None:
        await self._insert(users, record)

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._get(users, UserRecord, user_id)

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        try:
            return await self._update(users, UserRecord, (user_id,), changes)
        except IntegrityError:
            if changes.get("user_email") is None:
                raise
            raise DuplicateId(USER_EMAIL, str(changes["user_email"])) from None

    async def delete_user(self, user_id: str) -> bool:
        """The user and their memberships go; their keys and spend rows stay."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(team_members).where(team_members.c.user_id == user_id))
            await conn.execute(delete(organization_members).where(
                organization_members.c.user_id == user_id))
            gone = await conn.execute(delete(users).where(users.c.user_id == user_id))
        return bool(gone.rowcount)

    async def list_users(self, filters: Mapping[str, Any] | None = None,
                         after: PageAfter | None = None, limit: int = 100) -> Page[UserRecord]:
        """Filters are column equalities: user_role, user_email, budget_id, ..."""
        return await self._list(users, UserRecord, filters or {}, after, limit)

    # organizations and their members

    async def insert_organization(self, record: OrganizationRecord) -> None:
        await self._insert(organizations, record)

    async def get_organization(self, organization_id: str) -> OrganizationRecord | None:
        return await self._get(organizations, OrganizationRecord, organization_id)

    async def update_organization(self, organization_id: str,
                                  changes: Mapping[str, Any]) -> OrganizationRecord | None:
        return await self._update(organizations, OrganizationRecord, (organization_id,),
                                  changes)

    async def delete_organization(self, organization_id: str) -> bool:
        """The organization and its memberships go. Its teams keep their organization_id
        (the admin API refuses to delete an organization that still has teams)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(organization_members).where(
                organization_members.c.organization_id == organization_id))
            gone = await conn.execute(delete(organizations).where(
                organizations.c.organization_id == organization_id))
        return bool(gone.rowcount)

    async def list_organizations(self, filters: Mapping[str, Any] | None = None,
                                 after: PageAfter | None = None,
                                 limit: int = 100) -> Page[OrganizationRecord]:
        return await self._list(organizations, OrganizationRecord, filters or {}, after, limit)

    async def add_organization_member(self, record: OrganizationMemberRecord) -> None:
        """Raises DuplicateId when the user is already a member."""
        await self._insert(organization_members, record)

    async def update_organization_member(
            self, organization_id: str, user_id: str,
            changes: Mapping[str, Any]) -> OrganizationMemberRecord | None:
        return await self._update(organization_members, OrganizationMemberRecord,
                                  (organization_id, user_id), changes)

    async def remove_organization_member(self, organization_id: str, user_id: str) -> bool:
        return await self._delete(organization_members, organization_id, user_id)

    async def list_organization_members(
            self, organization_id: str) -> list[OrganizationMemberRecord]:
        return await self._all(organization_members, OrganizationMemberRecord,
                               organization_members.c.organization_id == organization_id)

    # teams and their members

    async def insert_team(self, record: TeamRecord) -> None:
        await self._insert(teams, record)

    async def get_team(self, team_id: str) -> TeamRecord | None:
        return await self._get(teams, TeamRecord, team_id)

    async def update_team(self, team_id: str, changes: Mapping[str, Any]) -> TeamRecord | None:
        return await self._update(teams, TeamRecord, (team_id,), changes)

    async def delete_team(self, team_id: str) -> bool:
        """The team and its memberships go; its keys and spend rows stay."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(team_members).where(team_members.c.team_id == team_id))
            gone = await conn.execute(delete(teams).where(teams.c.team_id == team_id))
        return bool(gone.rowcount)

    async def list_teams(self, filters: Mapping[str, Any] | None = None,
                         after: PageAfter | None = None, limit: int = 100) -> Page[TeamRecord]:
        """Filters are column equalities: organization_id, team_alias, blocked, ..."""
        return await self._list(teams, TeamRecord, filters or {}, after, limit)

    async def add_team_member(self, record: MemberRecord) -> None:
        """Raises DuplicateId when the user is already in the team."""
        await self._insert(team_members, record)

    async def update_team_member(self, team_id: str, user_id: str,
                                 changes: Mapping[str, Any]) -> MemberRecord | None:
        return await self._update(team_members, MemberRecord, (team_id, user_id), changes)

    async def remove_team_member(self, team_id: str, user_id: str) -> bool:
        return await self._delete(team_members, team_id, user_id)

    async def get_team_member(self, team_id: str, user_id: str) -> MemberRecord | None:
        return await self._get(team_members, MemberRecord, team_id, user_id)

    async def list_team_members(self, team_id: str) -> list[MemberRecord]:
        return await self._all(team_members, MemberRecord, team_members.c.team_id == team_id)

    async def list_user_teams(self, user_id: str) -> list[MemberRecord]:
        """The user's memberships, one per team."""
        return await self._all(team_members, MemberRecord, team_members.c.user_id == user_id)

    # end users

    async def insert_end_user(self, record: EndUserRecord) -> None:
        await self._insert(end_users, record)

    async def get_end_user(self, end_user_id: str) -> EndUserRecord | None:
        return await self._get(end_users, EndUserRecord, end_user_id)

    async def get_or_create_end_user(self, end_user_id: str,
                                     budget_id: str | None = None) -> EndUserRecord:
        """The end user, created on first use with `budget_id` (LiteLLM's
        max_end_user_budget_id). Two processes creating the same one at once both get it."""
        found = await self.get_end_user(end_user_id)
        if found is not None:
            return found
        now = datetime.now(UTC)
        mine = EndUserRecord(end_user_id, budget_id=budget_id, created_at=now, updated_at=now)
        with suppress(DuplicateId):     # another request created it first: read theirs
            await self._insert(end_users, mine)
        # None only if an admin deleted it in between: this request still has its own view
        return await self.get_end_user(end_user_id) or mine

    async def update_end_user(self, end_user_id: str,
                              changes: Mapping[str, Any]) -> EndUserRecord | None:
        return await self._update(end_users, EndUserRecord, (end_user_id,), changes)

    async def delete_end_user(self, end_user_id: str) -> bool:
        return await self._delete(end_users, end_user_id)

    async def list_end_users(self, filters: Mapping[str, Any] | None = None,
                             after: PageAfter | None = None,
                             limit: int = 100) -> Page[EndUserRecord]:
        return await self._list(end_users, EndUserRecord, filters or {}, after, limit)

    # keys by owner

    async def list_keys_page(self, filters: Mapping[str, Any] | None = None,
                             after: PageAfter | None = None,
                             limit: int = 100) -> Page[KeyRecord]:
        """Keys in creation order, filtered by user_id, team_id, organization_id, ..."""
        return await self._list_as(keys, key_from_mapping, filters or {}, after, limit)

    # budget periods

    async def start_period(self, scope: str, period_base_nanos: int,
                           reset_at: datetime | None) -> bool:
        """Start a new budget period for any payer but a key (keys: start_budget_period).
        False if the payer does not exist."""
        level, ids = parse_scope(scope)
        if level not in _PERIOD_TABLES:
            raise ValueError(f"no budget periods for scope {scope!r}")
        table, columns = _PERIOD_TABLES[level]
        async with self.engine.begin() as conn:
            done = await conn.execute(update(table).where(
                and_(*(table.c[c] == v for c, v in zip(columns, ids, strict=True)))).values(
                period_base_nanos=period_base_nanos,
                budget_reset_at=_bind("budget_reset_at", reset_at)))
        return bool(done.rowcount)

    # a key's payers

    async def get_key_payers(self, token: str) -> KeyPayers | None:
        """The key, its user, team, membership in the team, organization (the team's, else
        the key's own) and every named budget they reference: one SELECT."""
        key_budget, user_budget, team_budget, org_budget = (
            budgets.alias(f"b_{name}") for name in ("key", "user", "team", "org"))
        org_id = func.coalesce(teams.c.organization_id, keys.c.organization_id)
        parts: dict[str, Table | Any] = {
            "k": keys, "u": users, "t": teams, "m": team_members, "o": organizations,
            "bk": key_budget, "bu": user_budget, "bt": team_budget, "bo": org_budget}
        stmt = select(*(c.label(f"{prefix}__{c.name}") for prefix, part in parts.items()
                        for c in part.c)).select_from(
            keys.outerjoin(users, users.c.user_id == keys.c.user_id)
            .outerjoin(teams, teams.c.team_id == keys.c.team_id)
            .outerjoin(team_members, and_(team_members.c.team_id == keys.c.team_id,
                                          team_members.c.user_id == keys.c.user_id))
            .outerjoin(organizations, organizations.c.organization_id == org_id)
            .outerjoin(key_budget, key_budget.c.budget_id == keys.c.budget_id)
            .outerjoin(user_budget, user_budget.c.budget_id == users.c.budget_id)
            .outerjoin(team_budget, team_budget.c.budget_id == teams.c.budget_id)
            .outerjoin(org_budget, org_budget.c.budget_id == organizations.c.budget_id)
        ).where(keys.c.token == token)
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        found = row._mapping

        def columns(prefix: str) -> dict[str, Any]:
            return {name.split("__", 1)[1]: value for name, value in found.items()
                    if name.startswith(f"{prefix}__")}

        def part(prefix: str, cls: type[R], id_column: str) -> R | None:
            if found[f"{prefix}__{id_column}"] is None:
                return None
            return _record(cls, columns(prefix))

        named = {b.budget_id: b for b in (part(p, BudgetRecord, "budget_id")
                                          for p in ("bk", "bu", "bt", "bo")) if b is not None}
        return KeyPayers(key=key_from_mapping(columns("k")),
                         user=part("u", UserRecord, "user_id"),
                         team=part("t", TeamRecord, "team_id"),
                         member=part("m", MemberRecord, "team_id"),
                         organization=part("o", OrganizationRecord, "organization_id"),
                         budgets=named)

    # helpers

    async def _delete(self, table: Table, *ids: str) -> bool:
        async with self.engine.begin() as conn:
            gone = await conn.execute(delete(table).where(_is(table, ids)))
        return bool(gone.rowcount)

    async def _all(self, table: Table, cls: type[R], where: ColumnElement[bool]) -> list[R]:
        ids = list(table.primary_key.columns)
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(table).where(where).order_by(
                table.c.created_at, *ids))
            return [_record(cls, r._mapping) for r in rows]


def _is(table: Table, ids: tuple[str, ...]) -> ColumnElement[bool]:
    columns = list(table.primary_key.columns)
    if len(ids) != len(columns):
        raise ValueError(f"{table.name} is keyed by {len(columns)} ids")
    if len(ids) == 1:
        return columns[0] == ids[0]
    return tuple_(*columns) == tuple_(*ids)


def key_from_mapping(row: Mapping[Any, Any]) -> KeyRecord:
    """A keys row as a KeyRecord (SqlStorage reads keys through this too)."""
    return KeyRecord(
        token=row["token"], key_name=row["key_name"], key_alias=row["key_alias"],
        models=tuple(orjson.loads(row["models"])), max_budget_nanos=row["max_budget_nanos"],
        spend_nanos=row["spend_nanos"], period_base_nanos=row["period_base_nanos"],
        budget_duration=row["budget_duration"], budget_reset_at=_utc(row["budget_reset_at"]),
        expires=_utc(row["expires"]), metadata=orjson.loads(row["metadata"]),
        tpm_limit=row["tpm_limit"], rpm_limit=row["rpm_limit"],
        max_parallel_requests=row["max_parallel_requests"],
        model_rpm_limit=orjson.loads(row["model_rpm_limit"]),
        model_tpm_limit=orjson.loads(row["model_tpm_limit"]),
        aliases=orjson.loads(row["aliases"]), blocked=bool(row["blocked"]),
        created_at=_utc(row["created_at"]), updated_at=_utc(row["updated_at"]),
        user_id=row["user_id"], team_id=row["team_id"],
        organization_id=row["organization_id"], budget_id=row["budget_id"])

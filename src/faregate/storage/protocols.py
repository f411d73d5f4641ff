"""What the rest of the gateway asks of storage, one Protocol per concern.

Consumers depend on these, not on SqlStorage: keys/ on KeyStore, spend/ on SpendStore, catalog/
on ModelStore, the health probe on HealthProbe. SqlStorage (storage/database.py) implements
them all, structurally; the composition root (app.py) and the CLI are the only places that
build it. The value types and errors in these signatures live here too, as part of the contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from faregate.records import (
    BudgetRecord,
    EndUserRecord,
    KeyPayers,
    KeyRecord,
    MemberRecord,
    OrganizationMemberRecord,
    OrganizationRecord,
    SpendRow,
    StoredModel,
    TeamRecord,
    UserRecord,
)

if TYPE_CHECKING:      # reports.py reads keys through hierarchy.py, which imports this module
    from faregate.storage.reports import (
        Bucket,
        Cursor,
        KeyFilters,
        KeyPage,
        LogFilters,
        LogPage,
        LogRow,
        Overview,
        PayerLevel,
        PayerPage,
        PayerSpend,
        Ranked,
        SearchCursor,
        Totals,
        UsagePoint,
    )

T = TypeVar("T")


class DuplicateAlias(Exception):
    pass


class DuplicateModelId(Exception):
    pass


class DuplicateId(Exception):
    """A budget, user, team, organization, membership or end user with that id exists."""

    def __init__(self, kind: str, entity_id: str) -> None:
        super().__init__(f"{kind} {entity_id} already exists")
        self.kind = kind
        self.entity_id = entity_id


# A payer's scope: its account name in every store (the hierarchy design). Keys' scope carries
# the token; a member's carries the team and the user.
SCOPE_LEVELS = ("key", "user", "team", "member", "org", "end_user")


def scope(level: str, *ids: str) -> str:
    if level not in SCOPE_LEVELS or len(ids) != (2 if level == "member" else 1):
        raise ValueError(f"no scope {level} of {len(ids)} ids")
    return ":".join((level, *ids))


def parse_scope(text: str) -> tuple[str, tuple[str, ...]]:
    """"team:t1" -> ("team", ("t1",)); "member:t1:u1" -> ("member", ("t1", "u1")). Ids may hold
    colons, except a member's team id (the first colon after it ends it)."""
    level, sep, rest = text.partition(":")
    if not sep or level not in SCOPE_LEVELS or not rest:
        raise ValueError(f"not a payer scope: {text!r}")
    if level == "member":
        team_id, sep, user_id = rest.partition(":")
        if not (sep and team_id and user_id):
            raise ValueError(f"not a member scope: {text!r}")
        return level, (team_id, user_id)
    return level, (rest,)


@dataclass(frozen=True)
class PageAfter:
    """Where a keyset-paginated list goes on: after this (created_at, id)."""

    created_at: datetime
    id: str


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_after: PageAfter | None        # None: this was the last page


@dataclass(frozen=True)
class SpendQuery:
    api_key: str | None = None
    request_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    organization_id: str | None = None
    end_user: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    page: int = 1
    page_size: int = 100
    model: str | None = None            # the model name the client asked for


@dataclass(frozen=True)
class SpendWritten:
    """What one write_spend_rows call added: the rows that were new, their spend per key, and
    per payer above the key by scope ("team:t1", "member:t1:u1", ...); rows already in the
    database add nothing."""

    rows: int = 0
    by_key: Mapping[str, int] = field(default_factory=dict)
    by_payer: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: SpendWritten) -> SpendWritten:
        return SpendWritten(self.rows + other.rows, _summed(self.by_key, other.by_key),
                            _summed(self.by_payer, other.by_payer))


def _summed(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for name, nanos in b.items():
        out[name] = out.get(name, 0) + nanos
    return out


@dataclass(frozen=True)
class SpendTotal:
    """One payer's spend over a query's rows (SpendStore.spend_totals); `id` is None for
    level "all", `day` (UTC) is set when totals are by day."""

    id: str | None
    spend_nanos: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    day: date | None = None


@runtime_checkable
class KeyStore(Protocol):
    """The virtual keys' rows: read by token or alias, created, changed, re-keyed, deleted and
    listed (keys/directory.py, keys/admin.py, the Redis admission's key loader, /key/delete)."""

    async def get_key(self, token: str) -> KeyRecord | None: ...

    async def get_key_by_alias(self, alias: str) -> KeyRecord | None: ...

    async def insert_key(self, record: KeyRecord) -> None:
        """Raises DuplicateAlias when another key already has the record's alias."""
        ...

    async def update_key(self, token: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Apply changes (KeyRecord field names); None if no such key. May raise
        DuplicateAlias."""
        ...

    async def replace_token(self, old_token: str, new_token: str,
                            key_name: str) -> KeyRecord | None:
        """The key and its spend rows move to the new token; None if no such key."""
        ...

    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        """Returns the tokens that existed (and are now gone)."""
        ...

    async def list_keys(self, page: int, page_size: int, user_id: str | None = None,
                        team_id: str | None = None) -> tuple[list[KeyRecord], int]:
        """One page of keys in creation order, and how many there are; with user_id and/or
        team_id, theirs only. Page N reads index entries to its start, never sorts."""
        ...


@runtime_checkable
class SpendStore(Protocol):
    """The spend ledger: spend rows with their keys' aggregates and budget periods
    (spend/ledger.py), and the spend reports (/spend/logs, /global/spend)."""

    async def write_spend(self, rows: Sequence[SpendRow]) -> int:
        """Insert the rows not yet recorded and add their spend to their keys, atomically;
        returns how many were new. Retrying a batch is safe (idempotent by request id)."""
        ...

    async def write_spend_rows(self, rows: Sequence[SpendRow]) -> SpendWritten:
        """write_spend, saying what each key gained (the ledger credits keys whose rows another
        process left behind)."""
        ...

    async def start_budget_period(self, token: str, period_base_nanos: int,
                                  reset_at: datetime | None) -> None: ...

    async def start_period(self, scope: str, period_base_nanos: int,
                           reset_at: datetime | None) -> bool:
        """start_budget_period for a payer above the key, by scope ("team:t1",
        "member:t1:u1", ...); False if it does not exist."""
        ...

    async def spend_logs(self, query: SpendQuery) -> list[dict[str, Any]]: ...

    async def spend_totals(self, level: str, query: SpendQuery,
                           by_day: bool = False) -> list[SpendTotal]:
        """Each payer of a level's spend over the rows the query selects (its filters and
        dates), summed in SQL, dearest first, or per UTC day with `by_day`; the query's page
        applies to the totals. level: key, user, team, organization, end_user, model, or all
        (every row together)."""
        ...

    async def total_spend(self) -> int: ...


@runtime_checkable
class ModelStore(Protocol):
    """Models added through /model/new, credentials sealed (catalog/stored_models.py,
    catalog/rotation.py)."""

    async def insert_model(self, model: StoredModel) -> None:
        """Raises DuplicateModelId when the id is taken."""
        ...

    async def get_model(self, model_id: str) -> StoredModel | None: ...

    async def list_models(self) -> list[StoredModel]: ...

    async def update_model(self, model: StoredModel) -> bool:
        """False if the model does not exist."""
        ...

    async def reseal_model(self, model_id: str, expected_params: dict[str, Any],
                           new_params: dict[str, Any], updated_at: datetime) -> bool:
        """Compare-and-set: replace the params only if they are still `expected_params`."""
        ...

    async def delete_model(self, model_id: str) -> bool: ...


@runtime_checkable
class HierarchyStore(Protocol):
    """The payers above keys (storage/hierarchy.py): budgets, users, teams and their members,
    organizations and their members, end users; and a key's payers in one round trip.
    Inserts raise DuplicateId; updates take record field names (never spend, which only the
    ledger writes) and return None when the row does not exist; lists are keyset pages."""

    async def insert_budget(self, record: BudgetRecord) -> None: ...
    async def get_budget(self, budget_id: str) -> BudgetRecord | None: ...
    async def update_budget(self, budget_id: str,
                            changes: Mapping[str, Any]) -> BudgetRecord | None: ...
    async def delete_budget(self, budget_id: str) -> bool: ...
    async def list_budgets(self, after: PageAfter | None = None,
                           limit: int = 100) -> Page[BudgetRecord]: ...

    async def insert_user(self, record: UserRecord) -> None: ...
    async def get_user(self, user_id: str) -> UserRecord | None: ...
    async def update_user(self, user_id: str,
                          changes: Mapping[str, Any]) -> UserRecord | None: ...
    async def delete_user(self, user_id: str) -> bool: ...
    async def list_users(self, filters: Mapping[str, Any] | None = None,
                         after: PageAfter | None = None,
                         limit: int = 100) -> Page[UserRecord]: ...

    async def insert_organization(self, record: OrganizationRecord) -> None: ...
    async def get_organization(self, organization_id: str) -> OrganizationRecord | None: ...
    async def update_organization(self, organization_id: str, changes: Mapping[str, Any]
                                  ) -> OrganizationRecord | None: ...
    async def delete_organization(self, organization_id: str) -> bool: ...
    async def list_organizations(self, filters: Mapping[str, Any] | None = None,
                                 after: PageAfter | None = None,
                                 limit: int = 100) -> Page[OrganizationRecord]: ...
    async def add_organization_member(self, record: OrganizationMemberRecord) -> None: ...
    async def update_organization_member(self, organization_id: str, user_id: str,
                                         changes: Mapping[str, Any]
                                         ) -> OrganizationMemberRecord | None: ...
    async def remove_organization_member(self, organization_id: str, user_id: str) -> bool: ...
    async def list_organization_members(self, organization_id: str
                                        ) -> list[OrganizationMemberRecord]: ...

    async def insert_team(self, record: TeamRecord) -> None: ...
    async def get_team(self, team_id: str) -> TeamRecord | None: ...
    async def update_team(self, team_id: str,
                          changes: Mapping[str, Any]) -> TeamRecord | None: ...
    async def delete_team(self, team_id: str) -> bool: ...
    async def list_teams(self, filters: Mapping[str, Any] | None = None,
                         after: PageAfter | None = None,
                         limit: int = 100) -> Page[TeamRecord]: ...
    async def add_team_member(self, record: MemberRecord) -> None: ...
    async def get_team_member(self, team_id: str, user_id: str) -> MemberRecord | None: ...
    async def update_team_member(self, team_id: str, user_id: str,
                                 changes: Mapping[str, Any]) -> MemberRecord | None: ...
    async def remove_team_member(self, team_id: str, user_id: str) -> bool: ...
    async def list_team_members(self, team_id: str) -> list[MemberRecord]: ...
    async def list_user_teams(self, user_id: str) -> list[MemberRecord]: ...

    async def insert_end_user(self, record: EndUserRecord) -> None: ...
    async def get_end_user(self, end_user_id: str) -> EndUserRecord | None: ...
    async def get_or_create_end_user(self, end_user_id: str,
                                     budget_id: str | None = None) -> EndUserRecord: ...
    async def update_end_user(self, end_user_id: str,
                              changes: Mapping[str, Any]) -> EndUserRecord | None: ...
    async def delete_end_user(self, end_user_id: str) -> bool: ...
    async def list_end_users(self, filters: Mapping[str, Any] | None = None,
                             after: PageAfter | None = None,
                             limit: int = 100) -> Page[EndUserRecord]: ...

    async def list_keys_page(self, filters: Mapping[str, Any] | None = None,
                             after: PageAfter | None = None,
                             limit: int = 100) -> Page[KeyRecord]: ...

    async def get_key_payers(self, token: str) -> KeyPayers | None:
        """The key, its user, team, membership, organization (the team's, else the key's) and
        the named budgets they reference, in one round trip; None if no such key."""
        ...


@runtime_checkable
class ReportStore(Protocol):
    """The UI's reads (storage/reports.py, where each number is defined): sums from the spend
    rollup in the viewer's time zone, keyset pages of logs, keys and payers, newest first."""

    async def report_totals(self, start: datetime, end: datetime, level: str = "all",
                            only: str | None = None) -> Totals: ...
    async def report_top(self, level: str, start: datetime, end: datetime,
                         limit: int = 5) -> list[Ranked]: ...
    async def report_top_payers(self, level: str, limit: int = 5) -> list[PayerSpend]: ...
    async def report_overview(self, now: datetime, tz_name: str = "UTC",
                              top: int = 5) -> Overview: ...
    async def report_usage(self, start: datetime, end: datetime, bucket: Bucket = "day",
                           tz_name: str = "UTC", group: str | None = None, top: int = 10,
                           only: str | None = None) -> list[UsagePoint]: ...
    async def report_usage_of(self, start: datetime, end: datetime, bucket: Bucket,
                              tz_name: str, group: str,
                              ids: Sequence[str]) -> list[UsagePoint]: ...
    async def report_key_names(self, tokens: Sequence[str]) -> dict[str, str]: ...
    async def report_logs(self, filters: LogFilters | None = None, after: Cursor | None = None,
                          limit: int = 50) -> LogPage: ...
    async def report_logs_newer(self, request_id: str, filters: LogFilters | None = None,
                                limit: int = 50) -> list[LogRow]: ...
    async def report_log(self, request_id: str) -> LogRow | None: ...
    async def report_keys(self, filters: KeyFilters | None = None,
                          after: Cursor | SearchCursor | None = None,
                          limit: int = 50) -> KeyPage: ...
    async def report_payers(self, level: PayerLevel, after: Cursor | None = None,
                            limit: int = 50,
                            organization_id: str | None = None) -> PayerPage: ...


@runtime_checkable
class HealthProbe(Protocol):
    """A cheap round trip that says whether the database answers (storage/health.py)."""

    async def ping(self) -> None: ...


@runtime_checkable
class AdminStore(KeyStore, SpendStore, Protocol):
    """What the admin API reads itself, beside KeyAdmin: keys by alias and spend reports."""


@dataclass(frozen=True)
class Replica:
    """A serving process on this database. `started_at` and `seen_s_ago` are filled in by the
    store, on the database's clock (one clock for every host)."""

    replica_id: str
    host: str
    pid: int
    shares_admission: bool          # admits through Redis, so it may run beside others
    started_at: datetime | None = None
    seen_s_ago: float = 0.0


@runtime_checkable
class ReplicaStore(Protocol):
    """The serving processes' heartbeats (storage/replicas.py)."""

    async def beat_replica(self, me: Replica, stale_after_s: float) -> list[Replica]:
        """Record that `me` is alive now (registering it on its first beat) and return every
        process seen within `stale_after_s`, `me` included, oldest first. A row left by an
        earlier process with `me`'s host and pid (its container restarted) is removed."""
        ...

    async def remove_replica(self, replica_id: str) -> None: ...


@runtime_checkable
class Storage(KeyStore, SpendStore, ModelStore, HealthProbe, ReplicaStore, HierarchyStore,
              ReportStore, Protocol):
    """All of the above, and the connections' lifetime: what the composition root holds."""

    async def close(self) -> None: ...

"""The UI's reads (issue 16): overview, usage, logs, the keys page and the payers' lists, each
one or two SQL statements that cost the same at any table size.

Money is integer nano-dollars, as in the ledger. Sums over time come from faregate_spend_rollup
(each level's sums per 15-minute UTC bucket, kept equal to the ledger rows in their own
transaction: on Postgres by statement triggers, migration 0007; on SQLite by the ledger's
batched write, storage/spend_rollup.py, migration 0012), never from loading rows: a month of
one level is at most 2,880 buckets per id. Every time zone in use is a whole number of quarter
hours from UTC, so a day or an hour in the viewer's zone is a whole number of buckets, and a
row at 23:30 UTC lands on the next day in Asia/Tokyo. Lists are keyset pages, newest first: a
page costs one index range whatever its depth, and rows that share a timestamp are ordered by
their id, so paging neither skips nor repeats them.

What the numbers mean: `spend_nanos` is what the rows charged; `requests` counts ledger rows
(one per request the gateway answered or refused after admission, retries inside one request
included in that one row); `failures` counts rows whose status is not "success" (failure,
partial, interrupted, dead_letter); tokens are as the upstream reported them. A payer's spend
columns (keys, teams, ...) are lifetime sums kept by the ledger; `period_spend_nanos` is what
counts against its budget now.

SqlStorage mixes ReportQueries in; the composition root's storage object is the ReportStore.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from faregate.records import KeyRecord
from faregate.storage.hierarchy import key_from_mapping
from faregate.storage.schema import (
    budgets,
    end_users,
    keys,
    organization_members,
    organizations,
    spend_logs,
    spend_rollup,
    spend_rollup_hour,
    team_members,
    teams,
    users,
)

BUCKET = timedelta(minutes=15)          # the rollup's bucket
MAX_PAGE = 1000
MAX_GROUPS = 1000
Bucket = Literal["hour", "day"]
# the usage page's group names -> the rollup's levels
GROUPS = {"key": "key", "team": "team", "user": "user", "customer": "end_user",
          "organization": "org", "model": "model"}
PayerLevel = Literal["team", "user", "organization", "customer"]
HOURLY_LEVELS = ("all", "model")        # the levels faregate_spend_rollup_hour also holds
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Totals:
    """Sums over a set of ledger rows."""

    spend_nanos: int = 0
    requests: int = 0
    failures: int = 0                   # rows whose status is not "success"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def error_rate(self) -> float:
        """failures / requests; 0.0 when there were no requests."""
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Ranked:
    """One payer (key token, team id, model name, end user id, ...) and its sums."""

    id: str
    totals: Totals


@dataclass(frozen=True)
class PayerSpend:
    """A key (id: its token), team, user, organization or customer and its lifetime spend:
    the ledger-kept sum of every row that names it."""

    id: str
    alias: str | None
    spend_nanos: int


@dataclass(frozen=True)
class DaySpend:
    """One model's spend on one day of the viewer's time zone."""

    day: date
    model: str
    spend_nanos: int


@dataclass(frozen=True)
class Overview:
    """The overview page. Windows end now and start at midnight in the viewer's zone: today,
    the last 7 days (today and the 6 before) and the last 30. Models are ranked by their
    spend in the 30 days; keys, teams and end users by lifetime spend (the ledger-kept
    column: a ranking over a window would read one sum per payer and bucket, a million of
    them for 100,000 busy keys). daily_by_model covers the 30 days, dearest first per day."""

    today: Totals
    last_7_days: Totals
    last_30_days: Totals
    top_keys: list[PayerSpend]
    top_teams: list[PayerSpend]
    top_models: list[Ranked]
    top_end_users: list[PayerSpend]
    daily_by_model: list[DaySpend]


@dataclass(frozen=True)
class UsagePoint:
    """One group's sums in one bucket. `start` is the bucket's start, in the viewer's zone;
    `group` is None for the sum of every row (no grouping) or, when grouping, for the groups
    outside the top ones ("other")."""

    start: datetime
    group: str | None
    totals: Totals


@dataclass(frozen=True)
class Cursor:
    """Where a newest-first keyset page goes on: after (time, id) going back in time."""

    at: datetime
    id: str


@dataclass(frozen=True)
class LogFilters:
    api_key: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    end_user: str | None = None
    model: str | None = None
    status: str | None = None           # a status, or "error" for every status but success
    start: datetime | None = None       # start_time >= start
    end: datetime | None = None         # start_time < end


@dataclass(frozen=True)
class LogRow:
    """One ledger row: one request (its retries included)."""

    request_id: str
    api_key: str
    key_alias: str | None
    model: str                          # the model name the client asked for
    upstream: str                       # the deployment that answered (api base, no secrets)
    call_type: str
    prompt_tokens: int
    completion_tokens: int
    spend_nanos: int
    start_time: datetime
    end_time: datetime
    status: str
    user_id: str | None
    team_id: str | None
    organization_id: str | None
    end_user: str | None
    attempts: int | None = None         # upstream calls made; None: a row from before 0011
    error: str | None = None            # what a request that did not succeed ended with

    @property
    def latency_s(self) -> float:
        return (self.end_time - self.start_time).total_seconds()

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.start_time, self.request_id)


@dataclass(frozen=True)
class LogPage:
    rows: list[LogRow]
    next: Cursor | None                 # None: this was the last page


@dataclass(frozen=True)
class KeyFilters:
    search: str | None = None           # a prefix of the alias, or of the token (hex)
    team_id: str | None = None
    user_id: str | None = None
    blocked: bool | None = None


@dataclass(frozen=True)
class SearchCursor:
    """Where a key search's page goes on: after this alias (the keys whose alias matches,
    in code point order), or after this token (then those matched by their token)."""

    by: Literal["alias", "token"]
    after: str


@dataclass(frozen=True)
class KeyRow:
    key: KeyRecord
    last_used: datetime | None          # the start of its newest ledger row


@dataclass(frozen=True)
class KeyPage:
    rows: list[KeyRow]
    next: Cursor | SearchCursor | None          # SearchCursor: the pages of a search


@dataclass(frozen=True)
class PayerRow:
    """A team, user, organization or customer (end user) with its spend against its budget.
    `max_budget_nanos` is its own, else its named budget's (budget_id); None: no budget."""

    id: str
    alias: str | None
    spend_nanos: int                    # lifetime: the sum of the rows that name it
    period_spend_nanos: int             # since its budget period began: what the budget counts
    max_budget_nanos: int | None
    budget_duration: str | None
    budget_reset_at: datetime | None
    blocked: bool
    keys: int                           # keys that name it (customers: 0, keys do not)
    members: int                        # team or organization members (others: 0)
    created_at: datetime


@dataclass(frozen=True)
class PayerPage:
    rows: list[PayerRow]
    next: Cursor | None


def zone(name: str) -> ZoneInfo:
    """An IANA time zone by name; ValueError naming it if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as "
                         "'Europe/Berlin' or 'UTC'") from None


def local_midnight(moment: datetime, tz: ZoneInfo, days_back: int = 0) -> datetime:
    """Midnight (in `tz`) of the day `days_back` days before `moment`'s day, as UTC."""
    day = moment.astimezone(tz).date() - timedelta(days=days_back)
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _floor(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment - timedelta(minutes=moment.minute % 15, seconds=moment.second,
                              microseconds=moment.microsecond)


def _ceil(moment: datetime) -> datetime:
    floored = _floor(moment)
    return floored if floored == moment.astimezone(UTC) else floored + BUCKET


def _bind_time(value: datetime) -> datetime:
    # SQLite's DateTime keeps the wall clock and drops the offset: bind UTC.
    return value.astimezone(UTC)


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _totals(row: Any) -> Totals:
    return Totals(int(row.spend or 0), int(row.requests or 0), int(row.failures or 0),
                  int(row.prompt or 0), int(row.completion or 0))


def _plus(a: Totals, b: Totals) -> Totals:
    return Totals(a.spend_nanos + b.spend_nanos, a.requests + b.requests,
                  a.failures + b.failures, a.prompt_tokens + b.prompt_tokens,
                  a.completion_tokens + b.completion_tokens)


def _minus(a: Totals, b: Totals) -> Totals:
    return Totals(a.spend_nanos - b.spend_nanos, a.requests - b.requests,
                  a.failures - b.failures, a.prompt_tokens - b.prompt_tokens,
                  a.completion_tokens - b.completion_tokens)


def _sums(table: Any = spend_rollup) -> list[Any]:
    r = table.c
    return [func.sum(r.spend_nanos).label("spend"), func.sum(r.requests).label("requests"),
            func.sum(r.failures).label("failures"), func.sum(r.prompt_tokens).label("prompt"),
            func.sum(r.completion_tokens).label("completion")]


def _offsets(start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[datetime, int]]:
    """The zone's UTC offset (seconds) over [start, end): [(from, offset), ...], one entry
    per span of constant offset (a DST change starts a new one). Found by stepping the
    range's 15-minute buckets hour by hour, then to the bucket where the offset changes."""
    spans: list[tuple[datetime, int]] = []

    def offset(moment: datetime) -> int:
        delta = moment.astimezone(tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    moment, current = start, offset(start)
    spans.append((start, current))
    step = timedelta(hours=1)
    while moment < end:
        ahead = min(moment + step, end)
        if offset(ahead) != current and ahead < end:
            probe = moment
            while offset(probe) == current:
                probe += BUCKET
            current = offset(probe)
            spans.append((probe, current))
            moment = probe
        else:
            moment = ahead
    return spans


def _hour_floor(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _cuts(lo: datetime, hi: datetime, bucket: Bucket, tz: ZoneInfo,
          spans: list[tuple[datetime, int]]) -> list[datetime] | None:
    """The instants in (lo, hi) where a bucket of the zone starts or its offset changes and
    that are not whole UTC hours: the hourly rollup cannot be split there. None: every hour
    is cut (hours of a zone a half or quarter hour from UTC)."""
    cuts = [at for at, _ in spans[1:]]
    if any(off % 3600 for _, off in spans):
        # a day or hour of the zone starts half or a quarter past a UTC hour
        if bucket == "hour":
            return None
        day = lo.astimezone(tz).date()
        while (midnight := local_midnight(datetime(day.year, day.month, day.day, 12,
                                                   tzinfo=tz), tz)) < hi:
            cuts.append(midnight)
            day += timedelta(days=1)
    return [c for c in cuts if lo < c < hi and c != _hour_floor(c)]


def _split(lo: datetime, hi: datetime, cuts: list[datetime]
           ) -> tuple[list[tuple[datetime, datetime]], tuple[datetime, datetime, set[datetime]]
                      | None]:
    """[lo, hi) as ranges read from the 15-minute rollup and (first hour, end, hours left
    out) read from the hourly one: whole UTC hours inside [lo, hi) not cut, the rest in
    quarters. lo and hi are 15-minute instants (UTC)."""
    first = _hour_floor(lo) + (timedelta(hours=1) if lo != _hour_floor(lo) else timedelta())
    last = _hour_floor(hi)
    if first >= last:
        return [(lo, hi)], None
    dirty = {_hour_floor(c) for c in cuts if first <= c < last}
    quarters = [(lo, first)] if lo < first else []
    quarters += [(h, h + timedelta(hours=1)) for h in sorted(dirty)]
    if last < hi:
        quarters.append((last, hi))
    return quarters, (first, last, dirty)


def _within(table: Any, ranges: list[tuple[datetime, datetime]]) -> ColumnElement[bool] | None:
    """Buckets in the ranges: one range as such; several (a range's edges and the hours a
    zone's days cut) as the list of their 15-minute buckets, which both backends read as
    that many seeks of the (level, bucket) index."""
    if not ranges:
        return None
    b = table.c.bucket
    if len(ranges) == 1:
        return and_(b >= _bind_time(ranges[0][0]), b < _bind_time(ranges[0][1]))
    starts = []
    for a, z in ranges:
        while a < z:
            starts.append(_bind_time(a))
            a += BUCKET
    listed: ColumnElement[bool] = b.in_(starts)
    return listed


def _hours_where(first: datetime, last: datetime, dirty: set[datetime]) -> ColumnElement[bool]:
    b = spend_rollup_hour.c.bucket
    where = and_(b >= _bind_time(first), b < _bind_time(last))
    if dirty:
        where = and_(where, b.not_in([_bind_time(h) for h in sorted(dirty)]))
    return where


class ReportQueries:
    """Mixed into SqlStorage: the UI's reads on the same engine."""

    engine: AsyncEngine

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for the reports. Postgres plans each statement with its values
        (plan_cache_mode for this transaction only): the driver prepares statements, and
        after five runs Postgres may keep a generic plan that cannot see a LIKE prefix or how
        few ids an IN list names (a page of the usage CSV: 20-60 ms, then 3.5 s from the
        sixth run on the 1,000,000-row bench)."""
        async with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
            yield conn

    # time

    def _epoch(self, column: Any) -> ColumnElement[Any]:
        if self.engine.dialect.name == "postgresql":
            return cast(func.extract("epoch", column), BigInteger)
        return cast(func.strftime("%s", column), Integer)

    async def _totals(self, level: str, start: datetime, end: datetime,
                      only: str | None = None) -> Totals:
        r = spend_rollup.c
        stmt = select(*_sums()).where(r.level == level, r.bucket >= _bind_time(_floor(start)),
                                      r.bucket < _bind_time(_ceil(end)))
        if only is not None:
            stmt = stmt.where(r.id == only)
        elif level == "all":
            stmt = stmt.where(r.id == "")
        async with self._reading() as conn:
            return _totals((await conn.execute(stmt)).one())

    async def report_totals(self, start: datetime, end: datetime, level: str = "all",
                            only: str | None = None) -> Totals:
        """Sums over the rows that started in [start, end), both rounded out to 15 minutes;
        of one payer with `level` ("key", "team", "user", "org", "end_user", "model") and
        `only` (its id)."""
        return await self._totals(level, start, end, only)

    async def report_top(self, level: str, start: datetime, end: datetime,
                         limit: int = 5) -> list[Ranked]:
        """The `limit` dearest ids of a level over [start, end), dearest first (ties by id).
        Costs one read of the level's buckets in the range."""
        if level not in GROUPS.values() or not 1 <= limit <= MAX_GROUPS:
            raise ValueError(f"no top list of {level!r} x {limit}")
        r = spend_rollup.c
        spend = func.sum(r.spend_nanos)
        stmt = (select(r.id, *_sums()).where(r.level == level,
                                             r.bucket >= _bind_time(_floor(start)),
                                             r.bucket < _bind_time(_ceil(end)))
                .group_by(r.id).order_by(spend.desc(), r.id).limit(limit))
        async with self._reading() as conn:
            rows = list(await conn.execute(stmt))
        return [Ranked(row.id, _totals(row)) for row in rows]

    async def report_top_payers(self, level: str, limit: int = 5) -> list[PayerSpend]:
        """The `limit` payers of a level (key, team, user, organization, customer) with the
        most lifetime spend, dearest first (ties by id): one read of the payer table."""
        if level not in _LIFETIME or not 1 <= limit <= MAX_GROUPS:
            raise ValueError(f"no top list of {level!r} x {limit}")
        table, id_name, alias_name = _LIFETIME[level]
        t = table.c
        alias: Any = t[alias_name] if alias_name else literal_column("NULL")
        stmt = (select(t[id_name].label("id"), alias.label("alias"), t.spend_nanos)
                .where(t.spend_nanos > 0)
                .order_by(t.spend_nanos.desc(), t[id_name]).limit(limit))
        async with self._reading() as conn:
            rows = list(await conn.execute(stmt))
        return [PayerSpend(r.id, r.alias, int(r.spend_nanos)) for r in rows]

    async def report_overview(self, now: datetime, tz_name: str = "UTC",
                              top: int = 5) -> Overview:
        """The overview page's numbers as of `now`, days in the zone `tz_name` (IANA)."""
        tz = zone(tz_name)
        month = local_midnight(now, tz, 29)
        # two reads of the rollup: every row's sums by day, and the models' by day
        days = await self._series("all", None, _floor(month), _ceil(now), "day", tz,
                                  named=False)

        def since(start: datetime) -> Totals:
            total = Totals()
            for p in days:
                if p.start >= start:
                    total = _plus(total, p.totals)
            return total

        by_model = await self.report_usage(month, now, "day", tz_name, "model", MAX_GROUPS)
        models: dict[str, Totals] = {}
        for p in by_model:
            models[p.group or ""] = _plus(models.get(p.group or "", Totals()), p.totals)
        ranked = sorted(models.items(), key=lambda m: (-m[1].spend_nanos, m[0]))[:top]
        return Overview(
            today=since(local_midnight(now, tz)),
            last_7_days=since(local_midnight(now, tz, 6)),
            last_30_days=since(month),
            top_keys=await self.report_top_payers("key", top),
            top_teams=await self.report_top_payers("team", top),
            top_models=[Ranked(name, totals) for name, totals in ranked],
            top_end_users=await self.report_top_payers("customer", top),
            daily_by_model=[DaySpend(p.start.date(), p.group or "", p.totals.spend_nanos)
                            for p in by_model])

    async def report_usage(self, start: datetime, end: datetime, bucket: Bucket = "day",
                           tz_name: str = "UTC", group: str | None = None, top: int = 10,
                           only: str | None = None) -> list[UsagePoint]:
        """Spend and tokens over [start, end) (rounded out to 15 minutes) in hour or day
        buckets of the zone `tz_name`, oldest first; buckets without rows are left out.

        `group` (key, team, user, customer, organization, model) splits each bucket among
        `top` named groups, and group None holds every other row of the bucket (rows that
        name another payer or none). The named groups are the dearest models in the range,
        or for payers the `top` with the most lifetime spend (see Overview for why); `only`
        names the one group to show (a payer's own chart), without "other".
        Days are calendar days of the zone (23 or 25 hours across a DST change); hours are
        the zone's, so a repeated hour at a DST change is two buckets."""
        if bucket not in ("hour", "day"):
            raise ValueError("bucket must be hour or day")
        if group is not None and group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}")
        if only is not None and group is None:
            raise ValueError("only needs a group")
        if not 1 <= top <= MAX_GROUPS:
            raise ValueError(f"top must be 1 to {MAX_GROUPS}")
        tz = zone(tz_name)
        lo, hi = _floor(start), _ceil(end)
        if group is None:
            return await self._series("all", [""], lo, hi, bucket, tz, named=False)
        level = GROUPS[group]
        if only is not None:
            return await self._series(level, [only], lo, hi, bucket, tz, named=True)
        if level == "model":
            # one read of the models' buckets: the dearest of the range named, the rest "other"
            every = await self._series(level, None, lo, hi, bucket, tz, named=True)
            spend: dict[str, int] = {}
            for p in every:
                spend[p.group or ""] = spend.get(p.group or "", 0) + p.totals.spend_nanos
            kept = set(sorted(spend, key=lambda m: (-spend[m], m))[:top])
            rest: dict[datetime, Totals] = {}
            points = []
            for p in every:
                if p.group in kept:
                    points.append(p)
                else:
                    rest[p.start] = _plus(rest.get(p.start, Totals()), p.totals)
            points += [UsagePoint(at, None, t) for at, t in rest.items()]
            points.sort(key=lambda p: (p.start, p.group is None, p.group or ""))
            return points
        ids = [p.id for p in await self.report_top_payers(group, top)]
        points = await self._series(level, ids, lo, hi, bucket, tz, named=True) if ids else []
        named: dict[datetime, Totals] = {}
        for p in points:
            named[p.start] = _plus(named.get(p.start, Totals()), p.totals)
        for p in await self._series("all", [""], lo, hi, bucket, tz, named=False):
            left = _minus(p.totals, named.get(p.start, Totals()))
            if left.requests or left.spend_nanos:
                points.append(UsagePoint(p.start, None, left))
        points.sort(key=lambda p: (p.start, p.group is None, p.group or ""))
        return points

    async def report_usage_of(self, start: datetime, end: datetime, bucket: Bucket,
                              tz_name: str, group: str, ids: Sequence[str]) -> list[UsagePoint]:
        """As report_usage with `group`, for the named `ids` only (no "other"): the usage
        CSV's pages of groups."""
        if bucket not in ("hour", "day") or group not in GROUPS:
            raise ValueError(f"no usage of {group!r} by {bucket!r}")
        if len(ids) > MAX_GROUPS:
            raise ValueError(f"at most {MAX_GROUPS} ids")
        if not ids:
            return []
        return await self._series(GROUPS[group], list(ids), _floor(start), _ceil(end), bucket,
                                  zone(tz_name), named=True)

    async def report_key_names(self, tokens: Sequence[str]) -> dict[str, str]:
        """Each key's alias, else its display name (sk-...abcd), by token; one read per
        MAX_GROUPS tokens. Tokens of deleted keys are left out."""
        k = keys.c
        out: dict[str, str] = {}
        async with self._reading() as conn:
            for at in range(0, len(tokens), MAX_GROUPS):
                chunk = list(tokens[at:at + MAX_GROUPS])
                for row in await conn.execute(select(k.token, k.key_alias, k.key_name)
                                              .where(k.token.in_(chunk))):
                    out[row.token] = row.key_alias or row.key_name
        return out

    async def _series(self, level: str, ids: list[str] | None, lo: datetime, hi: datetime,
                      bucket: Bucket, tz: ZoneInfo, named: bool) -> list[UsagePoint]:
        """The sums of the level's `ids` (None: every id) per bucket of the zone, each id
        apart if `named`. Levels all and model read whole UTC hours from the hourly rollup
        where no bucket of the zone starts inside the hour, the rest from the 15-minute one."""
        spans = _offsets(lo, hi, tz)
        cuts = _cuts(lo, hi, bucket, tz, spans) if level in HOURLY_LEVELS else None
        quarters, hours = _split(lo, hi, cuts) if cuts is not None else ([(lo, hi)], None)
        reads = [(spend_rollup, _within(spend_rollup, quarters))]
        if hours is not None:
            reads.append((spend_rollup_hour, _hours_where(*hours)))
        sums: dict[tuple[int, str], Totals] = {}
        for table, where in reads:
            if where is None:
                continue
            for row in await self._grouped(table, where, level, ids, bucket, spans, named):
                place = (int(row.label), row.gid if named else "")
                sums[place] = _plus(sums.get(place, Totals()), _totals(row))
        out = []
        wanted = None if ids is None else set(ids)
        for (label, gid), totals in sorted(sums.items()):
            if named and wanted is not None and gid not in wanted:
                continue
            if bucket == "day":
                day = date(1970, 1, 1) + timedelta(days=label)
                at = datetime(day.year, day.month, day.day, tzinfo=tz)
            else:
                at = datetime.fromtimestamp(label, UTC).astimezone(tz)
            out.append(UsagePoint(at, gid if named else None, totals))
        return out

    async def _grouped(self, table: Any, where: ColumnElement[bool], level: str,
                       ids: list[str] | None, bucket: Bucket,
                       spans: list[tuple[datetime, int]], named: bool) -> list[Any]:
        """One rollup table's rows in `where`, summed per bucket of the zone (and id)."""
        r = table.c
        # Offsets are written into the statement (ints): the label then reads the same in the
        # SELECT and the GROUP BY, which Postgres needs to see them as one expression.
        offset: Any = literal_column(str(spans[0][1]))
        if len(spans) > 1:
            offset = case(*((r.bucket >= _bind_time(at), literal_column(str(off)))
                            for at, off in reversed(spans[1:])),
                          else_=literal_column(str(spans[0][1])))
        size: Any = literal_column("86400" if bucket == "day" else "3600")
        local = self._epoch(r.bucket) + offset
        # day: the local date's number (wall clock); hour: the hour's start in UTC seconds,
        # so the two 1 a.m.s of a DST change stay apart
        label = (local // size) if bucket == "day" else (local // size) * size - offset
        columns: list[Any] = [label.label("label")]
        if named:
            columns.append(r.id.label("gid"))
        # by position: the expressions hold bound times, which Postgres would not match
        positions: list[Any] = [literal_column(str(n + 1)) for n in range(len(columns))]
        # Payers: their ids' own ranges of the primary key. Models (a few names, each with
        # rows in most buckets) and "all": the level's range of the (level, bucket) index,
        # which Postgres reads alone; other models' rows are dropped by the caller.
        conditions = [r.level == level, where]
        if ids is not None and level not in HOURLY_LEVELS:
            conditions.append(r.id.in_(ids or []))
        stmt = (select(*columns, *_sums(table)).where(*conditions)
                .group_by(*positions).order_by(*positions))
        async with self._reading() as conn:
            return list(await conn.execute(stmt))

    # logs

    async def report_logs(self, filters: LogFilters | None = None,
                          after: Cursor | None = None, limit: int = 50) -> LogPage:
        """Ledger rows, newest first (start_time, then request_id, both descending), after
        `after` (the previous page's `next`)."""
        _check_limit(limit)
        s = spend_logs.c
        stmt = _log_filtered(select(spend_logs), filters or LogFilters())
        if after is not None:
            stmt = stmt.where(*_before(s.start_time, s.request_id, after))
        stmt = stmt.order_by(s.start_time.desc(), s.request_id.desc()).limit(limit + 1)
        async with self._reading() as conn:
            rows = [_log_row(r) for r in await conn.execute(stmt)]
        return LogPage(rows[:limit], rows[limit - 1].cursor if len(rows) > limit else None)

    async def report_logs_newer(self, request_id: str, filters: LogFilters | None = None,
                                limit: int = 50) -> list[LogRow]:
        """The live tail: rows after the row `request_id` in the logs' order (a later
        start_time, or the same and a greater id), newest first, at most `limit` (more means
        the page should reload). One index range from that row; [] if the row is unknown.
        A row written late with an earlier start_time (a long stream) is not in the tail;
        it is in the page."""
        _check_limit(limit)
        s = spend_logs.c
        anchor = select(s.start_time).where(s.request_id == request_id).scalar_subquery()
        # a row value and a plain bound: both let the index seek to the anchor row
        stmt = _log_filtered(select(spend_logs), filters or LogFilters()).where(
            s.start_time >= anchor,
            tuple_(s.start_time, s.request_id) > tuple_(anchor, literal(request_id)))
        stmt = stmt.order_by(s.start_time.desc(), s.request_id.desc()).limit(limit)
        async with self._reading() as conn:
            return [_log_row(r) for r in await conn.execute(stmt)]

    async def report_log(self, request_id: str) -> LogRow | None:
        """One ledger row by request id (the detail view)."""
        async with self._reading() as conn:
            row = (await conn.execute(select(spend_logs).where(
                spend_logs.c.request_id == request_id))).first()
        return _log_row(row) if row is not None else None

    # keys

    async def report_keys(self, filters: KeyFilters | None = None,
                          after: Cursor | SearchCursor | None = None,
                          limit: int = 50) -> KeyPage:
        """Keys, newest first (created_at, then token, descending), with their last use;
        filters are equalities (team, user, blocked). A search matches a prefix of the alias
        (case-sensitive) or, when it is hex, of the token, and lists in alias order (code
        points) the keys whose alias matches, then by token the others whose token does:
        each an index range read from `after` for `limit` rows, however many match."""
        _check_limit(limit)
        filters = filters or KeyFilters()
        k = keys.c
        base: Select[Any] = select(keys, self._last_used().label("last_used"))
        for name in ("team_id", "user_id", "blocked"):
            value = getattr(filters, name)
            if value is not None:
                base = base.where(k[name] == value)
        if filters.search:
            return await self._key_search(base, filters.search, after, limit)
        stmt = base
        if isinstance(after, Cursor):
            stmt = stmt.where(*_before(k.created_at, k.token, after))
        stmt = stmt.order_by(k.created_at.desc(), k.token.desc()).limit(limit + 1)
        async with self._reading() as conn:
            rows = list(await conn.execute(stmt))
        out = [KeyRow(key_from_mapping(r._mapping), _utc(r.last_used)) for r in rows[:limit]]
        nxt = None
        if len(rows) > limit:
            last = out[-1].key
            assert last.created_at is not None
            nxt = Cursor(last.created_at, last.token)
        return KeyPage(out, nxt)

    def _last_used(self) -> Any:
        return (select(func.max(spend_logs.c.start_time))
                .where(spend_logs.c.api_key == keys.c.token).scalar_subquery())

    async def _key_search(self, base: Select[Any], text: str,
                          after: Cursor | SearchCursor | None, limit: int) -> KeyPage:
        k = keys.c
        postgres = self.engine.dialect.name == "postgresql"
        hexed = text.lower() if _HEX.fullmatch(text.lower()) else None
        position = after if isinstance(after, SearchCursor) else None
        rows: list[tuple[str, Any]] = []
        async with self._reading() as conn:
            if position is None or position.by == "alias":
                stmt = base.where(self._alias_prefix(text))
                if position is not None:
                    stmt = stmt.where(_after_alias(k.key_alias, position.after, postgres))
                order: Any = (literal_column("faregate_keys.key_alias USING ~<~") if postgres
                              else k.key_alias)
                stmt = stmt.order_by(order).limit(limit + 1)
                rows += [("alias", r) for r in await conn.execute(stmt)]
            if hexed is not None and len(rows) <= limit:
                stmt = base.where(_prefix_range(k.token, hexed),
                                  or_(k.key_alias.is_(None), ~self._alias_prefix(text)))
                if position is not None and position.by == "token":
                    stmt = stmt.where(k.token > position.after)
                stmt = stmt.order_by(k.token).limit(limit + 1 - len(rows))
                rows += [("token", r) for r in await conn.execute(stmt)]
        out = [KeyRow(key_from_mapping(r._mapping), _utc(r.last_used)) for _, r in rows[:limit]]
        nxt = None
        if len(rows) > limit:
            by, last = rows[limit - 1]
            nxt = SearchCursor("alias" if by == "alias" else "token",
                               last.key_alias if by == "alias" else last.token)
        return KeyPage(out, nxt)

    def _alias_prefix(self, text: str) -> ColumnElement[bool]:
        k = keys.c
        if self.engine.dialect.name == "postgresql":
            # LIKE 'p%' on the text_pattern_ops index (code point order, whatever the
            # database's collation): the range and the order the search pages read
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return k.key_alias.like(escaped + "%", escape="\\")
        # SQLite's LIKE ignores case and skips the index: a range on the binary order
        return _prefix_range(k.key_alias, text)

    # payers above keys

    async def report_payers(self, level: PayerLevel, after: Cursor | None = None,
                            limit: int = 50, organization_id: str | None = None) -> PayerPage:
        """Teams, users, organizations or customers, newest first (created_at, then id,
        descending), each with its spend against its budget, its keys and members counted by
        index. `organization_id` keeps an organization's teams."""
        _check_limit(limit)
        table, id_column, alias_column = _PAYER_TABLES[level]
        t = table.c
        own = t.max_budget_nanos
        named = (select(budgets.c.max_budget_nanos)
                 .where(budgets.c.budget_id == t.budget_id).scalar_subquery())
        key_count: Any = literal(0)
        member_count: Any = literal(0)
        if level in ("team", "user", "organization"):
            column = {"team": keys.c.team_id, "user": keys.c.user_id,
                      "organization": keys.c.organization_id}[level]
            key_count = (select(func.count()).select_from(keys)
                         .where(column == t[id_column]).scalar_subquery())
        if level == "team":
            member_count = (select(func.count()).select_from(team_members)
                            .where(team_members.c.team_id == t.team_id).scalar_subquery())
        elif level == "organization":
            member_count = (select(func.count()).select_from(organization_members)
                            .where(organization_members.c.organization_id
                                   == t.organization_id).scalar_subquery())
        blocked: Any = t.blocked if "blocked" in t else literal(False)
        alias: Any = t[alias_column] if alias_column else literal(None)
        stmt = select(t[id_column].label("id"), alias.label("alias"), t.spend_nanos,
                      t.period_base_nanos, func.coalesce(own, named).label("budget"),
                      t.budget_duration, t.budget_reset_at, blocked.label("blocked"),
                      key_count.label("keys"), member_count.label("members"), t.created_at)
        if organization_id is not None:
            if level != "team":
                raise ValueError("organization_id filters teams only")
            stmt = stmt.where(t.organization_id == organization_id)
        if after is not None:
            stmt = stmt.where(*_before(t.created_at, t[id_column], after))
        stmt = stmt.order_by(t.created_at.desc(), t[id_column].desc()).limit(limit + 1)
        async with self._reading() as conn:
            rows = list(await conn.execute(stmt))
        out = [PayerRow(r.id, r.alias, int(r.spend_nanos),
                        int(r.spend_nanos) - int(r.period_base_nanos), r.budget,
                        r.budget_duration, _utc(r.budget_reset_at), bool(r.blocked),
                        int(r.keys), int(r.members), _utc(r.created_at)) for r in rows[:limit]]
        nxt = Cursor(out[-1].created_at, out[-1].id) if len(rows) > limit else None
        return PayerPage(out, nxt)


# the payers' tables for lifetime rankings: level -> (table, id column, alias column)
_LIFETIME: dict[str, tuple[Any, str, str | None]] = {
    "key": (keys, "token", "key_alias"),
    "team": (teams, "team_id", "team_alias"),
    "user": (users, "user_id", "user_alias"),
    "organization": (organizations, "organization_id", "organization_alias"),
    "customer": (end_users, "end_user_id", "alias"),
}

_PAYER_TABLES: dict[str, tuple[Any, str, str | None]] = {
    "team": (teams, "team_id", "team_alias"),
    "user": (users, "user_id", "user_alias"),
    "organization": (organizations, "organization_id", "organization_alias"),
    "customer": (end_users, "end_user_id", "alias"),
}

def _before(at_column: Any, id_column: Any, cursor: Cursor) -> list[ColumnElement[bool]]:
    """Rows after `cursor` in newest-first order: (at, id) < the cursor's. The plain bound on
    the time lets every backend seek the index to the cursor rather than scan to it."""
    at = _bind_time(cursor.at)
    return [at_column <= at, tuple_(at_column, id_column) < tuple_(literal(at), literal(cursor.id))]


def _after_alias(column: Any, alias: str, postgres: bool) -> ColumnElement[bool]:
    """Aliases past `alias` in code point order (Postgres: the text_pattern_ops operator,
    which its index reads; SQLite's BINARY order is the same)."""
    if postgres:
        after: ColumnElement[bool] = column.op("~>~", is_comparison=True)(alias)
    else:
        after = column > alias
    return after


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1 to {MAX_PAGE}")


def _prefix_range(column: Any, prefix: str) -> ColumnElement[bool]:
    """Strings that start with `prefix`, as an index range in code point order (SQLite's
    BINARY, UTF-8 bytes): [prefix, the least string past them); trailing U+10FFFF carry."""
    stem = prefix.rstrip(chr(0x10FFFF))
    if not stem:
        at_least: ColumnElement[bool] = column >= prefix
        return at_least                         # nothing sorts past them
    return and_(column >= prefix, column < stem[:-1] + chr(ord(stem[-1]) + 1))


def _log_filtered(stmt: Select[Any], filters: LogFilters) -> Select[Any]:
    s = spend_logs.c
    for name in ("api_key", "team_id", "user_id", "end_user", "model"):
        value = getattr(filters, name)
        if value is not None:
            stmt = stmt.where(s[name] == value)
    if filters.status == "error":
        stmt = stmt.where(s.status != "success")
    elif filters.status is not None:
        stmt = stmt.where(s.status == filters.status)
    if filters.start is not None:
        stmt = stmt.where(s.start_time >= _bind_time(filters.start))
    if filters.end is not None:
        stmt = stmt.where(s.start_time < _bind_time(filters.end))
    return stmt


def _log_row(row: Any) -> LogRow:
    m = row._mapping
    return LogRow(**{name: _utc(m[name]) for name in LogRow.__dataclass_fields__})

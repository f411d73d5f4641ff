"""What the pages read, in one place: time ranges in the viewer's zone, spend totals and series
summed in SQL by the store, keys' budget bars. Pages call these, never SQL."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from faregate.admission.demand import key_scope
from faregate.keys.tokens import token_of
from faregate.records import KeyRecord
from faregate.storage.protocols import Page, PageAfter, SpendQuery, SpendTotal
from faregate.ui.charts import BudgetBar
from faregate.ui.site import UiServices

# Group-by choices of the usage page: the label, and the store's level.
LEVELS = {"model": "Model", "key": "Key", "team": "Team", "user": "User",
          "end_user": "Customer", "organization": "Organization"}


@dataclass(frozen=True)
class Range:
    """[start, end) in UTC, and the local days it spans (for day buckets)."""

    start: datetime
    end: datetime
    zone: tzinfo

    @classmethod
    def last_days(cls, now: datetime, zone: tzinfo, days: int) -> Range:
        """Today and the days-1 days before it, in the viewer's zone."""
        today = now.astimezone(zone).date()
        return cls.of_days(today - timedelta(days=days - 1), today, zone)

    @classmethod
    def of_days(cls, first: date, last: date, zone: tzinfo) -> Range:
        return cls(local_midnight(first, zone), local_midnight(last + timedelta(days=1), zone),
                   zone)

    def days(self) -> list[date]:
        first = self.start.astimezone(self.zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def local_midnight(day: date, zone: tzinfo) -> datetime:
    """The day's first instant in `zone`, in UTC."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def budget_bar(services: UiServices, key: KeyRecord) -> BudgetBar:
    return BudgetBar(services.period_spend(key), services.reserved(key_scope(key.token)),
                     key.max_budget_nanos)


@dataclass(frozen=True)
class Filters:
    """Which ledger rows: by key (hash), team, user, customer, model; None = any."""

    api_key: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    end_user: str | None = None
    model: str | None = None

    def query(self, span: Range, limit: int) -> SpendQuery:
        return SpendQuery(api_key=self.api_key, team_id=self.team_id, user_id=self.user_id,
                          end_user=self.end_user, model=self.model, start=span.start,
                          end=span.end, page_size=limit)


ANY = Filters()


async def totals(services: UiServices, level: str, span: Range, limit: int = 10,
                 filters: Filters = ANY) -> list[SpendTotal]:
    return await services.storage.spend_totals(level, filters.query(span, limit))


async def total(services: UiServices, span: Range, filters: Filters = ANY) -> SpendTotal:
    found = await totals(services, "all", span, 1, filters)
    return found[0] if found else SpendTotal(None, 0, 0, 0, 0)


async def daily_series(services: UiServices, level: str, span: Range, limit: int = 1000,
                       filters: Filters = ANY) -> tuple[list[str], dict[str, list[int]]]:
    """Spend per day and per payer of `level` ("all": one series), as chart buckets."""
    rows = await services.storage.spend_totals(level, filters.query(span, limit), by_day=True)
    return bucketed(span.days(), rows)


def bucketed(days: Sequence[date], rows: Sequence[SpendTotal]
             ) -> tuple[list[str], dict[str, list[int]]]:
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[int]] = {}
    for row in rows:
        if row.day is None or row.day not in index:
            continue
        values = series.setdefault(row.id or "all", [0] * len(days))
        values[index[row.day]] += row.spend_nanos
    return [d.strftime("%b %d") for d in days], series


async def key_names(services: UiServices, tokens: Sequence[str]) -> dict[str, str]:
    """Each key's alias (else its display name), for tables of totals by key."""
    out = {}
    for token in tokens:
        key = await services.storage.get_key(token)
        out[token] = (key.key_alias or key.key_name) if key else f"(deleted) {token[:8]}…"
    return out


def cursor_text(after: PageAfter | None) -> str | None:
    """A keyset page's position as one opaque query value."""
    if after is None:
        return None
    return f"{after.created_at.isoformat()}~{after.id}"


def cursor_from(text: str) -> PageAfter | None:
    """The position in `?after=`; a malformed one starts from the first page."""
    at, sep, ident = text.partition("~")
    if not sep or not ident:
        return None
    try:
        created = datetime.fromisoformat(at)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return PageAfter(created, ident)


async def key_page(services: UiServices, search: str, team_id: str | None,
                   user_id: str | None, state: str, after: PageAfter | None,
                   limit: int) -> Page[KeyRecord]:
    """A page of keys in creation order, filtered by owner and state; `search`: a key
    (sk-...), its hash, or an alias."""
    if search:
        found = await services.storage.get_key(token_of(search))
        if found is None:
            found = await services.storage.get_key_by_alias(search)
        keep = found is not None and (team_id is None or found.team_id == team_id) and (
            user_id is None or found.user_id == user_id) and (
            state not in ("blocked", "active") or found.blocked == (state == "blocked"))
        return Page([found] if keep and found is not None and after is None else [], None)
    filters: dict[str, Any] = {}
    if team_id:
        filters["team_id"] = team_id
    if user_id:
        filters["user_id"] = user_id
    if state in ("blocked", "active"):
        filters["blocked"] = state == "blocked"
    return await services.storage.list_keys_page(filters, after, limit)


async def last_used(services: UiServices, tokens: Sequence[str]) -> dict[str, datetime]:
    """Each key's latest ledger row's start (one indexed lookup per key)."""
    found = await asyncio.gather(*(services.storage.spend_logs(
        SpendQuery(api_key=token, page_size=1)) for token in tokens))
    return {token: rows[0]["start_time"] for token, rows in zip(tokens, found, strict=True)
            if rows}


@dataclass(frozen=True)
class UsageRow:
    """One group's sums in one bucket (its start, UTC)."""

    start: datetime
    group: str
    spend_nanos: int
    requests: int
    failures: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class UsageSeries:
    labels: list[str]                   # one per bucket, in the viewer's zone
    groups: list[str]
    spend: dict[str, list[int]]         # group -> a value per bucket
    tokens: dict[str, list[int]]


def bucket_starts(span: Range, bucket: str) -> list[datetime]:
    """Each bucket's first instant (UTC): local midnights, or every hour (a DST day has 23
    or 25)."""
    if bucket == "day":
        return [local_midnight(d, span.zone) for d in span.days()]
    hours = int((span.end - span.start).total_seconds() // 3600)
    return [span.start + timedelta(hours=i) for i in range(hours)]


async def usage_rows(services: UiServices, level: str, span: Range,
                     bucket: str) -> list[UsageRow]:
    """Each group's sums per bucket, summed by the database."""
    rows = await services.storage.spend_totals(level, SpendQuery(
        start=span.start, end=span.end, page_size=100_000), by_day=True)
    return [UsageRow(datetime.combine(r.day, time(), tzinfo=UTC), r.id or "", r.spend_nanos,
                     r.requests, 0, r.prompt_tokens, r.completion_tokens)
            for r in rows if r.day is not None]


async def usage_series(services: UiServices, level: str, span: Range,
                       bucket: str) -> UsageSeries:
    starts = bucket_starts(span, bucket)
    rows = await usage_rows(services, level, span, bucket)
    spend: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    for row in rows:
        i = bisect_right(starts, row.start) - 1
        if i < 0:
            continue
        spend.setdefault(row.group, [0] * len(starts))[i] += row.spend_nanos
        tokens.setdefault(row.group, [0] * len(starts))[i] += (row.prompt_tokens
                                                              + row.completion_tokens)
    fmt = "%b %d" if bucket == "day" else "%d %H:00"
    return UsageSeries([s.astimezone(span.zone).strftime(fmt) for s in starts], sorted(spend),
                       spend, tokens)


@dataclass(frozen=True)
class LogFilters:
    api_key: str | None = None
    team_id: str | None = None
    model: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class LogPage:
    rows: list[dict[str, Any]]          # ledger rows, newest first
    next: str | None                    # the next page's position, None on the last


async def log_page(services: UiServices, filters: LogFilters, start: datetime | None,
                   end: datetime | None, position: str, limit: int) -> LogPage:
    """A page of ledger rows, newest first."""
    page = int(position) if position.isdigit() else 1
    rows = await services.storage.spend_logs(SpendQuery(
        api_key=filters.api_key, team_id=filters.team_id, model=filters.model, start=start,
        end=end, page=page, page_size=limit + 1))
    if filters.status:
        rows = [r for r in rows if r["status"] == filters.status]
    return LogPage(rows[:limit], str(page + 1) if len(rows) > limit else None)


async def log_row(services: UiServices, request_id: str) -> dict[str, Any] | None:
    rows = await services.storage.spend_logs(SpendQuery(request_id=request_id, page_size=1))
    return rows[0] if rows else None

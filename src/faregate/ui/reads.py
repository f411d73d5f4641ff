"""What the pages read, in one place: time ranges in the viewer's zone, the store's reports
(storage/reports.py: sums from the spend rollup, keyset pages) shaped for charts and tables,
keys' budget bars. Pages call these, never SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from faregate.admission.demand import key_scope
from faregate.keys.tokens import PREFIX, token_of
from faregate.records import KeyRecord
from faregate.storage.reports import (
    Bucket,
    Cursor,
    KeyFilters,
    KeyPage,
    SearchCursor,
    Totals,
    UsagePoint,
)
from faregate.ui.charts import OTHER, BudgetBar
from faregate.ui.site import UiServices

# The usage page's groups: the report's group name -> its label.
GROUPS = {"model": "Model", "key": "Key", "team": "Team", "user": "User",
          "customer": "Customer", "organization": "Organization"}
# The same groups as the rollup's levels (report_top, report_totals).
LEVELS = {"model": "model", "key": "key", "team": "team", "user": "user",
          "customer": "end_user", "organization": "org"}


@dataclass(frozen=True)
class Range:
    """[start, end) in UTC: whole days of the viewer's zone."""

    start: datetime
    end: datetime
    zone: ZoneInfo

    @classmethod
    def last_days(cls, now: datetime, zone: ZoneInfo, days: int) -> Range:
        """Today and the days-1 days before it, in the viewer's zone."""
        today = now.astimezone(zone).date()
        return cls.of_days(today - timedelta(days=days - 1), today, zone)

    @classmethod
    def of_days(cls, first: date, last: date, zone: ZoneInfo) -> Range:
        return cls(local_midnight(first, zone), local_midnight(last + timedelta(days=1), zone),
                   zone)

    def days(self) -> list[date]:
        first = self.start.astimezone(self.zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The day's first instant in `zone`, in UTC."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def budget_bar(services: UiServices, key: KeyRecord) -> BudgetBar:
    return BudgetBar(services.period_spend(key), services.reserved(key_scope(key.token)),
                     key.max_budget_nanos)


async def key_names(services: UiServices, tokens: Sequence[str]) -> dict[str, str]:
    """Each key's alias (else its display name), for tables and charts by key: one read."""
    found = await services.storage.report_key_names(tokens)
    return {token: found.get(token, f"(deleted) {token[:8]}…") for token in tokens}


# keyset positions, as one opaque query value

def cursor_text(cursor: Cursor | SearchCursor | None) -> str | None:
    if cursor is None:
        return None
    if isinstance(cursor, SearchCursor):
        return f"{cursor.by}~{cursor.after}"
    return f"{cursor.at.isoformat()}~{cursor.id}"


def cursor_from(text: str) -> Cursor | None:
    """The position in `?after=`; a malformed one starts from the first page."""
    at, sep, ident = text.partition("~")
    if not sep or not ident:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    return Cursor(moment if moment.tzinfo else moment.replace(tzinfo=UTC), ident)


def key_cursor_from(text: str) -> Cursor | SearchCursor | None:
    """The keys page's `?after=`: a time and token, or a search's alias or token."""
    by, sep, value = text.partition("~")
    if sep and value and by in ("alias", "token"):
        return SearchCursor("alias" if by == "alias" else "token", value)
    return cursor_from(text)


async def key_page(services: UiServices, search: str, team_id: str | None,
                   user_id: str | None, state: str, after: Cursor | SearchCursor | None,
                   limit: int) -> KeyPage:
    """A page of keys, newest first; `search`: a prefix of the alias or of the hash, or a
    whole key (sk-...), which finds that key by its hash."""
    if search.startswith(PREFIX):
        search = token_of(search)
    blocked = {"blocked": True, "active": False}.get(state)
    return await services.storage.report_keys(
        KeyFilters(search or None, team_id, user_id, blocked), after, limit)


# usage

@dataclass(frozen=True)
class UsageSeries:
    labels: list[str]                   # one per bucket, in the viewer's zone
    spend: dict[str, list[int]]         # group -> a value per bucket
    tokens: dict[str, list[int]]


def bucket_starts(span: Range, bucket: Bucket) -> list[datetime]:
    """Each bucket's first instant, in the viewer's zone: its midnights, or every hour (a
    day across a DST change has 23 or 25)."""
    if bucket == "day":
        return [datetime.combine(d, time(), tzinfo=span.zone) for d in span.days()]
    hours = int((span.end - span.start).total_seconds() // 3600)
    return [(span.start + timedelta(hours=i)).astimezone(span.zone) for i in range(hours)]


async def usage_points(services: UiServices, span: Range, bucket: Bucket,
                       group: str | None, top: int = 7,
                       only: str | None = None) -> list[UsagePoint]:
    return await services.storage.report_usage(span.start, span.end, bucket, span.zone.key,
                                               group, top, only)


def series(span: Range, bucket: Bucket, points: Sequence[UsagePoint],
           names: dict[str, str] | None = None) -> UsageSeries:
    """Points laid out as one value per bucket per group (None: "other", or "all")."""
    starts = bucket_starts(span, bucket)
    index = {start.astimezone(UTC): i for i, start in enumerate(starts)}
    spend: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    for point in points:
        i = index.get(point.start.astimezone(UTC))
        if i is None:
            continue
        name = (names or {}).get(point.group or "", point.group) if point.group else OTHER
        spend.setdefault(name, [0] * len(starts))[i] += point.totals.spend_nanos
        tokens.setdefault(name, [0] * len(starts))[i] += (point.totals.prompt_tokens
                                                         + point.totals.completion_tokens)
    fmt = "%b %d" if bucket == "day" else "%d %H:00"
    return UsageSeries([s.strftime(fmt) for s in starts], spend, tokens)


async def daily_spend(services: UiServices, span: Range, group: str,
                      only: str) -> UsageSeries:
    """One payer's spend per day of the viewer's zone (its key's page, My key)."""
    points = await usage_points(services, span, "day", group, 1, only)
    return series(span, "day", [UsagePoint(p.start, "spend", p.totals) for p in points])


def group_totals(points: Sequence[UsagePoint]) -> list[tuple[str | None, Totals]]:
    """The points' sums per group over all buckets, dearest first (None: "other")."""
    sums: dict[str | None, Totals] = {}
    for p in points:
        t = sums.get(p.group, Totals())
        sums[p.group] = Totals(t.spend_nanos + p.totals.spend_nanos,
                               t.requests + p.totals.requests,
                               t.failures + p.totals.failures,
                               t.prompt_tokens + p.totals.prompt_tokens,
                               t.completion_tokens + p.totals.completion_tokens)
    return sorted(sums.items(), key=lambda item: (item[0] is None, -item[1].spend_nanos,
                                                  item[0] or ""))

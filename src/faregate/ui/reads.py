"""What the pages read, in one place: time ranges in the viewer's zone, spend totals and series
summed in SQL by the store, keys' budget bars. Pages call these, never SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from faregate.admission.demand import key_scope
from faregate.records import KeyRecord
from faregate.storage.protocols import SpendQuery, SpendTotal
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

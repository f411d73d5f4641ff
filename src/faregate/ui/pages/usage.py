"""Usage: spend and tokens over time in the viewer's time zone (hour or day buckets), grouped
by key, team, user, customer or model, over a date range; the same numbers as CSV. Every sum
is computed by the database; the page only lays the buckets out."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta

from starlette.responses import Response

from faregate.errors import InvalidRequest
from faregate.money import NANOS_PER_DOLLAR
from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars, number
from faregate.ui.site import Ctx, PageRoute

MAX_DAYS = {"day": 366, "hour": 14}     # at most 366 day bars, 336 hour bars
GROUPS = [("model", "Model"), ("key", "Key"), ("team", "Team"), ("user", "User"),
          ("end_user", "Customer")]


@dataclass(frozen=True)
class UsageQuery:
    first: date
    last: date
    bucket: str                     # day | hour
    group: str                      # a GROUPS level

    @classmethod
    def of(cls, ctx: Ctx) -> UsageQuery:
        today = ctx.services.now().astimezone(ctx.tz).date()
        bucket = ctx.param("bucket", "day")
        group = ctx.param("group", "model")
        if bucket not in MAX_DAYS:
            raise InvalidRequest("bucket must be day or hour", param="bucket")
        if group not in dict(GROUPS):
            raise InvalidRequest(f"group must be one of {', '.join(g for g, _ in GROUPS)}",
                                 param="group")
        last = _date(ctx.param("to"), today, "to")
        first = _date(ctx.param("from"), last - timedelta(days=6 if bucket == "day" else 0),
                      "from")
        if first > last:
            raise InvalidRequest("'from' is after 'to'", param="from")
        if (last - first).days + 1 > MAX_DAYS[bucket]:
            raise InvalidRequest(f"At most {MAX_DAYS[bucket]} days in {bucket} buckets; "
                                 "narrow the range or use day buckets", param="from")
        return cls(first, last, bucket, group)

    def params(self) -> dict[str, str]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat(),
                "bucket": self.bucket, "group": self.group}


def _date(text: str, default: date, name: str) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2026-01-31", param=name) from None


async def usage(ctx: Ctx) -> Response:
    query = UsageQuery.of(ctx)
    span = reads.Range.of_days(query.first, query.last, ctx.tz)
    usage_series = await reads.usage_series(ctx.services, query.group, span, query.bucket)
    names = await _names(ctx, query.group, usage_series.groups)
    spend = {names.get(g, g): v for g, v in usage_series.spend.items()}
    tokens = {names.get(g, g): v for g, v in usage_series.tokens.items()}
    totals = await reads.totals(ctx.services, query.group, span, 100)
    label = dict(GROUPS)[query.group].lower()
    return ctx.render(
        "usage.html", title="Usage", query=query, groups=GROUPS, names=names,
        totals=totals, csv_url=ctx.url("/usage.csv", **query.params()),
        spend_chart=stacked_bars(f"Spend per {query.bucket} by {label}",
                                 usage_series.labels, spend, dollars),
        token_chart=stacked_bars(f"Tokens per {query.bucket} by {label}",
                                 usage_series.labels, tokens, number))


async def usage_csv(ctx: Ctx) -> Response:
    query = UsageQuery.of(ctx)
    span = reads.Range.of_days(query.first, query.last, ctx.tz)
    rows = await reads.usage_rows(ctx.services, query.group, span, query.bucket)
    names = await _names(ctx, query.group, sorted({r.group for r in rows}))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"{query.bucket}_start ({ctx.tz.key})", query.group, "name", "spend_usd",
                     "spend_nanos", "requests", "failures", "prompt_tokens",
                     "completion_tokens"])
    for r in rows:
        writer.writerow([r.start.isoformat(), r.group, _cell(names.get(r.group, r.group)),
                         f"{r.spend_nanos / NANOS_PER_DOLLAR:.9f}", r.spend_nanos, r.requests,
                         r.failures, r.prompt_tokens, r.completion_tokens])
    filename = f"faregate-usage-{query.group}-{query.first}-{query.last}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


def _cell(text: str) -> str:
    """A spreadsheet must not run a cell as a formula (an alias starting with '=')."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def _names(ctx: Ctx, group: str, ids: list[str]) -> dict[str, str]:
    if group != "key":
        return {}
    return await reads.key_names(ctx.services, ids)


ROUTES = [PageRoute("/usage", usage), PageRoute("/usage.csv", usage_csv)]

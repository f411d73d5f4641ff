"""Usage: spend and tokens over time in the viewer's time zone (hour or day buckets), grouped
by key, team, user, customer or model, over a date range; the same numbers as CSV. Every sum
is computed by the database; the page only lays the buckets out."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from starlette.responses import Response

from faregate.errors import InvalidRequest
from faregate.money import NANOS_PER_DOLLAR
from faregate.storage.reports import Bucket
from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars, number
from faregate.ui.site import Ctx, PageRoute

MAX_DAYS = {"day": 366, "hour": 14}     # at most 366 day bars, 336 hour bars
GROUPS = list(reads.GROUPS.items())
CSV_GROUPS = 1000                       # the CSV names up to this many groups; the rest "other"


@dataclass(frozen=True)
class UsageQuery:
    first: date
    last: date
    bucket: Bucket
    group: str                      # a GROUPS level

    @classmethod
    def of(cls, ctx: Ctx) -> UsageQuery:
        today = ctx.services.now().astimezone(ctx.tz).date()
        given = ctx.param("bucket", "day")
        group = ctx.param("group", "model")
        if given not in ("day", "hour"):
            raise InvalidRequest("bucket must be day or hour", param="bucket")
        bucket: Bucket = "day" if given == "day" else "hour"
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
    points = await reads.usage_points(ctx.services, span, query.bucket, query.group)
    names = await _names(ctx, query.group, sorted({p.group for p in points if p.group}))
    laid_out = reads.series(span, query.bucket, points, names)
    totals = reads.group_totals(points)
    label = reads.GROUPS[query.group].lower()
    return ctx.render(
        "usage.html", title="Usage", query=query, groups=GROUPS, names=names,
        totals=totals, label=label, csv_url=ctx.url("/usage.csv", **query.params()),
        spend_chart=stacked_bars(f"Spend per {query.bucket} by {label}", laid_out.labels,
                                 laid_out.spend, dollars),
        token_chart=stacked_bars(f"Tokens per {query.bucket} by {label}", laid_out.labels,
                                 laid_out.tokens, number))


async def usage_csv(ctx: Ctx) -> Response:
    query = UsageQuery.of(ctx)
    span = reads.Range.of_days(query.first, query.last, ctx.tz)
    points = await reads.usage_points(ctx.services, span, query.bucket, query.group,
                                      CSV_GROUPS)
    names = await _names(ctx, query.group, sorted({p.group for p in points if p.group}))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f"{query.bucket}_start", query.group, "name", "spend_usd", "spend_nanos",
                     "requests", "failures", "prompt_tokens", "completion_tokens"])
    for p in points:
        t = p.totals
        group = p.group or ""
        writer.writerow([p.start.isoformat(), group,
                         _cell(names.get(group, group) if p.group else "other"),
                         f"{t.spend_nanos / NANOS_PER_DOLLAR:.9f}", t.spend_nanos, t.requests,
                         t.failures, t.prompt_tokens, t.completion_tokens])
    filename = f"faregate-usage-{query.group}-{query.first}-{query.last}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{filename}"'})


def _cell(text: str) -> str:
    """A spreadsheet must not run a cell as a formula (an alias starting with '=')."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def _names(ctx: Ctx, group: str, ids: Sequence[str]) -> dict[str, str]:
    if group != "key":
        return {}
    return await reads.key_names(ctx.services, ids)


ROUTES = [PageRoute("/usage", usage), PageRoute("/usage.csv", usage_csv)]

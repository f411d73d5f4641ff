"""Usage: spend and tokens over time in the viewer's time zone (hour or day buckets), grouped
by key, team, user, customer or model, over a date range; the same numbers as CSV. Every sum
is computed by the database; the page only lays the buckets out."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from starlette.responses import Response, StreamingResponse

from faregate.errors import InvalidRequest
from faregate.money import NANOS_PER_DOLLAR
from faregate.storage.reports import Bucket, Totals, UsagePoint
from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars, number
from faregate.ui.site import Ctx, PageRoute

MAX_DAYS = {"day": 366, "hour": 14}     # at most 366 day bars, 336 hour bars
GROUPS = list(reads.GROUPS.items())
CSV_GROUPS = 1000                       # the CSV names up to this many groups; the rest "other"
CSV_PAGE = 200                          # groups read (and written) at a time


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
    """Streamed: the header row goes out at once, then the named groups a page of
    CSV_PAGE at a time (each group's buckets, dearest group first), then "other"."""
    query = UsageQuery.of(ctx)
    span = reads.Range.of_days(query.first, query.last, ctx.tz)
    filename = f"faregate-usage-{query.group}-{query.first}-{query.last}.csv"
    return StreamingResponse(_csv_lines(ctx, query, span), media_type="text/csv; charset=utf-8",
                             headers={"content-disposition":
                                      f'attachment; filename="{filename}"'})


async def _csv_lines(ctx: Ctx, query: UsageQuery, span: reads.Range) -> AsyncIterator[str]:
    yield _line([f"{query.bucket}_start", query.group, "name", "spend_usd", "spend_nanos",
                 "requests", "failures", "prompt_tokens", "completion_tokens"])
    storage = ctx.services.storage
    if query.group == "model":      # a few names: one read of the models' buckets
        points = await reads.usage_points(ctx.services, span, query.bucket, query.group,
                                          CSV_GROUPS)
        yield "".join(_row(p, p.group or "") for p in _by_group(points))
        return
    ranked = [p.id for p in await storage.report_top_payers(query.group, CSV_GROUPS)]
    named: dict[datetime, Totals] = {}
    for at in range(0, len(ranked), CSV_PAGE):
        ids = ranked[at:at + CSV_PAGE]
        points = await storage.report_usage_of(span.start, span.end, query.bucket,
                                               span.zone.key, query.group, ids)
        names = await _names(ctx, query.group, ids)
        order = {ident: n for n, ident in enumerate(ids)}
        points.sort(key=lambda p: (order[p.group or ""], p.start))
        for p in points:
            named[p.start] = _plus(named.get(p.start, Totals()), p.totals)
        yield "".join(_row(p, names.get(p.group or "", p.group or "")) for p in points)
    rest = []
    for p in await reads.usage_points(ctx.services, span, query.bucket, None):
        left = _minus(p.totals, named.get(p.start, Totals()))
        if left.requests or left.spend_nanos:
            rest.append(UsagePoint(p.start, None, left))
    yield "".join(_row(p, "other") for p in rest)


def _by_group(points: Sequence[UsagePoint]) -> list[UsagePoint]:
    """Each group's buckets together, the dearest group first, "other" last."""
    rank = {group: n for n, (group, _) in enumerate(reads.group_totals(points))}
    return sorted(points, key=lambda p: (rank[p.group], p.start))


def _row(p: UsagePoint, name: str) -> str:
    t = p.totals
    return _line([p.start.isoformat(), p.group or "", _cell(name) if p.group else "other",
                  f"{t.spend_nanos / NANOS_PER_DOLLAR:.9f}", t.spend_nanos, t.requests,
                  t.failures, t.prompt_tokens, t.completion_tokens])


def _line(cells: Sequence[object]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()


def _plus(a: Totals, b: Totals) -> Totals:
    return Totals(*(x + y for x, y in zip(_fields(a), _fields(b), strict=True)))


def _minus(a: Totals, b: Totals) -> Totals:
    return Totals(*(x - y for x, y in zip(_fields(a), _fields(b), strict=True)))


def _fields(t: Totals) -> tuple[int, int, int, int, int]:
    return (t.spend_nanos, t.requests, t.failures, t.prompt_tokens, t.completion_tokens)


def _cell(text: str) -> str:
    """A spreadsheet must not run a cell as a formula (an alias starting with '=')."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def _names(ctx: Ctx, group: str, ids: Sequence[str]) -> dict[str, str]:
    if group != "key":
        return {}
    return await reads.key_names(ctx.services, ids)


ROUTES = [PageRoute("/usage", usage, api="/global/spend/report"),
          PageRoute("/usage.csv", usage_csv, api="/global/spend/report")]

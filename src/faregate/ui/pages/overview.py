"""Overview: spend today / 7 / 30 days, requests, the top payers, daily spend by model."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars
from faregate.ui.site import Ctx, PageRoute

TOP = 5


async def overview(ctx: Ctx) -> Response:
    services, now = ctx.services, ctx.services.now()
    spans = {label: reads.Range.last_days(now, ctx.tz, days)
             for label, days in (("Today", 1), ("Last 7 days", 7), ("Last 30 days", 30))}
    month = spans["Last 30 days"]
    sums = await asyncio.gather(*(reads.total(services, span) for span in spans.values()))
    top = dict(zip(("key", "team", "model", "end_user"), await asyncio.gather(
        *(reads.totals(services, level, month, TOP)
          for level in ("key", "team", "model", "end_user"))), strict=True))
    names = await reads.key_names(services, [t.id for t in top["key"] if t.id])
    buckets, series = await reads.daily_series(services, "model", month)
    return ctx.render("overview.html", title="Overview",
                      sums=list(zip(spans, sums, strict=True)), top=top, key_names=names,
                      chart=stacked_bars("Daily spend by model, last 30 days", buckets, series,
                                         dollars))


ROUTES = [PageRoute("/overview", overview)]

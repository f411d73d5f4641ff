"""Overview: spend, requests and error rate today / 7 / 30 days, the top payers, daily spend
by model (storage/reports.py's report_overview: one call, sums from the spend rollup)."""

from __future__ import annotations

from starlette.responses import Response

from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars
from faregate.ui.site import Ctx, PageRoute

TOP = 5


async def overview(ctx: Ctx) -> Response:
    services = ctx.services
    report = await services.storage.report_overview(services.now(), ctx.tz.key, TOP)
    span = reads.Range.last_days(services.now(), ctx.tz, 30)
    days = span.days()
    index = {d: i for i, d in enumerate(days)}
    by_model: dict[str, list[int]] = {}
    for point in report.daily_by_model:
        if point.day in index:
            by_model.setdefault(point.model, [0] * len(days))[index[point.day]] += \
                point.spend_nanos
    return ctx.render(
        "overview.html", title="Overview", report=report,
        sums=[("Today", report.today), ("Last 7 days", report.last_7_days),
              ("Last 30 days", report.last_30_days)],
        chart=stacked_bars("Daily spend by model, last 30 days",
                           [d.strftime("%b %d") for d in days], by_model, dollars))


ROUTES = [PageRoute("/overview", overview, api="/global/spend")]

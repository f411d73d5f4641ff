"""My key: a virtual key's own page (self-service): its spend against its budget, what is left,
its limits, its daily spend and its recent requests. Nothing else is reachable from a virtual
key's session: every other page is for the admin."""

from __future__ import annotations

from starlette.responses import Response

from faregate.storage.reports import LogFilters
from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars
from faregate.ui.site import Ctx, PageRoute

RECENT = 20


async def me(ctx: Ctx) -> Response:
    key = ctx.viewer_key
    if key is None:                 # the admin has no key of its own
        return ctx.redirect("/keys")
    services = ctx.services
    span = reads.Range.last_days(services.now(), ctx.tz, 30)
    daily = await reads.daily_spend(services, span, "key", key.token)
    month = await services.storage.report_totals(span.start, span.end, "key", key.token)
    recent = await services.storage.report_logs(LogFilters(api_key=key.token), None, RECENT)
    return ctx.render("me.html", title="My key", key=key, bar=reads.budget_bar(services, key),
                      month=month, recent=recent.rows,
                      chart=stacked_bars("My daily spend, last 30 days", daily.labels,
                                         daily.spend, dollars))


ROUTES = [PageRoute("/me", me, who="any")]

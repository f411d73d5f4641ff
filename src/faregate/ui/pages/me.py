"""My key: a virtual key's own page (self-service): its spend against its budget, what is left,
its limits, its daily spend and its recent requests; for a key of an internal user, that
user's keys too (as /key/list's rule lists them for it). The other pages are for those the
admin API admits to everything (site.Gate)."""

from __future__ import annotations

from starlette.responses import Response

from faregate.errors import AdminOnly
from faregate.records import KeyRecord
from faregate.storage.reports import KeyFilters, LogFilters
from faregate.ui import reads
from faregate.ui.charts import BudgetBar, stacked_bars
from faregate.ui.render import dollars
from faregate.ui.site import Ctx, PageRoute

RECENT = 20
OWN_KEYS = 50


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
                      month=month, recent=recent.rows, own_keys=await _own_keys(ctx),
                      chart=stacked_bars("My daily spend, last 30 days", daily.labels,
                                         daily.spend, dollars))


async def _own_keys(ctx: Ctx) -> list[tuple[KeyRecord, BudgetBar]] | None:
    """The keys of the viewer's user, as /key/list's rule lets this caller list them (an
    internal_user or internal_user_viewer: its own); None for a caller it admits to none (a key
    without a user, a blocked key)."""
    if ctx.caller is None:
        return None
    try:
        user_id = ctx.services.admit(ctx.caller, "/key/list").user(None)
    except AdminOnly:
        return None
    if user_id is None:             # everything: the Keys page is theirs
        return None
    page = await ctx.services.storage.report_keys(KeyFilters(user_id=user_id), None, OWN_KEYS)
    return [(row.key, reads.budget_bar(ctx.services, row.key)) for row in page.rows]


ROUTES = [PageRoute("/me", me, who="any")]

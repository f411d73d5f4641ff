"""Logs: the spend ledger, newest first (keyset pages), filtered by key, team, model, status and
time; one request's detail; a live tail that polls one indexed query for rows after the newest
one shown (storage/reports.py: report_logs, report_logs_newer, report_log)."""

from __future__ import annotations

from datetime import datetime

from starlette.responses import JSONResponse, Response

from faregate.catalog.routing import DeploymentHealth
from faregate.errors import InvalidRequest, NotFound
from faregate.keys.tokens import token_of
from faregate.storage.reports import LogFilters, LogRow
from faregate.ui import reads
from faregate.ui.render import dollars, when
from faregate.ui.site import Ctx, PageRoute

PAGE_SIZE = 50
TAIL_ROWS = 50
STATUSES = ["", "success", "error", "failure", "partial", "interrupted", "dead_letter"]
STATUS_LABELS = {"": "any", "error": "any but success", "dead_letter": "dead letter"}
MAX_ID_CHARS = 64
# What a ledger row's status says happened (gateway/request_path.py, spend/checkpoints.py).
STATUS_MEANS = {
    "success": "The upstream answered; charged for the tokens it reported.",
    "failure": "No answer: the first attempt, its retries and fallbacks all failed, or the "
               "call ended before any token. The caller got the error; nothing is charged.",
    "partial": "A stream cut short: charged for the chunks produced and the prompt at its "
               "bound.",
    "interrupted": "A stream cut by a gateway crash: charged from its last checkpoint when the "
                   "gateway started again.",
    "dead_letter": "A row the database refused, kept so its spend is not lost (see "
                   "operations: dead letters).",
}


async def logs(ctx: Ctx) -> Response:
    filters, shown = await _filters(ctx, with_time=True)
    after = reads.cursor_from(ctx.param("after"))
    page = await ctx.services.storage.report_logs(filters, after, PAGE_SIZE)
    query = {**shown, "from": ctx.param("from"), "to": ctx.param("to")}
    return ctx.render(
        "logs.html", title="Logs", recent=page.rows, shown=shown,
        statuses=[(s, STATUS_LABELS.get(s, s)) for s in STATUSES], query=query,
        newest=page.rows[0].request_id if page.rows and after is None else "",
        tail_url=ctx.url("/logs/tail", **shown),
        next_url=ctx.url("/logs", **query, after=reads.cursor_text(page.next))
        if page.next else None,
        first_url=ctx.url("/logs", **query) if after else None)


async def tail(ctx: Ctx) -> Response:
    """Rows after the row `after` (a request id; none: the newest rows), newest first, as
    JSON for ui.js: text only (the script puts them in the page with textContent, never as
    HTML). `full`: there may be more than were sent (reload the page)."""
    filters, _ = await _filters(ctx, with_time=False)
    after = ctx.param("after")
    if len(after) > MAX_ID_CHARS:
        raise InvalidRequest("'after' must be the request id of the newest row shown",
                             param="after")
    if after:
        rows = await ctx.services.storage.report_logs_newer(after, filters, TAIL_ROWS)
    else:                           # nothing shown yet: the newest rows
        rows = (await ctx.services.storage.report_logs(filters, None, TAIL_ROWS)).rows
    return JSONResponse({"rows": [_json(ctx, r) for r in rows],
                         "after": rows[0].request_id if rows else after,
                         "full": len(rows) >= TAIL_ROWS})


def _json(ctx: Ctx, r: LogRow) -> dict[str, str]:
    return {"href": ctx.url(f"/logs/{r.request_id}"), "time": when(r.start_time, ctx.tz, True),
            "key": r.key_alias or r.api_key[:8] + "…", "model": r.model, "status": r.status,
            "tokens": f"{r.prompt_tokens + r.completion_tokens:,}",
            "cost": dollars(r.spend_nanos), "latency": f"{r.latency_s:.2f} s"}


async def detail(ctx: Ctx) -> Response:
    request_id = ctx.request.path_params["request_id"]
    row = await ctx.services.storage.report_log(request_id) \
        if len(request_id) <= MAX_ID_CHARS else None
    if row is None:
        raise NotFound(f"No ledger row has request id {request_id} (rows reach the ledger "
                       "within its flush interval)", code="request_not_found")
    key = await ctx.services.storage.get_key(row.api_key)
    return ctx.render("log.html", title=f"Request {request_id}", row=row, key=key,
                      means=STATUS_MEANS.get(row.status, ""),
                      deployment=None if row.status == "success" else _deployment_now(ctx, row))


def _deployment_now(ctx: Ctx, row: LogRow) -> DeploymentHealth | None:
    """The state, on this process and now, of the deployment a failed row names (its
    upstream is `<api base>#<upstream model>`): beside the row's own error, whether that
    deployment is failing still."""
    router = ctx.services.router
    ids = [d.deployment_id for d in router.entries() if d.model_name == row.model
           and f"{d.shown_base}#{d.upstream_model}" == row.upstream]
    if len(ids) != 1:               # gone since, or ambiguous: say nothing rather than guess
        return None
    return next((h for h in router.health() if h.deployment_id == ids[0]), None)


async def _filters(ctx: Ctx, with_time: bool) -> tuple[LogFilters, dict[str, str]]:
    shown = {name: ctx.param(name) for name in ("key", "team_id", "model", "status")}
    if shown["status"] not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES[1:])}",
                             param="status")
    token = None
    if shown["key"]:
        found = await ctx.services.storage.get_key_by_alias(shown["key"])
        token = found.token if found else token_of(shown["key"])
    start = _time(ctx, "from") if with_time else None
    end = _time(ctx, "to") if with_time else None
    return LogFilters(api_key=token, team_id=shown["team_id"] or None,
                      model=shown["model"] or None, status=shown["status"] or None,
                      start=start, end=end), shown


def _time(ctx: Ctx, name: str) -> datetime | None:
    """A datetime-local field, in the viewer's zone."""
    text = ctx.param(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a time like 2026-01-31T13:00",
                             param=name) from None
    return value.replace(tzinfo=ctx.tz) if value.tzinfo is None else value


ROUTES = [
    PageRoute("/logs", logs, api="/spend/logs"),
    PageRoute("/logs/tail", tail, api="/spend/logs"),
    PageRoute("/logs/{request_id}", detail, api="/spend/logs"),
]

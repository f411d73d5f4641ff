"""Logs: the spend ledger, newest first, filtered by key, team, model, status and time; one
request's detail; a live tail that polls one indexed query for rows newer than the last seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.responses import JSONResponse, Response

from faregate.errors import InvalidRequest, NotFound
from faregate.keys.tokens import token_of
from faregate.ui import reads
from faregate.ui.render import dollars, when
from faregate.ui.site import Ctx, PageRoute

PAGE_SIZE = 50
TAIL_ROWS = 50
STATUSES = ["", "success", "failure", "partial", "interrupted", "dead_letter"]


async def logs(ctx: Ctx) -> Response:
    filters, shown = await _filters(ctx)
    start, end = _time(ctx, "from"), _time(ctx, "to")
    page = await reads.log_page(ctx.services, filters, start, end, ctx.param("after"),
                                PAGE_SIZE)
    newest = page.rows[0]["start_time"].isoformat() if page.rows else \
        ctx.services.now().isoformat()
    query = {**shown, "from": ctx.param("from"), "to": ctx.param("to")}
    return ctx.render(
        "logs.html", title="Logs", recent=page.rows, shown=shown,
        statuses=[(s, s.replace("_", " ") or "any") for s in STATUSES],
        query=query, newest=newest, tail_url=ctx.url("/logs/tail", **query),
        next_url=ctx.url("/logs", **query, after=page.next) if page.next else None,
        first_url=ctx.url("/logs", **query) if ctx.param("after") else None)


async def tail(ctx: Ctx) -> Response:
    """Rows that started after `after` (ISO time), newest first, as JSON for ui.js: text only
    (the script puts them in the page with textContent, never as HTML)."""
    filters, _ = await _filters(ctx)
    try:
        after = datetime.fromisoformat(ctx.param("after"))
    except ValueError:
        raise InvalidRequest("'after' must be an ISO time", param="after") from None
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    page = await reads.log_page(ctx.services, filters, after + timedelta(microseconds=1),
                                None, "", TAIL_ROWS)
    rows = [{"href": ctx.url(f"/logs/{r['request_id']}"),
             "time": when(r["start_time"], ctx.tz, True),
             "key": r["key_alias"] or r["api_key"][:8] + "…", "model": r["model"],
             "status": r["status"], "tokens": f"{r['prompt_tokens'] + r['completion_tokens']:,}",
             "cost": dollars(r["spend_nanos"]),
             "latency": f"{(r['end_time'] - r['start_time']).total_seconds():.2f} s"}
            for r in page.rows]
    return JSONResponse({"rows": rows, "after": page.rows[0]["start_time"].isoformat()
                         if page.rows else None})


async def detail(ctx: Ctx) -> Response:
    request_id = ctx.request.path_params["request_id"]
    row = await reads.log_row(ctx.services, request_id)
    if row is None:
        raise NotFound(f"No ledger row has request id {request_id} (rows reach the ledger "
                       "within its flush interval)", code="request_not_found")
    key = await ctx.services.storage.get_key(row["api_key"])
    return ctx.render("log.html", title=f"Request {request_id}", row=row, key=key,
                      latency=(row["end_time"] - row["start_time"]).total_seconds())


async def _filters(ctx: Ctx) -> tuple[reads.LogFilters, dict[str, str]]:
    shown = {name: ctx.param(name) for name in ("key", "team_id", "model", "status")}
    if shown["status"] not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES[1:])}",
                             param="status")
    token = None
    if shown["key"]:
        found = await ctx.services.storage.get_key_by_alias(shown["key"])
        token = found.token if found else token_of(shown["key"])
    return reads.LogFilters(token, shown["team_id"] or None, shown["model"] or None,
                            shown["status"] or None), shown


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
    PageRoute("/logs", logs),
    PageRoute("/logs/tail", tail),
    PageRoute("/logs/{request_id}", detail),
]

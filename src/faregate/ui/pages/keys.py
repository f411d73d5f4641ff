"""Keys: the table (keyset pages, search, filters), create (the plaintext shown once), a key's
page (edit, block/unblock, regenerate, delete after a confirmation). Every change is a call to
KeyAdmin, the service /key/* calls."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from starlette.responses import Response

from faregate.errors import InvalidRequest, NotFound
from faregate.keys.admin import KeySettings
from faregate.keys.tokens import token_of
from faregate.money import NANOS_PER_DOLLAR
from faregate.records import KeyRecord
from faregate.storage.reports import LogFilters
from faregate.ui import reads
from faregate.ui.charts import stacked_bars
from faregate.ui.render import dollars
from faregate.ui.site import Ctx, Form, PageRoute

PAGE_SIZE = 50
RECENT = 10
# The form's fields, in KeySettings' names (all of them "given" on an edit: empty clears).
EDITABLE = ("key_alias", "models", "max_budget", "budget_duration", "tpm_limit", "rpm_limit",
            "max_parallel_requests", "user_id", "team_id")


async def list_keys(ctx: Ctx) -> Response:
    q, team, user, state = (ctx.param("q"), ctx.param("team_id"), ctx.param("user_id"),
                            ctx.param("state"))
    after = reads.key_cursor_from(ctx.param("after"))
    page = await reads.key_page(ctx.services, q, team or None, user or None, state, after,
                                PAGE_SIZE)
    rows = [(row.key, reads.budget_bar(ctx.services, row.key), row.last_used)
            for row in page.rows]
    filters = {"q": q, "team_id": team, "user_id": user, "state": state}
    next_url = ctx.url("/keys", **filters, after=reads.cursor_text(page.next)) \
        if page.next else None
    first_url = ctx.url("/keys", **filters) if after else None
    return ctx.render("keys.html", title="Keys", rows=rows, filters=filters,
                      next_url=next_url, first_url=first_url)


async def new_form(ctx: Ctx) -> Response:
    return _form(ctx, None, Form({}))


async def create(ctx: Ctx) -> Response:
    try:
        settings, given = _settings(ctx.form)
        duration = ctx.form.get("duration") or None
        settings = replace(settings, duration=duration)
        plaintext, record = await ctx.services.keys.generate(settings, None,
                                                             given | {"duration"})
    except InvalidRequest as exc:
        return _form(ctx, None, ctx.form, exc.message, 400)
    return ctx.render("key_secret.html", title="Key created", key=record, secret=plaintext,
                      made="created")


async def show(ctx: Ctx) -> Response:
    key = await _key(ctx)
    services = ctx.services
    span = reads.Range.last_days(services.now(), ctx.tz, 30)
    daily = await reads.daily_spend(services, span, "key", key.token)
    recent = await services.storage.report_logs(LogFilters(api_key=key.token), None, RECENT)
    return ctx.render("key.html", title=key.key_alias or key.key_name, key=key,
                      bar=reads.budget_bar(services, key), recent=recent.rows,
                      chart=stacked_bars("Daily spend, last 30 days", daily.labels,
                                         daily.spend, dollars))


async def edit_form(ctx: Ctx) -> Response:
    key = await _key(ctx)
    return _form(ctx, key, _form_of(key))


async def edit(ctx: Ctx) -> Response:
    key = await _key(ctx)
    try:
        settings, given = _settings(ctx.form)
        await ctx.services.keys.update(key.token, settings, given)
    except InvalidRequest as exc:
        return _form(ctx, key, ctx.form, exc.message, 400)
    return ctx.redirect(f"/keys/{key.token}", done="saved")


async def block(ctx: Ctx) -> Response:
    key = await _key(ctx)
    blocked = ctx.form.get("blocked") == "1"
    await ctx.services.keys.set_blocked(key.token, blocked)
    return ctx.redirect(f"/keys/{key.token}", done="blocked" if blocked else "unblocked")


async def regenerate(ctx: Ctx) -> Response:
    key = await _key(ctx)
    plaintext, record = await ctx.services.keys.regenerate(key.token)
    return ctx.render("key_secret.html", title="Key regenerated", key=record, secret=plaintext,
                      made="regenerated")


async def delete_confirm(ctx: Ctx) -> Response:
    key = await _key(ctx)
    return ctx.render("confirm.html", title="Delete key",
                      question=f"Delete the key {key.key_alias or key.key_name}?",
                      detail="Its requests are refused at once. Its ledger rows stay (spend "
                             "reports keep them); the key cannot be restored.",
                      action=ctx.url(f"/keys/{key.token}/delete"), button="Delete the key",
                      back=ctx.url(f"/keys/{key.token}"))


async def delete(ctx: Ctx) -> Response:
    key = await _key(ctx)
    if ctx.form.get("confirm") != "yes":
        return ctx.redirect(f"/keys/{key.token}/delete")
    await ctx.services.keys.delete([key.token])
    return ctx.redirect("/keys", done="deleted")


async def _key(ctx: Ctx) -> KeyRecord:
    token = ctx.request.path_params["token"]
    found = await ctx.services.storage.get_key(token_of(token))
    if found is None:
        raise NotFound("No such key: it was deleted, or its secret regenerated (the key's "
                       "page moved). Find it on the Keys page", code="key_not_found")
    return found


def _settings(form: Form) -> tuple[KeySettings, set[str]]:
    """The form as KeySettings: every editable field is given (empty = none)."""
    models = [m.strip() for m in form.get("models").replace("\n", ",").split(",") if m.strip()]
    alias = form.get("key_alias") or None
    if alias is not None and len(alias) > 256:
        raise InvalidRequest("The alias may be at most 256 characters", param="key_alias")
    settings = KeySettings(
        key_alias=alias, models=models,
        max_budget=form.optional_float("max_budget", "Max budget"),
        budget_duration=form.get("budget_duration") or None,
        tpm_limit=form.optional_int("tpm_limit", "Tokens per minute"),
        rpm_limit=form.optional_int("rpm_limit", "Requests per minute"),
        max_parallel_requests=form.optional_int("max_parallel_requests", "Parallel requests"),
        user_id=form.get("user_id") or None, team_id=form.get("team_id") or None)
    return settings, set(EDITABLE)


def _form_of(key: KeyRecord) -> Form:
    budget = None if key.max_budget_nanos is None else format(
        Decimal(key.max_budget_nanos) / NANOS_PER_DOLLAR, "f")
    values = {"key_alias": key.key_alias, "models": ", ".join(key.models),
              "max_budget": budget.rstrip("0").rstrip(".") if budget and "." in budget
              else budget,
              "budget_duration": key.budget_duration, "tpm_limit": key.tpm_limit,
              "rpm_limit": key.rpm_limit, "max_parallel_requests": key.max_parallel_requests,
              "user_id": key.user_id, "team_id": key.team_id}
    return Form({k: [str(v)] for k, v in values.items() if v is not None})


def _form(ctx: Ctx, key: KeyRecord | None, form: Form, error: str | None = None,
          status: int = 200) -> Response:
    return ctx.render("key_form.html", status=status, title="Edit key" if key else "New key",
                      key=key, form=form, error=error, models=ctx.services.router.names())


ROUTES = [
    PageRoute("/keys", list_keys, api="/key/list"),
    PageRoute("/keys/new", new_form, api="/key/generate"),
    PageRoute("/keys/new", create, methods=("POST",), api="/key/generate"),
    PageRoute("/keys/{token}", show, api="/key/info"),
    PageRoute("/keys/{token}/edit", edit_form, api="/key/update"),
    PageRoute("/keys/{token}/edit", edit, methods=("POST",), api="/key/update"),
    PageRoute("/keys/{token}/block", block, methods=("POST",), api="/key/block"),
    PageRoute("/keys/{token}/regenerate", regenerate, methods=("POST",),
              api="/key/regenerate"),
    PageRoute("/keys/{token}/delete", delete_confirm, api="/key/delete"),
    PageRoute("/keys/{token}/delete", delete, methods=("POST",), api="/key/delete"),
]

"""Named budgets: the list, create and edit, through BudgetAdmin (the service /budget/* calls)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from faregate.errors import InvalidRequest
from faregate.records import BudgetRecord
from faregate.ui.pages.accounts import Field, dollars_text
from faregate.ui.site import Ctx, Form, PageRoute

FIELDS = (
    Field("budget_id", "Budget id", "Empty = a generated id.", new_only=True),
    Field("max_budget", "Max budget (USD)", "Empty = none.", "money"),
    Field("budget_duration", "Resets every", "e.g. 30d, 1mo; empty = never."),
    Field("rpm_limit", "Requests per minute", kind="number"),
    Field("tpm_limit", "Tokens per minute", kind="number"),
    Field("max_parallel_requests", "Parallel requests", kind="number"),
)


async def list_budgets(ctx: Ctx) -> Response:
    return ctx.render("budgets.html", title="Budgets", budgets=await ctx.services.budgets.all())


async def new_form(ctx: Ctx) -> Response:
    return _form(ctx, None, Form({}))


async def create(ctx: Ctx) -> Response:
    try:
        terms = _terms(ctx.form)
        record = await ctx.services.budgets.new(ctx.form.get("budget_id") or None, terms)
    except InvalidRequest as exc:
        return _form(ctx, None, ctx.form, exc.message, 400)
    return ctx.redirect("/budgets", done="saved", budget=record.budget_id)


async def edit_form(ctx: Ctx) -> Response:
    record = await ctx.services.budgets.get(ctx.request.path_params["ident"])
    return _form(ctx, record, _form_of(record))


async def edit(ctx: Ctx) -> Response:
    record = await ctx.services.budgets.get(ctx.request.path_params["ident"])
    try:
        await ctx.services.budgets.update(record.budget_id, _terms(ctx.form))
    except InvalidRequest as exc:
        return _form(ctx, record, ctx.form, exc.message, 400)
    return ctx.redirect("/budgets", done="saved")


def _terms(form: Form) -> dict[str, Any]:
    """Every term given (empty = none), in LiteLLM's names."""
    return {"max_budget": form.optional_float("max_budget", "Max budget"),
            "budget_duration": form.get("budget_duration") or None,
            "rpm_limit": form.optional_int("rpm_limit", "Requests per minute"),
            "tpm_limit": form.optional_int("tpm_limit", "Tokens per minute"),
            "max_parallel_requests": form.optional_int("max_parallel_requests",
                                                       "Parallel requests")}


def _form_of(record: BudgetRecord) -> Form:
    values = {"max_budget": None if record.max_budget_nanos is None
              else dollars_text(record.max_budget_nanos),
              "budget_duration": record.budget_duration, "rpm_limit": record.rpm_limit,
              "tpm_limit": record.tpm_limit,
              "max_parallel_requests": record.max_parallel_requests}
    return Form({k: [str(v)] for k, v in values.items() if v is not None})


def _form(ctx: Ctx, record: BudgetRecord | None, form: Form, error: str | None = None,
          status: int = 200) -> Response:
    return ctx.render("budget_form.html", status=status,
                      title="Edit budget" if record else "New budget", record=record,
                      fields=FIELDS, form=form, error=error)


ROUTES = [
    PageRoute("/budgets", list_budgets, api="/budget/list"),
    PageRoute("/budgets/new", new_form, api="/budget/new"),
    PageRoute("/budgets/new", create, methods=("POST",), api="/budget/new"),
    PageRoute("/budgets/{ident}/edit", edit_form, api="/budget/update"),
    PageRoute("/budgets/{ident}/edit", edit, methods=("POST",), api="/budget/update"),
]

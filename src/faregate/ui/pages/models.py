"""Models: every deployment the router serves (config.yaml's and the database's), its price
per token and its health on this process; add, edit and delete database models through
ModelCatalog (the service /model/* calls). Credentials are write-only: never shown back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from faregate.catalog.routing import DeploymentHealth
from faregate.config import Deployment
from faregate.errors import InvalidRequest, NotFound
from faregate.money import FEMTOS_PER_DOLLAR
from faregate.ui.site import Ctx, Form, PageRoute

STORED_MARK = "#db-"                # a stored model's deployment id: "<name>#db-<model id>"
PER_MILLION = 1_000_000


@dataclass(frozen=True)
class ModelRow:
    name: str
    deployment_id: str
    stored_id: str | None           # a database model's id (editable); None: config.yaml's
    provider: str
    upstream: str
    api_base: str
    input_per_m: float              # dollars per million tokens
    output_per_m: float
    limits: str
    health: DeploymentHealth | None
    note: str | None = None         # why a stored model is not served


def _rows(ctx: Ctx) -> list[ModelRow]:
    health = {h.deployment_id: h for h in ctx.services.router.health()}
    rows = [_row(d, health.get(d.deployment_id)) for d in ctx.services.router.entries()]
    served = {r.stored_id for r in rows if r.stored_id}
    for view in ctx.services.models.info():
        info = view["model_info"]
        if info.get("db_model") and info["id"] not in served:
            params = view["litellm_params"]
            rows.append(ModelRow(view["model_name"], "", info["id"], "", str(params.get(
                "model", "")), str(params.get("api_base", "")), 0.0, 0.0, "", None,
                ctx.services.models.unopened.get(info["id"], "not served: see the logs")))
    return sorted(rows, key=lambda r: (r.name, r.deployment_id))


def _row(d: Deployment, health: DeploymentHealth | None) -> ModelRow:
    _, mark, stored = d.deployment_id.partition(STORED_MARK)
    limits = ", ".join(f"{v:,} {n}" for n, v in (("rpm", d.rpm), ("tpm", d.tpm)) if v)
    return ModelRow(d.model_name, d.deployment_id, stored if mark else None, d.provider,
                    d.upstream_model, d.shown_base,
                    d.input_femtos * PER_MILLION / FEMTOS_PER_DOLLAR,
                    d.output_femtos * PER_MILLION / FEMTOS_PER_DOLLAR, limits, health)


async def models(ctx: Ctx) -> Response:
    return ctx.render("models.html", title="Models", rows=_rows(ctx))


async def new_form(ctx: Ctx) -> Response:
    return _form(ctx, None, Form({}))


async def create(ctx: Ctx) -> Response:
    try:
        name, params = _params(ctx.form, creating=True)
        await ctx.services.models.create(name, params, {})
    except InvalidRequest as exc:
        return _form(ctx, None, ctx.form, exc.message, 400)
    return ctx.redirect("/models", done="model_added")


async def edit_form(ctx: Ctx) -> Response:
    view = _stored(ctx)
    params = view["litellm_params"]
    fields = {"model_name": view["model_name"], "model": params.get("model"),
              "api_base": params.get("api_base"),
              "input_cost_per_token": params.get("input_cost_per_token"),
              "output_cost_per_token": params.get("output_cost_per_token")}
    return _form(ctx, view, Form({k: [str(v)] for k, v in fields.items() if v is not None}))


async def edit(ctx: Ctx) -> Response:
    view = _stored(ctx)
    try:
        name, params = _params(ctx.form, creating=False)
        await ctx.services.models.update(view["model_info"]["id"], name, params, None)
    except InvalidRequest as exc:
        return _form(ctx, view, ctx.form, exc.message, 400)
    return ctx.redirect("/models", done="saved")


async def delete_confirm(ctx: Ctx) -> Response:
    view = _stored(ctx)
    model_id = view["model_info"]["id"]
    return ctx.render("confirm.html", title="Delete model",
                      question=f"Delete the database model {view['model_name']} ({model_id})?",
                      detail="Requests for it stop being routed to this deployment at once "
                             "(on other replicas within their poll interval). Its sealed "
                             "credential is deleted with it.",
                      action=ctx.url(f"/models/{model_id}/delete"), button="Delete the model",
                      back=ctx.url("/models"))


async def delete(ctx: Ctx) -> Response:
    view = _stored(ctx)
    if ctx.form.get("confirm") != "yes":
        return ctx.redirect(f"/models/{view['model_info']['id']}/delete")
    await ctx.services.models.delete(view["model_info"]["id"])
    return ctx.redirect("/models", done="deleted")


def _stored(ctx: Ctx) -> dict[str, Any]:
    model_id = ctx.request.path_params["model_id"]
    found = [v for v in ctx.services.models.info(model_id) if v["model_info"].get("db_model")]
    if not found:
        raise NotFound(f"No database model has id {model_id} (config.yaml's models are "
                       "changed in config.yaml)", code="model_not_found")
    return found[0]


def _params(form: Form, creating: bool) -> tuple[str, dict[str, Any]]:
    """The form as LiteLLM's model_name + litellm_params. An empty credential is left out:
    on an edit that keeps the stored one."""
    name = form.get("model_name")
    if not name:
        raise InvalidRequest("Give the public model name", param="model_name")
    params: dict[str, Any] = {}
    for field in ("model", "api_base"):
        value = form.get(field)
        if value:
            params[field] = value
        elif creating and field == "model":
            raise InvalidRequest("Give the upstream model, e.g. openai/qwen2.5-7b",
                                 param="model")
    for field, label in (("input_cost_per_token", "Input price"),
                         ("output_cost_per_token", "Output price")):
        price = form.optional_float(field, label)
        if price is not None:
            params[field] = price
    secret = form.get("api_key")
    if secret:
        params["api_key"] = secret
    return name, params


def _form(ctx: Ctx, view: dict[str, Any] | None, form: Form, error: str | None = None,
          status: int = 200) -> Response:
    return ctx.render("model_form.html", status=status,
                      title="Edit model" if view else "Add a model", view=view, form=form,
                      error=error)


ROUTES = [
    PageRoute("/models", models, api="/model/info"),
    PageRoute("/models/new", new_form, api="/model/new"),
    PageRoute("/models/new", create, methods=("POST",), api="/model/new"),
    PageRoute("/models/{model_id}/edit", edit_form, api="/model/update"),
    PageRoute("/models/{model_id}/edit", edit, methods=("POST",), api="/model/update"),
    PageRoute("/models/{model_id}/delete", delete_confirm, api="/model/delete"),
    PageRoute("/models/{model_id}/delete", delete, methods=("POST",), api="/model/delete"),
]

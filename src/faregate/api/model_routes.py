"""Stored-model admin routes (who: admin_auth.py), LiteLLM's shapes: /model/new, /model/update,
/model/delete, /model/info. Handlers parse, call one ModelCatalog method, render; no secret
param is ever rendered back. /model/info answers a proxy_admin or viewer with every model, any
other key with the models it may call (its `models`, its team's, access groups, wildcards:
`Caller.may_use`, the request path's rule).
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from faregate.api.admin_auth import Access, Roles
from faregate.api.storable_input import StorableInput
from faregate.catalog.stored_models import ModelCatalog, stored_view
from faregate.config import is_wildcard, wildcard_match
from faregate.errors import InvalidRequest
from faregate.keys.auth import SPECIAL_MODEL_NAMES, Caller


class NewModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: str = Field(min_length=1, max_length=256)
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = Field(default_factory=dict)


class UpdateModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, description="or model_info.id, as LiteLLM sends it")
    model_name: str | None = Field(default=None, min_length=1, max_length=256)
    litellm_params: dict[str, Any] | None = None
    model_info: dict[str, Any] | None = None

    def model_id(self) -> str:
        found = self.id or (self.model_info or {}).get("id")
        if not isinstance(found, str) or not found:
            raise InvalidRequest("Say which model to update: model_info.id (or id), as "
                                 "GET /model/info lists it", param="model_info.id")
        return found


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)


def build_model_routes(roles: Roles, catalog: ModelCatalog) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]   # api/admin_auth.py ROUTES

    @router.post("/model/new")
    async def new(body: NewModel, _: Who) -> dict[str, Any]:
        model = await catalog.create(body.model_name, body.litellm_params, body.model_info)
        return {"model_id": model.id, **stored_view(model)}

    @router.post("/model/update")
    async def update(body: UpdateModel, _: Who) -> dict[str, Any]:
        model = await catalog.update(body.model_id(), body.model_name, body.litellm_params,
                                     body.model_info)
        return {"model_id": model.id, **stored_view(model)}

    @router.post("/model/delete")
    async def delete(body: ModelRef, _: Who) -> dict[str, Any]:
        await catalog.delete(body.id)
        return {"message": f"Model: {body.id} deleted successfully"}

    @router.get("/model/info")
    @router.get("/v1/model/info")
    async def info(who: Who, litellm_model_id: str | None = None) -> dict[str, Any]:
        found = catalog.info(litellm_model_id)
        if not who.everything:
            found = [m for m in found if visible(catalog, who.caller, m["model_name"])]
        return {"data": found}

    return router


def visible(catalog: ModelCatalog, caller: Caller, model_name: str) -> bool:
    """Whether a key may see a deployment of `model_name` on /model/info: it may call that
    name, or (a wildcard entry, "openai/*") a name its key or team lists that the pattern
    serves ("openai/gpt-4o")."""
    groups = catalog.groups(model_name)
    if caller.may_use(model_name, groups):
        return True
    if not is_wildcard(model_name):
        return False
    named = (*caller.key.models, *(caller.team_models or ()))
    return any(not is_wildcard(name) and name not in SPECIAL_MODEL_NAMES
               and wildcard_match(model_name, name) is not None
               and caller.may_use(name, groups) for name in named)

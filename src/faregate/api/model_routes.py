"""Stored-model admin routes (who: admin_auth.py), LiteLLM's shapes: /model/new, /model/update,
/model/delete, /model/info. Handlers parse, call one ModelCatalog method, render; no secret
param is ever rendered back.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from faregate.api.admin_auth import Access, Roles
from faregate.api.storable_input import StorableInput
from faregate.catalog.stored_models import ModelCatalog, stored_view
from faregate.errors import InvalidRequest


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
    async def info(_: Who, litellm_model_id: str | None = None) -> dict[str, Any]:
        return {"data": catalog.info(litellm_model_id)}

    return router

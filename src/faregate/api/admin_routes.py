"""Admin routes (FastAPI; never on the request path): /key/* (spend: api/spend_routes.py).

Handlers parse, call one service method, render. Request and response shapes follow LiteLLM's
proxy so that its runbooks and scripts work unchanged.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

import logging
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from faregate.api.admin_auth import Access, Roles
from faregate.api.admin_fields import Dollars, Limit, TermFields
from faregate.api.openapi import publish_openapi
from faregate.api.storable_input import StorableInput
from faregate.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from faregate.keys.admin import NOT_SUPPORTED_YET, KeyAdmin, KeySettings, check_supported
from faregate.keys.tokens import token_of
from faregate.storage.health import OUTAGE_ERRORS, is_outage
from faregate.storage.protocols import AdminStore
from faregate.wire.storable import INT32_MAX

log = logging.getLogger("faregate.admin")


class KeyFields(TermFields):
    models: list[str] | None = None
    duration: str | None = None
    key_alias: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Any] | None = None
    model_rpm_limit: dict[str, Limit] | None = None
    model_tpm_limit: dict[str, Limit] | None = None
    aliases: dict[Annotated[str, Field(max_length=256)],
                  Annotated[str, Field(max_length=256)]] | None = Field(default=None,
                                                                         max_length=100)
    blocked: bool | None = None
    soft_budget: Dollars | None = None
    tags: list[Annotated[str, Field(max_length=256)]] | None = Field(default=None,
                                                                   max_length=100)
    key_type: str | None = None             # accepted values only (check_supported)
    send_invite_email: bool | None = None
    user_id: str | None = Field(default=None, max_length=256)
    team_id: str | None = Field(default=None, max_length=256)
    budget_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        """LiteLLM's fields faregate does not enforce: a 400 naming the field, or (a value
        that asks for nothing) dropped."""
        if isinstance(data, dict):
            check_supported(data)
            return {k: v for k, v in data.items() if k not in NOT_SUPPORTED_YET}
        return data

    def settings(self) -> KeySettings:
        return KeySettings(**{n: getattr(self, n) for n in KeySettings.__dataclass_fields__})

    def given(self) -> set[str]:
        return set(self.model_fields_set) & set(KeySettings.__dataclass_fields__)


class GenerateKey(KeyFields):
    key: str | None = Field(default=None, description="A custom key value (sk-...)")


class UpdateKey(KeyFields):
    key: str


class KeyRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str


class RegenerateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str | None = None
    new_key: str | None = None


class DeleteKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[str] | None = None
    key_aliases: list[str] | None = None


def build_admin_app(roles: Roles, keys: KeyAdmin, storage: AdminStore) -> FastAPI:
    app = FastAPI(title="faregate admin API", version="1",
                  docs_url=None, redoc_url=None)
    app.router.route_class = StorableInput     # unstorable input is a 400 on every route

    Who = Annotated[Access, Depends(roles.access)]    # api/admin_auth.py ROUTES

    @app.post("/key/generate")
    async def generate(body: GenerateKey, who: Who) -> dict[str, Any]:
        given = body.given()
        owner = await who.new_key(body.settings(), given)
        if owner != body.user_id:
            body, given = body.model_copy(update={"user_id": owner}), given | {"user_id"}
        key, record = await keys.generate(body.settings(), body.key, given)
        return {"key": key, **keys.view(record)}

    @app.get("/key/info")
    async def info(who: Who, key: str | None = None) -> dict[str, Any]:
        if who.everything and key is None:
            raise InvalidRequest("Pass ?key=sk-... (or the key's hash)", param="key")
        record = await who.key(await storage.get_key(token_of(key) if key
                                                     else who.caller.key.token))
        return {"key": record.token, "info": keys.view(record)}

    @app.post("/key/update")
    async def update(body: UpdateKey, who: Who) -> dict[str, Any]:
        token = token_of(body.key)
        await who.change_key(await storage.get_key(token), body.given())
        return keys.view(await keys.update(token, body.settings(), body.given()))

    @app.post("/key/delete")
    async def delete(body: DeleteKeys, who: Who) -> dict[str, Any]:
        found = [r for r in [await storage.get_key(token_of(k)) for k in body.keys or []]
                 + [await storage.get_key_by_alias(a) for a in body.key_aliases or []]
                 if r is not None]
        if not found:
            raise NotFound("None of the given keys exist", code="key_not_found")
        await who.keys(found)          # all of them the caller's, or none is deleted
        deleted = await keys.delete([r.token for r in found])
        if not deleted:
            raise NotFound("None of the given keys exist", code="key_not_found")
        return {"deleted_keys": deleted}

    @app.get("/key/list")
    async def list_keys(who: Who, page: Annotated[int, Query(ge=1, le=INT32_MAX)] = 1,
                        size: Annotated[int, Query(ge=1, le=1000)] = 100,
                        return_full_object: bool = False, user_id: str | None = None,
                        team_id: str | None = None) -> dict[str, Any]:
        if team_id is not None and not who.everything:
            await who.team(team_id)     # a team the caller is in (or administers)
        else:
            user_id = who.user(user_id)
        records, total = await keys.list(page, size, user_id, team_id)
        return {"keys": [keys.view(r) if return_full_object else r.token for r in records],
                "total_count": total, "current_page": page,
                "total_pages": (total + size - 1) // size}

    @app.post("/key/regenerate")
    async def regenerate(body: RegenerateKey, who: Who) -> dict[str, Any]:
        if not body.key:
            raise InvalidRequest("Pass the key to regenerate as 'key'", param="key")
        await who.key(await storage.get_key(token_of(body.key)))
        new, record = await keys.regenerate(token_of(body.key), body.new_key)
        return {"key": new, **keys.view(record)}

    @app.post("/key/{key}/regenerate")
    async def regenerate_path(key: str, who: Who,
                              body: RegenerateKey | None = None) -> dict[str, Any]:
        await who.key(await storage.get_key(token_of(key)))
        new, record = await keys.regenerate(token_of(key), body.new_key if body else None)
        return {"key": new, **keys.view(record)}

    @app.post("/key/block")
    async def block(body: KeyRef, _: Who) -> dict[str, Any]:
        return keys.view(await keys.set_blocked(token_of(body.key), True))

    @app.post("/key/unblock")
    async def unblock(body: KeyRef, _: Who) -> dict[str, Any]:
        return keys.view(await keys.set_blocked(token_of(body.key), False))

    _install_error_handlers(app)
    publish_openapi(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def render(exc: GatewayError) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json",
                        headers=exc.headers)

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors())
        return render(InvalidRequest(f"Invalid request: {problems}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return render(NotFound("No such route. The OpenAI routes live under /v1; admin "
                                   "routes under /key, /model, /spend, /global, /health"))
        if exc.status_code == 405:
            return render(MethodNotAllowed(request.method, request.url.path,
                                           (exc.headers or {}).get("Allow", "")))
        if exc.status_code == 400:      # FastAPI could not read the body at all
            return render(InvalidRequest("The request body could not be read as JSON (not "
                                         "JSON, not UTF-8, or nested too deep); send a JSON "
                                         "object"))
        error = GatewayError(str(exc.detail))
        error.status, error.type = exc.status_code, "invalid_request_error"
        return render(error)

    # Registered per class (not only under Exception, whose handler Starlette runs and then
    # re-raises, which drops the keep-alive connection): a database outage is a 503.
    async def database_error(_: Request, exc: Exception) -> Response:
        if not is_outage(exc):
            log.error("unexpected database error in an admin route", exc_info=exc)
            return render(GatewayError("Internal error in the gateway; see its logs"))
        return render(ServiceUnavailable(
            "The database is unreachable; admin changes need it. Retry when "
            "/health/readiness reports db: connected", code="database_unavailable"))

    for outage in OUTAGE_ERRORS:
        app.add_exception_handler(outage, database_error)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error in an admin route")
        return render(GatewayError("Internal error in the gateway; see its logs"))

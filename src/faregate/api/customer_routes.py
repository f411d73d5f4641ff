"""End-user (customer) admin routes (who: admin_auth.py), LiteLLM's shapes: /customer/new, /info,
/update, /delete, /list, /block, /unblock, and the same under /end_user/ (LiteLLM's older
names, same handlers). Handlers parse, call one CustomerAdmin method, render.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from faregate.accounts.customers import CustomerAdmin
from faregate.api.admin_auth import Access, Roles
from faregate.api.admin_fields import Id, TermFields, Unsupported
from faregate.api.storable_input import StorableInput
from faregate.errors import InvalidRequest
from faregate.storage.protocols import PageAfter

# LiteLLM's customer fields faregate does not implement, and why
NOT_SUPPORTED: dict[str, str] = {
    "allowed_model_region": "region-restricted routing is not offered",
    "default_model": "a customer's default model is not offered; the request names its model",
    "model_max_budget": "per-model budgets are not enforced yet",
    "soft_budget": "faregate sends no soft-budget alerts",
    "spend": "a customer's spend is the sum of its ledger rows; it cannot be set",
    "budget_reset_at": "the period ends budget_duration after it starts",
    "object_permission": "per-customer MCP/vector-store permissions are not offered",
}


class CustomerFields(TermFields, Unsupported):
    unsupported = NOT_SUPPORTED

    alias: str | None = Field(default=None, max_length=256)
    blocked: bool | None = None
    budget_id: Id | None = None
    metadata: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        names = {"alias", "blocked", "budget_id", "metadata"}
        return {**self.terms(),
                **{n: getattr(self, n) for n in self.model_fields_set if n in names}}


class CustomerRef(CustomerFields):
    user_id: Id = Field(description="the end user's id (a request's `user`)")


class CustomerIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: list[Id] = Field(min_length=1, max_length=1000)


def build_customer_routes(roles: Roles, customers: CustomerAdmin) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]   # api/admin_auth.py ROUTES

    async def new(body: CustomerRef, _: Who) -> dict[str, Any]:
        return customers.view(await customers.new(body.user_id, body.fields()))

    async def info(_: Who, end_user_id: Annotated[str, Query(min_length=1,
                                                                 max_length=256)]
                   ) -> dict[str, Any]:
        return customers.view(await customers.info(end_user_id))

    async def update(body: CustomerRef, _: Who) -> dict[str, Any]:
        return customers.view(await customers.update(body.user_id, body.fields()))

    async def delete(body: CustomerIds, _: Who) -> dict[str, Any]:
        return {"deleted_customers": await customers.delete(body.user_ids)}

    async def list_customers(_: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                             after: Annotated[str | None, Query(max_length=256)] = None
                             ) -> list[dict[str, Any]]:
        """Oldest first; `after`: the last user_id of the previous page."""
        start = None
        if after is not None:
            last = await customers.info(after)
            if last.created_at is None:
                raise InvalidRequest("'after' names a customer without a creation time",
                                     param="after")
            start = PageAfter(last.created_at, last.end_user_id)
        page = await customers.page(start, limit)
        return [customers.view(r) for r in page.items]

    async def block(body: CustomerIds, _: Who) -> dict[str, Any]:
        done = await customers.set_blocked(body.user_ids, True)
        return {"blocked_users": [customers.view(r) for r in done]}

    async def unblock(body: CustomerIds, _: Who) -> dict[str, Any]:
        done = await customers.set_blocked(body.user_ids, False)
        return {"unblocked_users": [customers.view(r) for r in done]}

    for prefix in ("/customer", "/end_user"):
        router.add_api_route(f"{prefix}/new", new, methods=["POST"])
        router.add_api_route(f"{prefix}/info", info, methods=["GET"])
        router.add_api_route(f"{prefix}/update", update, methods=["POST"])
        router.add_api_route(f"{prefix}/delete", delete, methods=["POST"])
        router.add_api_route(f"{prefix}/list", list_customers, methods=["GET"])
        router.add_api_route(f"{prefix}/block", block, methods=["POST"])
        router.add_api_route(f"{prefix}/unblock", unblock, methods=["POST"])
    return router

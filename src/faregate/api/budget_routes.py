"""Named-budget admin routes (who: admin_auth.py), LiteLLM's shapes: /budget/new, /budget/info,
/budget/update, /budget/delete, /budget/list. Handlers parse, call one BudgetAdmin method,
render.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, model_validator

from faregate.accounts.budgets import BudgetAdmin
from faregate.accounts.terms import TERM_FIELDS, refuse_unsupported
from faregate.api.admin_auth import Access, Roles
from faregate.api.storable_input import StorableInput
from faregate.wire.storable import INT32_MAX, MAX_BUDGET_DOLLARS

Id = Annotated[str, Field(min_length=1, max_length=256)]

# LiteLLM's budget fields faregate does not implement, and why
NOT_SUPPORTED: dict[str, str] = {
    "soft_budget": "faregate sends no soft-budget alerts",
    "model_max_budget": "per-model budgets are not enforced yet",
    "budget_reset_at": "each payer naming a budget keeps its own period, from its own "
                       "budget_duration",
}


class BudgetTerms(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_budget: float | None = Field(default=None, ge=0, le=MAX_BUDGET_DOLLARS)
    budget_duration: str | None = Field(default=None, max_length=64)
    tpm_limit: int | None = Field(default=None, ge=0, le=INT32_MAX)
    rpm_limit: int | None = Field(default=None, ge=0, le=INT32_MAX)
    max_parallel_requests: int | None = Field(default=None, ge=0, le=INT32_MAX)

    @model_validator(mode="before")
    @classmethod
    def _supported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            refuse_unsupported(data, NOT_SUPPORTED)
            return {k: v for k, v in data.items() if k not in NOT_SUPPORTED}
        return data

    def terms(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TERM_FIELDS
                if name in self.model_fields_set}


class NewBudget(BudgetTerms):
    budget_id: Id | None = None


class UpdateBudget(BudgetTerms):
    budget_id: Id


class BudgetIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budgets: list[Id] = Field(min_length=1, max_length=1000)


class BudgetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Id


def build_budget_routes(roles: Roles, budgets: BudgetAdmin) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]   # api/admin_auth.py ROUTES

    @router.post("/budget/new")
    async def new(body: NewBudget, _: Who) -> dict[str, Any]:
        return budgets.view(await budgets.new(body.budget_id, body.terms()))

    @router.post("/budget/info")
    async def info(body: BudgetIds, _: Who) -> list[dict[str, Any]]:
        return [budgets.view(r) for r in await budgets.info(body.budgets)]

    @router.post("/budget/update")
    async def update(body: UpdateBudget, _: Who) -> dict[str, Any]:
        return budgets.view(await budgets.update(body.budget_id, body.terms()))

    @router.post("/budget/delete")
    async def delete(body: BudgetRef, _: Who) -> dict[str, Any]:
        return budgets.view(await budgets.delete(body.id))

    @router.get("/budget/list")
    async def list_budgets(_: Who) -> list[dict[str, Any]]:
        return [budgets.view(r) for r in await budgets.all()]

    return router

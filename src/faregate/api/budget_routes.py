"""Named-budget admin routes (who: admin_auth.py), LiteLLM's shapes: /budget/new, /budget/info,
/budget/update, /budget/delete, /budget/list. Handlers parse, call one BudgetAdmin method,
render.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from faregate.accounts.budgets import BudgetAdmin
from faregate.api.admin_auth import Access, Roles
from faregate.api.admin_fields import Id, TermFields, Unsupported
from faregate.api.storable_input import StorableInput

# LiteLLM's budget fields faregate does not implement, and why
NOT_SUPPORTED: dict[str, str] = {
    "soft_budget": "faregate sends no soft-budget alerts",
    "model_max_budget": "per-model budgets are not enforced yet",
    "budget_reset_at": "each payer naming a budget keeps its own period, from its own "
                       "budget_duration",
}


class BudgetTerms(TermFields, Unsupported):
    unsupported = NOT_SUPPORTED


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

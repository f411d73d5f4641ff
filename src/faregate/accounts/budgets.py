"""Named budgets: the business of /budget/* (the handlers only parse and render).

A named budget holds terms (max budget, duration, TPM, RPM, parallel requests) that every key,
user, team, organization and end user naming it by budget_id falls back to where its own are
null. A change to a budget's terms is a change to each of them: admission is told per payer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from faregate.accounts.changes import PayerChanges
from faregate.accounts.terms import iso, record_terms, terms_view
from faregate.admission.demand import key_scope
from faregate.errors import InvalidRequest, NotFound
from faregate.records import BudgetRecord
from faregate.storage.protocols import DuplicateId, HierarchyStore, Page, PageAfter, scope

_PAGE = 500


class BudgetAdmin:
    def __init__(self, storage: HierarchyStore, changes: PayerChanges,
                 now: Callable[[], datetime]) -> None:
        self._storage = storage
        self._changes = changes
        self._now = now

    async def new(self, budget_id: str | None, terms: Mapping[str, Any]) -> BudgetRecord:
        now = self._now()
        fields = record_terms(terms, now)
        fields.pop("budget_reset_at", None)     # each payer keeps its own period
        record = BudgetRecord(budget_id or str(uuid.uuid4()), created_at=now, updated_at=now,
                              **fields)
        try:
            await self._storage.insert_budget(record)
        except DuplicateId:
            raise InvalidRequest(f"Budget {record.budget_id!r} already exists; pick another "
                                 "budget_id or call /budget/update", param="budget_id",
                                 code="budget_exists") from None
        return record

    async def info(self, budget_ids: Collection[str]) -> list[BudgetRecord]:
        """Every budget named; a 404 naming those that do not exist."""
        found = [await self._storage.get_budget(b) for b in budget_ids]
        missing = [b for b, r in zip(budget_ids, found, strict=True) if r is None]
        if missing:
            raise NotFound(f"No budget {', '.join(missing)}", code="budget_not_found")
        return [r for r in found if r is not None]

    async def get(self, budget_id: str) -> BudgetRecord:
        return (await self.info([budget_id]))[0]

    async def update(self, budget_id: str, terms: Mapping[str, Any]) -> BudgetRecord:
        await self.get(budget_id)
        fields = record_terms(terms, self._now())
        fields.pop("budget_reset_at", None)
        record = await self._storage.update_budget(budget_id, fields)
        if record is None:
            raise NotFound(f"Budget {budget_id} was deleted meanwhile",
                           code="budget_not_found")
        # Each payer's period end is its own (its row's budget_reset_at): admission reads the
        # payer again rather than being handed an end here.
        async for payer_scope in self.payers_of(budget_id):
            await self._changes.changed(payer_scope)
        return record

    async def delete(self, budget_id: str) -> BudgetRecord:
        """Refused while anything names the budget: its payers would silently lose terms."""
        record = await self.get(budget_id)
        async for payer_scope in self.payers_of(budget_id):
            raise InvalidRequest(
                f"Budget {budget_id} is still used by {payer_scope} (and maybe others); "
                "give them another budget_id (or null) first", param="id",
                code="budget_in_use")
        await self._storage.delete_budget(budget_id)
        return record

    async def all(self) -> list[BudgetRecord]:
        out: list[BudgetRecord] = []
        after: PageAfter | None = None
        while True:
            page = await self._storage.list_budgets(after, _PAGE)
            out.extend(page.items)
            if page.next_after is None:
                return out
            after = page.next_after

    async def payers_of(self, budget_id: str) -> AsyncIterator[str]:
        """The scope of every key, user, team, organization and end user naming the budget."""
        s = self._storage
        by_budget = {"budget_id": budget_id}
        sources: list[tuple[Callable[..., Awaitable[Page[Any]]], Callable[[Any], str]]] = [
            (s.list_keys_page, lambda r: key_scope(r.token)),
            (s.list_users, lambda r: scope("user", r.user_id)),
            (s.list_teams, lambda r: scope("team", r.team_id)),
            (s.list_organizations, lambda r: scope("org", r.organization_id)),
            (s.list_end_users, lambda r: scope("end_user", r.end_user_id)),
        ]
        for list_page, scope_of in sources:
            after: PageAfter | None = None
            while True:
                page = await list_page(by_budget, after, _PAGE)
                for record in page.items:
                    yield scope_of(record)
                if page.next_after is None:
                    break
                after = page.next_after

    @staticmethod
    def view(record: BudgetRecord) -> dict[str, Any]:
        """LiteLLM's LiteLLM_BudgetTable shape."""
        terms = terms_view(record)
        terms.pop("budget_reset_at")
        return {"budget_id": record.budget_id, **terms, "soft_budget": None,
                "model_max_budget": None, "budget_reset_at": None,
                "created_at": iso(record.created_at), "updated_at": iso(record.updated_at)}


async def require_budget(storage: HierarchyStore, budget_id: str | None) -> None:
    """A budget_id given to a payer must name a budget (else its terms would silently be
    nothing)."""
    if budget_id is not None and await storage.get_budget(budget_id) is None:
        raise InvalidRequest(f"No budget {budget_id!r}; create it with /budget/new first",
                             param="budget_id", code="budget_not_found")

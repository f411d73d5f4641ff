"""EndUsers: the end users (customers) requests are made for, cached like keys.

An end user is named by the caller (a header or the body's `user`), checked by the storable
rule, and created on first use with the configured default budget (LiteLLM's
`max_end_user_budget_id`). A hit costs a dict lookup; entries expire after `ttl_s` so that an
admin's change made elsewhere (a block, a new budget) is picked up, and the table is bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from faregate.records import BudgetRecord, EndUserRecord, with_budget_terms

# Past this many end users the table starts over: a bound on memory (a miss costs one query).
MAX_END_USERS = 100_000


class EndUserStore(Protocol):
    async def get_or_create_end_user(self, end_user_id: str,
                                     budget_id: str | None = None) -> EndUserRecord: ...

    async def get_budget(self, budget_id: str) -> BudgetRecord | None: ...


class EndUsers:
    def __init__(self, storage: EndUserStore, clock: Callable[[], float], ttl_s: float,
                 default_budget_id: str | None = None) -> None:
        self._storage = storage
        self._clock = clock
        self._ttl_s = ttl_s
        self._default_budget_id = default_budget_id
        self._known: dict[str, tuple[EndUserRecord, float]] = {}

    async def get(self, end_user_id: str) -> EndUserRecord:
        """The end user (its null terms filled from its named budget), created if new."""
        now = self._clock()
        hit = self._known.get(end_user_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await self._storage.get_or_create_end_user(end_user_id,
                                                            self._default_budget_id)
        if record.budget_id is not None:
            budget = await self._storage.get_budget(record.budget_id)
            if budget is not None:
                record = with_budget_terms(record, {budget.budget_id: budget}) or record
        if len(self._known) >= MAX_END_USERS:
            self._known.clear()
        self._known[end_user_id] = (record, now + self._ttl_s)
        return record

    def forget(self, end_user_id: str) -> None:
        self._known.pop(end_user_id, None)

    def forget_payer(self, scope: str) -> None:
        """An admin changed the payer: if it is an end user, read it again on next use."""
        level, _, end_user_id = scope.partition(":")
        if level == "end_user":
            self.forget(end_user_id)


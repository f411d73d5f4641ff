"""EndUsers: the end users (customers) requests are made for, cached like keys.

An end user is named by the caller (a header or the body's `user`), checked by the storable
rule, and created on first use with the configured default budget (LiteLLM's
`max_end_user_budget_id`). A hit costs a dict lookup; entries expire after `ttl_s` so that an
admin's change made elsewhere (a block, a new budget) is picked up, and the table is bounded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from faregate.errors import ServiceUnavailable
from faregate.keys.shared_reads import SharedReads
from faregate.records import BudgetRecord, EndUserRecord, with_budget_terms
from faregate.storage.health import is_outage

# Past this many end users the table starts over: a bound on memory (a miss costs one query).
MAX_END_USERS = 100_000


class EndUserStore(Protocol):
    async def get_or_create_end_user(self, end_user_id: str,
                                     budget_id: str | None = None) -> EndUserRecord: ...

    async def get_budget(self, budget_id: str) -> BudgetRecord | None: ...


class EndUsers:
    def __init__(self, storage: EndUserStore, clock: Callable[[], float], ttl_s: float,
                 default_budget_id: str | None = None,
                 versions: Callable[[str], Awaitable[str]] | None = None) -> None:
        """`versions` (Redis mode): a payer's version by scope, read before its row."""
        self._storage = storage
        self._clock = clock
        self._ttl_s = ttl_s
        self._default_budget_id = default_budget_id
        self._versions = versions
        self._known: dict[str, tuple[EndUserRecord, str, float]] = {}
        self._reads: SharedReads[str, tuple[EndUserRecord, str]] = SharedReads()

    async def get(self, end_user_id: str) -> tuple[EndUserRecord, str]:
        """The end user (its null terms filled from its named budget), created if new, and
        its version. The database unreachable: the copy this process has, else a 503."""
        now = self._clock()
        hit = self._known.get(end_user_id)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        return await self._reads.read(end_user_id, lambda: self._get(end_user_id, hit, now))

    async def _get(self, end_user_id: str, hit: tuple[EndUserRecord, str, float] | None,
                   now: float) -> tuple[EndUserRecord, str]:
        try:
            version = "0" if self._versions is None else \
                await self._versions(f"end_user:{end_user_id}")
            record = await self._read(end_user_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            if hit is not None:
                return hit[0], hit[1]
            raise ServiceUnavailable(
                "The database is unreachable and this end user has not been seen by this "
                "gateway replica, so its budget cannot be checked; retry shortly",
                code="database_unavailable") from None
        if len(self._known) >= MAX_END_USERS:
            self._known.clear()
        self._known[end_user_id] = (record, version, now + self._ttl_s)
        return record, version

    async def _read(self, end_user_id: str) -> EndUserRecord:
        record = await self._storage.get_or_create_end_user(end_user_id,
                                                            self._default_budget_id)
        if record.budget_id is not None:
            budget = await self._storage.get_budget(record.budget_id)
            if budget is not None:
                record = with_budget_terms(record, {budget.budget_id: budget}) or record
        return record

    def forget(self, end_user_id: str) -> None:
        self._known.pop(end_user_id, None)
        self._reads.forget(end_user_id)

    def forget_payer(self, scope: str) -> None:
        """An admin changed the payer: if it is an end user, read it again on next use."""
        level, _, end_user_id = scope.partition(":")
        if level == "end_user":
            self.forget(end_user_id)


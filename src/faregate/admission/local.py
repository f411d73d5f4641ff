"""Admission within one process: exact, because each decision runs with no await inside it.

Used without Redis (one process, SQLite or Postgres). Rate limits and parallel slots (every
payer's) refuse at once; a budget that other requests' reservations stand in the way of (on
any payer) waits for them to settle.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from faregate.admission.budgets import Budgets, Grant
from faregate.admission.demand import Admitted, Demand, ratelimit_headers
from faregate.admission.refusals import rate_limited
from faregate.admission.windows import SlidingWindow
from faregate.errors import BudgetExceeded, RateLimited
from faregate.records import KeyRecord


class LocalAdmission:
    def __init__(self, budgets: Budgets, wait_timeout_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._budgets = budgets
        self._wait_timeout_s = wait_timeout_s
        self._clock = clock
        self._windows: defaultdict[str, SlidingWindow] = defaultdict(SlidingWindow)
        self._parallel: defaultdict[str, int] = defaultdict(int)    # by payer scope
        self._grants: dict[str, Grant] = {}

    async def admit(self, demand: Demand) -> Admitted:
        try:
            return await self._admit(demand)
        except (BudgetExceeded, RateLimited) as refused:
            # A 429 carries the windows' state too (nothing was booked): a budget refusal
            # all of them, a rate refusal the kind that did not refuse.
            for name, value in self._unbooked(demand, int(self._clock())):
                refused.headers.setdefault(name.decode(), value.decode())
            raise

    async def _admit(self, demand: Demand) -> Admitted:
        deadline = asyncio.get_running_loop().time() + self._wait_timeout_s
        payers = demand.payers
        while True:
            now_s = int(self._clock())
            headers = self._check(demand, now_s)          # raises RateLimited
            grant = self._budgets.try_reserve(payers, demand.least, demand.most)
            if grant is not None:
                for window in demand.windows:
                    self._windows[window.scope].add(now_s, window.cost)
                for payer in payers:
                    if payer.max_parallel_requests is not None:
                        self._parallel[payer.scope] += 1
                self._grants[demand.request_id] = grant
                return Admitted(demand, grant.nanos, now_s, headers)
            await self._budgets.wait_for_settlement(payers, deadline, demand.least)

    def _check(self, demand: Demand, now_s: int) -> list[tuple[bytes, bytes]]:
        for payer in demand.payers:
            limit = payer.max_parallel_requests
            if limit is not None and self._parallel[payer.scope] >= limit:
                raise rate_limited(None, 0, 1, payer)
        tightest: dict[bool, tuple[int, int, int]] = {}
        for window in demand.windows:
            counter = self._windows[window.scope]
            used = counter.used(now_s)
            if used + window.cost > window.limit:
                raise rate_limited(window, used, counter.reset_in(now_s) or 1)
            remaining = window.limit - used - window.cost
            if window.tokens not in tightest or remaining < tightest[window.tokens][1]:
                tightest[window.tokens] = (window.limit, remaining,
                                           counter.reset_in(now_s) or 60)
        return ratelimit_headers(tightest.get(False), tightest.get(True))

    def _unbooked(self, demand: Demand, now_s: int) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit-* headers of the tightest windows as they stand (for a refusal)."""
        tightest: dict[bool, tuple[int, int, int]] = {}
        for window in demand.windows:
            counter = self._windows[window.scope]
            remaining = window.limit - counter.used(now_s)
            if window.tokens not in tightest or remaining < tightest[window.tokens][1]:
                tightest[window.tokens] = (window.limit, remaining,
                                           counter.reset_in(now_s) or 60)
        return ratelimit_headers(tightest.get(False), tightest.get(True))

    async def settle(self, admitted: Admitted, cost: int, tokens: int) -> None:
        if admitted.settled:
            return
        admitted.settled = True
        demand = admitted.demand
        grant = self._grants.pop(demand.request_id, None)
        if grant is None:
            return
        self._budgets.settle(grant, demand.payers, cost)
        for window in demand.windows:
            if window.tokens:
                self._windows[window.scope].adjust(admitted.second, tokens - window.cost)
        for payer in demand.payers:
            if payer.max_parallel_requests is not None:
                self._parallel[payer.scope] -= 1

    def period_spend(self, key: KeyRecord) -> int:
        return self._budgets.period_spend(key)

    def lifetime_spend(self, key: KeyRecord) -> int:
        return self._budgets.lifetime_spend(key)

    def forget(self, scope: str) -> None:
        self._budgets.forget(scope)

    def change_period(self, scope: str, reset_at: datetime | None) -> None:
        self._budgets.change_period(scope, reset_at)

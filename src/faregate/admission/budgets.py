"""Budgets that hold: reserve before the upstream call, settle to the real cost after.

A request reserves an upper bound of its cost against max_budget - spend - open reservations,
in one step with no await in between, so no interleaving of concurrent requests can overshoot.
When a key's open reservations are what stands in the way, a request waits for them to settle
instead of failing: a burst then uses the budget as fully as a sequence of calls would.
When the budget cannot cover the whole output a request asks for, it gets a smaller grant and
the gateway caps the upstream's max_tokens to it (see docs/budgets.md).

This store is exact within one process; admission/shared.py decides the same rule in Redis for
replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from faregate.admission import periods
from faregate.admission.refusals import budget_exceeded
from faregate.errors import BudgetExceeded
from faregate.records import KeyRecord


@dataclass(slots=True)
class Account:
    spend: int                      # lifetime spend this process knows (settled, maybe unflushed)
    period_base: int
    reset_at: datetime | None
    reserved: int = 0
    # Resolved (and dropped) at the next settlement; created only when someone waits.
    settled: asyncio.Future[None] | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    token: str
    nanos: int                      # reserved; 0 for keys without a budget


NO_BUDGET = Grant("", 0)


class Budgets:
    def __init__(self, now: Callable[[], datetime], wait_timeout_s: float,
                 on_period_start: Callable[[str, int, datetime | None], None]) -> None:
        self._now = now
        self._wait_timeout_s = wait_timeout_s
        self._on_period_start = on_period_start
        self._accounts: dict[str, Account] = {}

    def account(self, key: KeyRecord) -> Account:
        acc = self._accounts.get(key.token)
        if acc is None:
            acc = Account(key.spend_nanos, key.period_base_nanos, key.budget_reset_at)
            self._accounts[key.token] = acc
        return acc

    def period_spend(self, key: KeyRecord) -> int:
        acc = self._accounts.get(key.token)
        return acc.spend - acc.period_base if acc else key.period_spend_nanos

    def lifetime_spend(self, key: KeyRecord) -> int:
        acc = self._accounts.get(key.token)
        return acc.spend if acc else key.spend_nanos

    async def reserve(self, key: KeyRecord, least: int, most: int) -> Grant:
        """Reserve between `least` and `most` nano-dollars, or raise BudgetExceeded."""
        deadline = asyncio.get_running_loop().time() + self._wait_timeout_s
        while True:
            grant = self.try_reserve(key, least, most)
            if grant is not None:
                return grant
            await self.wait_for_settlement(key, deadline, least)

    def try_reserve(self, key: KeyRecord, least: int, most: int) -> Grant | None:
        """One atomic attempt: a grant, None if settlements in flight may make room, or
        BudgetExceeded if nothing will."""
        if key.max_budget_nanos is None:
            return NO_BUDGET
        acc = self.account(key)
        self._roll_period(key, acc)
        spent = acc.spend - acc.period_base
        available = key.max_budget_nanos - spent - acc.reserved
        if available >= least:
            granted = min(most, available)
            acc.reserved += granted
            return Grant(key.token, granted)
        if acc.reserved == 0 or key.max_budget_nanos - spent < least:
            raise self._exceeded(key, acc, least)
        return None

    async def wait_for_settlement(self, key: KeyRecord, deadline: float, least: int) -> None:
        """Wait until a reservation on the key settles; BudgetExceeded at the deadline."""
        acc = self.account(key)
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise self._exceeded(key, acc, least)
        if acc.settled is None:
            acc.settled = asyncio.get_running_loop().create_future()
        await asyncio.wait((acc.settled,), timeout=left)

    @staticmethod
    def _exceeded(key: KeyRecord, acc: Account, least: int) -> BudgetExceeded:
        return budget_exceeded(acc.spend - acc.period_base, key.max_budget_nanos or 0,
                               acc.reserved, least)

    def settle(self, grant: Grant, key: KeyRecord, cost: int) -> None:
        """Release a reservation and book the real cost (also for keys without a budget)."""
        acc = self.account(key)
        acc.reserved -= grant.nanos
        acc.spend += cost
        if acc.settled is not None:
            acc.settled.set_result(None)
            acc.settled = None

    def forget(self, token: str) -> None:
        self._accounts.pop(token, None)

    def credit(self, token: str, nanos: int) -> None:
        """Spend another process left behind reached the database: a key this process is
        already admitting counts it too (one not seen yet reads it with its row)."""
        acc = self._accounts.get(token)
        if acc is not None:
            acc.spend += nanos

    def _roll_period(self, key: KeyRecord, acc: Account) -> None:
        if key.budget_duration is None or acc.reset_at is None:
            return
        now = self._now()
        if now < acc.reset_at:
            return
        reset_at = periods.next_reset(acc.reset_at, key.budget_duration, now)
        acc.period_base, acc.reset_at = acc.spend, reset_at
        self._on_period_start(key.token, acc.period_base, reset_at)

    def change_period(self, key: KeyRecord) -> None:
        """Admin changed budget_duration: start a new period from the record's values."""
        acc = self._accounts.get(key.token)
        if acc is not None:
            acc.reset_at = key.budget_reset_at

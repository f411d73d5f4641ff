"""Budgets that hold at every level: reserve before the upstream call, settle to the real cost
after.

A request reserves an upper bound of its cost on every payer with a budget (its key, and its
user, team, team membership, organization, end user when they have budgets): max_budget -
period spend - open reservations must leave at least `least` on EVERY one of them, the grant is
the smallest room among them (at most `most`), and it is booked on all of them in one step with
no await in between, so no interleaving of concurrent requests can overshoot any level.
When open reservations are what stands in the way, a request waits for them to settle instead
of failing: a burst then uses a budget as fully as a sequence of calls would. When a budget
cannot cover the whole output a request asks for, it gets a smaller grant and the gateway caps
the upstream's max_tokens to it (see docs/budgets.md).

This store is exact within one process; admission/shared.py decides the same rule in Redis for
replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from faregate.admission import periods
from faregate.admission.demand import KEY, Payer, key_payer, key_scope
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
    nanos: int                      # reserved on each account; 0 when no payer has a budget
    # The accounts it is booked on (those of the payers with a budget). Released on these very
    # accounts, even if a payer's account was forgotten (re-read) meanwhile.
    accounts: tuple[Account, ...] = ()


NO_BUDGET = Grant(0)


class Budgets:
    def __init__(self, now: Callable[[], datetime], wait_timeout_s: float,
                 on_period_start: Callable[[str, int, datetime | None], None]) -> None:
        """`on_period_start(scope, period_base, reset_at)`: a payer's new period, to record."""
        self._now = now
        self._wait_timeout_s = wait_timeout_s
        self._on_period_start = on_period_start
        self._accounts: dict[str, Account] = {}

    def account_of(self, payer: Payer) -> Account:
        acc = self._accounts.get(payer.scope)
        if acc is None:
            acc = Account(payer.spend_nanos, payer.period_base_nanos, payer.budget_reset_at)
            self._accounts[payer.scope] = acc
        return acc

    def account(self, key: KeyRecord) -> Account:
        """The key's account."""
        return self.account_of(key_payer(key))

    def period_spend(self, key: KeyRecord) -> int:
        acc = self._accounts.get(key_scope(key.token))
        return acc.spend - acc.period_base if acc else key.period_spend_nanos

    def lifetime_spend(self, key: KeyRecord) -> int:
        acc = self._accounts.get(key_scope(key.token))
        return acc.spend if acc else key.spend_nanos

    def reserved(self, scope: str) -> int:
        """Nano-dollars that requests in flight on this process hold on a payer (the admin
        UI's budget bars)."""
        acc = self._accounts.get(scope)
        return acc.reserved if acc else 0

    async def reserve(self, payers: tuple[Payer, ...], least: int, most: int) -> Grant:
        """Reserve between `least` and `most` nano-dollars on every payer with a budget, or
        raise BudgetExceeded naming the payer that refuses."""
        deadline = asyncio.get_running_loop().time() + self._wait_timeout_s
        while True:
            grant = self.try_reserve(payers, least, most)
            if grant is not None:
                return grant
            await self.wait_for_settlement(payers, deadline, least)

    def try_reserve(self, payers: tuple[Payer, ...], least: int, most: int) -> Grant | None:
        """One atomic attempt over all payers: a grant booked on every payer with a budget,
        None if settlements in flight may make room on those short of it, or BudgetExceeded
        (naming the first payer that nothing will make room on)."""
        granted = most
        booked: list[Account] = []
        waiting = False
        for payer in payers:
            if payer.max_budget_nanos is None:
                continue
            acc = self.account_of(payer)
            self._roll_period(payer, acc)
            spent = acc.spend - acc.period_base
            available = payer.max_budget_nanos - spent - acc.reserved
            if available < least:
                if acc.reserved == 0 or payer.max_budget_nanos - spent < least:
                    raise self._exceeded(payer, acc, least)
                waiting = True
            granted = min(granted, available)
            booked.append(acc)
        if waiting:
            return None
        if not booked:
            return NO_BUDGET
        for acc in booked:
            acc.reserved += granted
        return Grant(granted, tuple(booked))

    async def wait_for_settlement(self, payers: tuple[Payer, ...], deadline: float,
                                  least: int) -> None:
        """Wait until a reservation settles on a payer whose reservations leave it short of
        `least`; BudgetExceeded (naming that payer) at the deadline."""
        short = [(payer, self.account_of(payer)) for payer in payers
                 if payer.max_budget_nanos is not None and self._room(payer) < least]
        if not short:
            return                  # a settlement came first: decide again
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            payer, acc = short[0]
            raise self._exceeded(payer, acc, least)
        loop = asyncio.get_running_loop()
        for _, acc in short:
            if acc.settled is None:
                acc.settled = loop.create_future()
        await asyncio.wait([acc.settled for _, acc in short if acc.settled is not None],
                           timeout=left, return_when=asyncio.FIRST_COMPLETED)

    def _room(self, payer: Payer) -> int:
        acc = self.account_of(payer)
        return (payer.max_budget_nanos or 0) - (acc.spend - acc.period_base) - acc.reserved

    @staticmethod
    def _exceeded(payer: Payer, acc: Account, least: int) -> BudgetExceeded:
        return budget_exceeded(payer, acc.spend - acc.period_base, acc.reserved, least)

    def settle(self, grant: Grant, payers: tuple[Payer, ...], cost: int) -> None:
        """Release a reservation and book the real cost on every payer with an account: the key
        always (its spend is shown), a payer above it only if it has a budget or already had an
        account (an end user without one must not cost memory)."""
        for acc in grant.accounts:
            acc.reserved -= grant.nanos
            _wake(acc)
        for payer in payers:
            if payer.max_budget_nanos is None and payer.level != KEY:
                known = self._accounts.get(payer.scope)
                if known is not None:
                    known.spend += cost
                continue
            acc = self.account_of(payer)
            acc.spend += cost
            _wake(acc)

    def forget(self, scope: str) -> None:
        self._accounts.pop(scope, None)

    def credit(self, token: str, nanos: int) -> None:
        """Spend another process left behind reached the database: a key this process is
        already admitting counts it too (one not seen yet reads it with its row)."""
        acc = self._accounts.get(key_scope(token))
        if acc is not None:
            acc.spend += nanos

    def credit_payer(self, scope: str, nanos: int) -> None:
        """As `credit`, for a payer above the key ("team:t1", ...): rows a stopped process left
        that name it reached the database; an account this process keeps counts them too."""
        acc = self._accounts.get(scope)
        if acc is not None:
            acc.spend += nanos

    def _roll_period(self, payer: Payer, acc: Account) -> None:
        if payer.budget_duration is None or acc.reset_at is None:
            return
        now = self._now()
        if now < acc.reset_at:
            return
        reset_at = periods.next_reset(acc.reset_at, payer.budget_duration, now)
        acc.period_base, acc.reset_at = acc.spend, reset_at
        self._on_period_start(payer.scope, acc.period_base, reset_at)

    def change_period(self, scope: str, reset_at: datetime | None) -> None:
        """Admin changed budget_duration: the period now ends at `reset_at`."""
        acc = self._accounts.get(scope)
        if acc is not None:
            acc.reset_at = reset_at


def _wake(acc: Account) -> None:
    if acc.settled is not None:
        acc.settled.set_result(None)
        acc.settled = None

"""faregate.admission.budgets.Budgets: reservations that never let a key overshoot max_budget."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from faregate.admission.budgets import NO_BUDGET, Budgets
from faregate.admission.demand import Payer, key_payer, key_scope
from faregate.errors import BudgetExceeded
from faregate.records import KeyRecord

T0 = datetime(2024, 1, 1, tzinfo=UTC)
# Long enough that a test fails on its own asyncio.wait_for long before a missed wake-up
# would be rescued by the timeout.
PATIENT_S = 30.0


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta)


class Periods(list[tuple[str, int, datetime | None]]):
    def __call__(self, scope: str, base: int, reset_at: datetime | None) -> None:
        self.append((scope, base, reset_at))


def budgets(wait_timeout_s: float = PATIENT_S, clock: Clock | None = None,
            periods: Periods | None = None) -> Budgets:
    return Budgets(clock or Clock(), wait_timeout_s, periods if periods is not None else Periods())


def key(max_budget: int | None = 100, spend: int = 0, **fields: object) -> KeyRecord:
    return KeyRecord(token="t" * 64, key_name="sk-...abcd", max_budget_nanos=max_budget,
                     spend_nanos=spend, **fields)  # type: ignore[arg-type]


def of(k: KeyRecord) -> tuple[Payer, ...]:
    """The key alone as the payers of a request."""
    return (key_payer(k),)


def committed(b: Budgets, k: KeyRecord) -> int:
    """Period spend plus open reservations: what must never pass max_budget."""
    acc = b.account(k)
    return acc.spend - acc.period_base + acc.reserved


# keys without a budget


async def test_no_budget_key_gets_no_budget_grant() -> None:
    b = budgets()
    k = key(max_budget=None)
    grant = await b.reserve(of(k), 10**15, 10**18)
    assert grant is NO_BUDGET
    assert grant.nanos == 0
    b.settle(grant, of(k), 1234)                   # spend is still booked
    assert b.lifetime_spend(k) == 1234
    assert b.account(k).reserved == 0


# single reservations


async def test_full_grant_when_it_fits() -> None:
    b = budgets()
    k = key(100)
    grant = await b.reserve(of(k), 10, 40)
    assert grant.nanos == 40
    assert b.account(k).reserved == 40


async def test_partial_grant_between_least_and_most() -> None:
    b = budgets()
    k = key(100, spend=30)
    assert (await b.reserve(of(k), 10, 50)).nanos == 50
    second = await b.reserve(of(k), 10, 50)
    assert second.nanos == 20                   # all that is left, >= least, < most
    assert committed(b, k) == 100


async def test_spend_counts_from_the_period_base() -> None:
    b = budgets()
    k = key(100, spend=550, period_base_nanos=500)       # 50 spent this period
    assert (await b.reserve(of(k), 1, 1000)).nanos == 50
    assert b.period_spend(k) == 50
    assert b.lifetime_spend(k) == 550


async def test_exceeded_when_least_does_not_fit_and_nothing_is_reserved() -> None:
    b = budgets()
    k = key(100, spend=95)
    with pytest.raises(BudgetExceeded) as info:
        await b.reserve(of(k), 6, 20)
    assert info.value.message.startswith("Budget has been exceeded")
    assert info.value.status == 429
    assert b.account(k).reserved == 0                    # a refusal reserves nothing
    assert (await b.reserve(of(k), 5, 20)).nanos == 5        # exactly what is left still fits


async def test_exceeded_at_once_when_waiting_cannot_help() -> None:
    """Even when the reservations in flight settle at 0, `least` would not fit: no waiting."""
    b = budgets(wait_timeout_s=PATIENT_S)
    k = key(100, spend=60)
    await b.reserve(of(k), 30, 30)
    with pytest.raises(BudgetExceeded):
        await asyncio.wait_for(b.reserve(of(k), 41, 50), 2.0)


async def test_exhausted_budget_refuses_even_zero_cost_least() -> None:
    b = budgets()
    k = key(100, spend=120)                    # overspent (e.g. budget lowered by an admin)
    with pytest.raises(BudgetExceeded):
        await b.reserve(of(k), 0, 10)


async def test_settle_releases_and_books() -> None:
    b = budgets()
    k = key(100)
    grant = await b.reserve(of(k), 10, 60)
    b.settle(grant, of(k), 25)
    acc = b.account(k)
    assert (acc.reserved, acc.spend) == (0, 25)
    assert (await b.reserve(of(k), 1, 1000)).nanos == 75


# concurrency


async def _burst(b: Budgets, k: KeyRecord, n: int, least: int, most: int,
                 cost_of: object, seed: int) -> tuple[int, int]:
    """n concurrent requests; returns (successes, failures) and checks the invariant live."""
    rng = random.Random(seed)
    delays = [rng.uniform(0, 0.01) for _ in range(n)]
    assert k.max_budget_nanos is not None

    async def one(i: int) -> bool:
        await asyncio.sleep(delays[i] / 3)
        try:
            grant = await b.reserve(of(k), least, most)
        except BudgetExceeded:
            return False
        assert least <= grant.nanos <= most
        assert committed(b, k) <= k.max_budget_nanos
        await asyncio.sleep(delays[i])
        cost = cost_of(grant, rng)  # type: ignore[operator]
        assert 0 <= cost <= grant.nanos
        b.settle(grant, of(k), cost)
        assert committed(b, k) <= k.max_budget_nanos
        return True

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 20)
    ok = sum(results)
    return ok, n - ok


async def test_burst_exact_costs_fits_exactly_what_the_budget_allows() -> None:
    b = budgets()
    k = key(max_budget=10 * 37)
    ok, failed = await _burst(b, k, 200, 37, 37, lambda g, _r: g.nanos, seed=1)
    assert ok == 10
    assert failed == 190
    assert b.account(k).spend == 370
    assert b.account(k).reserved == 0


async def test_burst_overestimates_use_the_budget_as_fully_as_a_sequence() -> None:
    """Each request reserves 10 but costs 5: waiters get the released 5s. A sequence of
    calls fits 19 (at 95 spent, 10 no longer fits); a burst must do exactly as well."""
    b = budgets()
    k = key(max_budget=100)
    ok, _failed = await _burst(b, k, 200, 10, 10, lambda g, _r: 5, seed=2)
    assert ok == 19
    assert b.account(k).spend == 95
    assert b.account(k).reserved == 0


@pytest.mark.parametrize("seed", [3, 4, 5])
async def test_burst_random_costs_never_overshoot(seed: int) -> None:
    b = budgets()
    k = key(max_budget=1_000)
    least, most = 7, 60
    ok, failed = await _burst(b, k, 200, least, most,
                              lambda g, r: r.randint(0, g.nanos), seed=seed)
    acc = b.account(k)
    assert acc.spend <= 1_000
    assert acc.reserved == 0
    assert ok >= 1_000 // most
    if failed:
        # a request was refused only because not even `least` was left
        assert 1_000 - acc.spend < least


# waiting


async def test_waiter_wakes_when_a_reservation_settles_smaller() -> None:
    b = budgets(wait_timeout_s=PATIENT_S)
    k = key(100)
    holder = await b.reserve(of(k), 100, 100)
    waiter = asyncio.create_task(b.reserve(of(k), 30, 50))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()                              # it waits rather than fails
    b.settle(holder, of(k), 60)
    grant = await asyncio.wait_for(waiter, 2.0)
    assert grant.nanos == 40                              # what the holder left over
    assert committed(b, k) == 100


async def test_waiter_wakes_when_settle_races_its_first_wait() -> None:
    """Settling right after the waiter first yields must still wake it (no lost wake-up)."""
    b = budgets(wait_timeout_s=PATIENT_S)
    k = key(10)
    holder = await b.reserve(of(k), 10, 10)
    waiter = asyncio.create_task(b.reserve(of(k), 5, 5))
    await asyncio.sleep(0)                                # the waiter runs up to its wait
    b.settle(holder, of(k), 5)
    assert (await asyncio.wait_for(waiter, 2.0)).nanos == 5


async def test_waiter_fails_promptly_when_the_settled_cost_leaves_too_little() -> None:
    b = budgets(wait_timeout_s=PATIENT_S)
    k = key(100)
    holder = await b.reserve(of(k), 80, 80)
    waiter = asyncio.create_task(b.reserve(of(k), 30, 30))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    b.settle(holder, of(k), 80)
    with pytest.raises(BudgetExceeded):
        await asyncio.wait_for(waiter, 2.0)


async def test_many_waiters_all_woken() -> None:
    b = budgets(wait_timeout_s=PATIENT_S)
    k = key(100)
    holder = await b.reserve(of(k), 100, 100)
    waiters = [asyncio.create_task(b.reserve(of(k), 10, 10)) for _ in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    b.settle(holder, of(k), 0)
    grants = await asyncio.wait_for(asyncio.gather(*waiters), 2.0)
    assert [g.nanos for g in grants] == [10] * 5


async def test_wait_timeout_raises_budget_exceeded() -> None:
    b = budgets(wait_timeout_s=0.05)
    k = key(100)
    holder = await b.reserve(of(k), 100, 100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BudgetExceeded, match=r"^Budget has been exceeded"):
        await asyncio.wait_for(b.reserve(of(k), 10, 10), 5.0)
    assert loop.time() - started >= 0.04
    assert b.account(k).reserved == 100                   # the holder's grant is untouched
    b.settle(holder, of(k), 100)


# budget periods


def period_key(**fields: object) -> KeyRecord:
    return key(max_budget=100, spend=100, budget_duration="1d",
               budget_reset_at=T0 + timedelta(days=1), **fields)


async def test_period_reset_starts_spend_again_at_zero() -> None:
    clock, periods = Clock(), Periods()
    b = budgets(clock=clock, periods=periods)
    k = period_key()
    with pytest.raises(BudgetExceeded):
        await b.reserve(of(k), 1, 1)
    assert periods == []

    clock.advance(hours=23, minutes=59)
    with pytest.raises(BudgetExceeded):
        await b.reserve(of(k), 1, 1)
    assert periods == []

    clock.advance(minutes=1)                               # exactly at reset_at
    grant = await b.reserve(of(k), 10, 100)
    assert grant.nanos == 100                              # the whole budget again
    assert periods == [(key_scope(k.token), 100, T0 + timedelta(days=2))]
    assert b.period_spend(k) == 0
    assert b.lifetime_spend(k) == 100

    b.settle(grant, of(k), 30)
    assert b.period_spend(k) == 30
    assert b.lifetime_spend(k) == 130


async def test_period_reset_skips_missed_periods() -> None:
    clock, periods = Clock(), Periods()
    b = budgets(clock=clock, periods=periods)
    k = period_key()
    clock.advance(days=3, hours=12)
    assert (await b.reserve(of(k), 1, 1)).nanos == 1
    assert periods == [(key_scope(k.token), 100, T0 + timedelta(days=4))]
    # no second roll within the new period
    await b.reserve(of(k), 1, 1)
    assert len(periods) == 1


async def test_period_reset_keeps_reservations_in_flight() -> None:
    clock, periods = Clock(), Periods()
    b = budgets(clock=clock, periods=periods)
    k = key(max_budget=100, spend=0, budget_duration="1h",
            budget_reset_at=T0 + timedelta(hours=1))
    first = await b.reserve(of(k), 70, 70)
    clock.advance(hours=1)
    second = await b.reserve(of(k), 1, 100)
    assert second.nanos == 30                    # the 70 in flight still count
    b.settle(first, of(k), 70)
    assert periods == [(key_scope(k.token), 0, T0 + timedelta(hours=2))]
    assert committed(b, k) == 100


async def test_monthly_period() -> None:
    clock, periods = Clock(datetime(2024, 1, 31, tzinfo=UTC)), Periods()
    b = budgets(clock=clock, periods=periods)
    k = key(max_budget=100, spend=100, budget_duration="1mo",
            budget_reset_at=datetime(2024, 1, 31, tzinfo=UTC))
    await b.reserve(of(k), 1, 1)
    assert periods == [(key_scope(k.token), 100, datetime(2024, 2, 29, tzinfo=UTC))]


async def test_no_roll_without_duration_or_reset_time() -> None:
    clock, periods = Clock(), Periods()
    b = budgets(clock=clock, periods=periods)
    no_duration = key(max_budget=100, spend=100, budget_reset_at=T0)
    no_reset = KeyRecord(token="u" * 64, key_name="k", max_budget_nanos=100, spend_nanos=100,
                         budget_duration="1d")
    clock.advance(days=10)
    for k in (no_duration, no_reset):
        with pytest.raises(BudgetExceeded):
            await b.reserve(of(k), 1, 1)
    assert periods == []


async def test_change_period_uses_the_records_reset_time() -> None:
    clock, periods = Clock(), Periods()
    b = budgets(clock=clock, periods=periods)
    k = key(max_budget=100, spend=100, budget_duration="1d",
            budget_reset_at=T0 + timedelta(days=30))
    with pytest.raises(BudgetExceeded):
        await b.reserve(of(k), 1, 1)
    k = k.evolve(budget_reset_at=T0 + timedelta(hours=1))
    b.change_period(key_scope(k.token), k.budget_reset_at)
    clock.advance(hours=1)
    assert (await b.reserve(of(k), 1, 1)).nanos == 1
    assert periods == [(key_scope(k.token), 100, T0 + timedelta(days=1, hours=1))]


async def test_spend_views_before_and_after_forget() -> None:
    b = budgets()
    k = key(100, spend=40, period_base_nanos=10)
    assert (b.period_spend(k), b.lifetime_spend(k)) == (30, 40)   # from the record
    grant = await b.reserve(of(k), 5, 5)
    b.settle(grant, of(k), 5)
    assert (b.period_spend(k), b.lifetime_spend(k)) == (35, 45)
    b.forget(key_scope(k.token))
    assert (b.period_spend(k), b.lifetime_spend(k)) == (30, 40)

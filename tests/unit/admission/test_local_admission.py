"""LocalAdmission with a clock the test moves: windows slide, the next minute admits again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand, Window
from faregate.admission.local import LocalAdmission
from faregate.admission.windows import SlidingWindow
from faregate.errors import BudgetExceeded, RateLimited
from faregate.records import KeyRecord


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def admission(clock: Clock) -> LocalAdmission:
    budgets = Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None)
    return LocalAdmission(budgets, 1.0, clock)


def demand(i: int, key: KeyRecord, *windows: Window, least: int = 0, most: int = 0,
           parallel: int | None = None) -> Demand:
    if parallel is not None:
        key = key.evolve(max_parallel_requests=parallel)
    return Demand(f"r{i}", key, least, most, windows)


async def test_rpm_window_slides_and_admits_again() -> None:
    clock = Clock()
    adm = admission(clock)
    key = KeyRecord(token="k", key_name="k")
    rpm = Window("k:rpm", False, 3, 1, "rpm_limit")
    for i in range(3):
        await adm.admit(demand(i, key, rpm))
        clock.t += 10
    with pytest.raises(RateLimited) as caught:
        await adm.admit(demand(9, key, rpm))
    assert caught.value.headers["Retry-After"] == "30"    # first request leaves at t0+60
    clock.t += 30                                         # t0+60: the first one left
    await adm.admit(demand(10, key, rpm))
    with pytest.raises(RateLimited):
        await adm.admit(demand(11, key, rpm))


async def test_tpm_settles_to_real_tokens() -> None:
    clock = Clock()
    adm = admission(clock)
    key = KeyRecord(token="k", key_name="k")
    first = await adm.admit(demand(1, key, Window("k:tpm", True, 100, 80, "tpm_limit")))
    with pytest.raises(RateLimited):
        await adm.admit(demand(2, key, Window("k:tpm", True, 100, 80, "tpm_limit")))
    await adm.settle(first, 0, 20)
    await adm.admit(demand(3, key, Window("k:tpm", True, 100, 80, "tpm_limit")))


async def test_a_rate_limit_refusal_reserves_no_budget() -> None:
    adm = admission(Clock())
    key = KeyRecord(token="k", key_name="k", max_budget_nanos=100)
    rpm = Window("k:rpm", False, 1, 1, "rpm_limit")
    await adm.admit(demand(1, key, rpm, least=10, most=10))
    with pytest.raises(RateLimited):
        await adm.admit(demand(2, key, rpm, least=10, most=10))
    assert adm._budgets.account(key).reserved == 10       # only the admitted one


async def test_parallel_limit_frees_on_settle() -> None:
    adm = admission(Clock())
    key = KeyRecord(token="k", key_name="k")
    held = [await adm.admit(demand(i, key, parallel=2)) for i in range(2)]
    with pytest.raises(RateLimited) as caught:
        await adm.admit(demand(3, key, parallel=2))
    assert caught.value.code == "max_parallel_requests"
    await adm.settle(held[0], 0, 0)
    await adm.admit(demand(4, key, parallel=2))


async def test_concurrent_admissions_never_pass_budget_or_limit() -> None:
    clock = Clock()
    adm = admission(clock)
    key = KeyRecord(token="k", key_name="k", max_budget_nanos=1000)
    rpm = Window("k:rpm", False, 50, 1, "rpm_limit")
    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            admitted = await adm.admit(demand(i, key, rpm, least=30, most=30))
        except (RateLimited, BudgetExceeded) as exc:
            outcomes.append(type(exc).__name__)
            return
        await asyncio.sleep(0.001 * (i % 5))
        await adm.settle(admitted, 30, 1)
        outcomes.append("ok")

    await asyncio.gather(*(one(i) for i in range(200)))
    assert outcomes.count("ok") == 33                     # 33 x 30 <= 1000 < 34 x 30
    assert adm.period_spend(key) == 990


def test_sliding_window_adjust_ignores_seconds_that_left() -> None:
    window = SlidingWindow()
    window.add(100, 5)
    window.add(130, 7)
    window.adjust(100, -5)
    assert window.used(131) == 7
    window.adjust(99, 100)                  # not in the window any more: nothing to settle
    assert window.used(131) == 7
    assert window.used(190) == 0

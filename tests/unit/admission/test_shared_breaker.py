"""While Redis hangs (a private real redis-server, SIGSTOPped), only the admissions already on
their way wait the call timeout: once one timed out, the replica refuses (fail_closed) or falls
back at once, while one PING at a time checks Redis; the first answer after SIGCONT lets
admissions through again. A healthy Redis under a burst never trips it."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import pytest
from support import free_port

from faregate.admission import shared
from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord

KEY = KeyRecord(token="breakertest", key_name="sk-...test", max_budget_nanos=10**15)
WORKERS = 8


def admission(url: str, fail_mode: str = "fail_closed") -> RedisAdmission:
    async def load_key(token: str) -> KeyRecord | None:
        return KEY

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    return RedisAdmission(url, load_key, lambda *_: None, 1.0, fail_mode, local, 1)


class Traffic:
    """WORKERS callers, one request at a time each, until stopped; each refusal's outcome is
    counted as slow (it waited at least half the call timeout) or at once."""

    def __init__(self, adm: RedisAdmission) -> None:
        self.adm = adm
        self.admitted = self.fallback = self.refused_at_once = self.refused_slow = 0
        self.running = True
        self.ids = iter(range(10**9))

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            started = loop.time()
            try:
                admitted = await self.adm.admit(Demand(f"b{next(self.ids)}", KEY, 1, 10))
            except ServiceUnavailable:
                if loop.time() - started >= shared.CALL_TIMEOUT_S / 2:
                    self.refused_slow += 1
                else:
                    self.refused_at_once += 1
                await asyncio.sleep(0.01)
                continue
            if self.adm._hung is not None or not self.adm.healthy:
                self.fallback += 1
            else:
                self.admitted += 1
            await self.adm.settle(admitted, 1, 0)
            await asyncio.sleep(0.005)


async def wait_for(condition, within_s: float = 15.0) -> None:
    """A bound so the test ends, not the figure it checks."""
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


async def test_a_hang_costs_one_call_timeout_per_admission_in_flight(private_redis) -> None:
    url, proc = private_redis
    adm = admission(url)
    traffic = Traffic(adm)
    workers = [asyncio.create_task(traffic.worker()) for _ in range(WORKERS)]
    try:
        await wait_for(lambda: traffic.admitted >= 50)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            # through the first timeout, then as long again refused at once
            await wait_for(lambda: traffic.refused_slow > 0)
            await asyncio.sleep(shared.CALL_TIMEOUT_S)
            slow, at_once = traffic.refused_slow, traffic.refused_at_once
            probes_at_resume = adm.probes
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        # only the admissions on their way when it hung waited the call timeout
        assert 1 <= slow <= WORKERS, (slow, at_once)
        assert at_once >= 5 * WORKERS, (slow, at_once)
        admitted_at_resume = traffic.admitted
        await wait_for(lambda: traffic.admitted > admitted_at_resume + 20)
        # the first probe after SIGCONT (or the one on its way) let admissions through
        assert adm.probes - probes_at_resume <= 2, adm.probes - probes_at_resume
        assert traffic.refused_slow == slow
    finally:
        traffic.running = False
        await asyncio.gather(*workers)
        await adm.close()


async def test_the_fallback_is_taken_at_once_while_redis_hangs(private_redis) -> None:
    url, proc = private_redis
    adm = admission(url, "local")
    traffic = Traffic(adm)
    workers = [asyncio.create_task(traffic.worker()) for _ in range(WORKERS)]
    try:
        await wait_for(lambda: traffic.admitted >= 50)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            await wait_for(lambda: adm._hung is not None)
            hung_at = traffic.fallback
            await wait_for(lambda: traffic.fallback >= hung_at + 10 * WORKERS,
                           within_s=shared.CALL_TIMEOUT_S)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert traffic.refused_slow == traffic.refused_at_once == 0
        await wait_for(lambda: adm._hung is None)
    finally:
        traffic.running = False
        await asyncio.gather(*workers)
        await adm.close()


async def test_a_burst_on_a_healthy_redis_does_not_trip_it(private_redis,
                                                            monkeypatch) -> None:
    monkeypatch.setattr(shared, "PROBE_EVERY_S", 0.01)
    adm = admission(private_redis[0])
    try:
        async def one(i: int) -> None:
            admitted = await adm.admit(Demand(f"burst{i}", KEY, 1, 10))
            await adm.settle(admitted, 1, 0)

        await asyncio.gather(*(one(i) for i in range(300)))
        assert adm.probes == 0 and adm._hung is None
    finally:
        await adm.close()


async def test_a_refused_connection_is_no_hang() -> None:
    """Nothing listening fails at once: no probe is needed, and none runs."""
    adm = admission(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(ServiceUnavailable):
            await adm.admit(Demand("s1", KEY, 1, 10))
        assert adm._hung is None and adm.probes == 0
    finally:
        await adm.close()

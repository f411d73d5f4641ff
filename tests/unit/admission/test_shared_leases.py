"""RedisAdmission's leases (a private real Redis that the test pauses with SIGSTOP): a request
in flight keeps its reservation and slot by renewal; one whose admission answer was lost in a
hang is released within seconds of Redis answering again, not when a long lease ends."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime

import pytest

from faregate.admission import shared
from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord

KEY = KeyRecord(token="leasetest", key_name="sk-...test", max_budget_nanos=1_000_000,
                max_parallel_requests=1)


def admission(url: str) -> RedisAdmission:
    async def load_key(token: str) -> KeyRecord | None:
        return KEY

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    return RedisAdmission(url, load_key, lambda *_: None, 1.0, "fail_closed", local, 1)


async def slots_taken(adm: RedisAdmission) -> int:
    return int(await adm.client.zcard(f"fg:{{{KEY.token}}}:parallel"))


async def wait_until_free(adm: RedisAdmission, within_s: float) -> float:
    start = time.monotonic()
    while await slots_taken(adm) or await adm.client.hlen(f"fg:{{{KEY.token}}}:held"):
        assert time.monotonic() - start < within_s, "slot or reservation still held"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def probed_again(adm: RedisAdmission) -> None:
    """After a timeout, admissions wait for a probe to see Redis answer (every 0.5 s)."""
    for _ in range(100):
        if adm._hung is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no probe saw Redis answer within 5 s")


async def test_a_request_in_flight_keeps_its_slot_by_renewal(private_redis, monkeypatch) -> None:
    monkeypatch.setattr(shared, "LEASE_S", 1.0)
    monkeypatch.setattr(shared, "RENEW_S", 0.2)
    adm = admission(private_redis[0])
    try:
        admitted = await adm.admit(Demand("r1", KEY, least=10, most=100))
        await asyncio.sleep(2.5)                 # well past the 1 s lease: renewed meanwhile
        assert await slots_taken(adm) == 1
        with pytest.raises(Exception, match="max_parallel_requests"):
            await adm.admit(Demand("r2", KEY, least=10, most=100))
        await adm.settle(admitted, 5, 0)
        await wait_until_free(adm, within_s=2.0)
    finally:
        await adm.close()


async def test_an_answer_lost_in_a_hang_is_released_after_it(private_redis,
                                                             monkeypatch) -> None:
    monkeypatch.setattr(shared, "RENEW_S", 0.2)  # the lease stays 30 s: release must not wait
    url, proc = private_redis
    adm = admission(url)
    try:
        warm = await adm.admit(Demand("warm", KEY, least=10, most=100))
        await adm.settle(warm, 1, 0)
        await wait_until_free(adm, within_s=2.0)
        os.kill(proc.pid, signal.SIGSTOP)        # the script is sent, then runs on SIGCONT
        with pytest.raises(ServiceUnavailable):
            await adm.admit(Demand("lost", KEY, least=10, most=100))
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.3)
        assert await wait_until_free(adm, within_s=3.0) < 3.0
        await probed_again(adm)
        # The slot is free again for the next request.
        admitted = await adm.admit(Demand("after", KEY, least=10, most=100))
        await adm.settle(admitted, 1, 0)
    finally:
        await adm.close()


async def test_parallel_limit_admits_a_caller_whose_last_request_just_ended(
        private_redis) -> None:
    """At concurrency = max_parallel_requests, each caller's next request comes right after
    its last answer: the slot freed by its settlement (sent a moment later) must not refuse it.
    """
    adm = admission(private_redis[0])
    key = KEY.evolve(max_parallel_requests=2)
    refused = 0

    async def caller(n: int) -> None:
        nonlocal refused
        for i in range(50):
            try:
                admitted = await adm.admit(Demand(f"c{n}-{i}", key, least=1, most=10))
            except Exception:
                refused += 1
                continue
            await adm.settle(admitted, 1, 0)

    try:
        await asyncio.gather(caller(1), caller(2))
        assert refused == 0
        await wait_until_free(adm, within_s=2.0)
    finally:
        await adm.close()


async def test_a_settlement_lost_in_a_hang_is_released_after_it(private_redis,
                                                                monkeypatch) -> None:
    """A request admitted before the hang ends during it: its settlement's flush needs a new
    connection, whose handshake (CLIENT SETINFO) times out, so the settlement never reaches
    Redis. Its slot and reservation must still go within seconds of Redis answering again,
    not when the lease ends (the fault suite's 'Redis paused 10 s' saw them outlive it)."""
    monkeypatch.setattr(shared, "RENEW_S", 0.2)  # the lease stays 30 s: release must not wait
    url, proc = private_redis
    adm = admission(url)
    try:
        admitted = await adm.admit(Demand("ends-in-hang", KEY, least=10, most=100))
        os.kill(proc.pid, signal.SIGSTOP)
        await adm.client.connection_pool.disconnect()    # the flush must open a connection
        await adm.settle(admitted, 5, 0)
        await adm.drain()                        # it timed out: nothing was sent
        os.kill(proc.pid, signal.SIGCONT)
        assert await wait_until_free(adm, within_s=3.0) < 3.0
        await probed_again(adm)
        admitted = await adm.admit(Demand("after", KEY, least=10, most=100))
        await adm.settle(admitted, 1, 0)
    finally:
        await adm.close()


async def test_an_admission_cancelled_in_a_hang_is_released_after_it(private_redis,
                                                                     monkeypatch) -> None:
    """A caller cancelled while its admission waits on a hung Redis (the script is sent and
    runs when Redis resumes): what it booked goes within seconds, not when the lease ends."""
    monkeypatch.setattr(shared, "RENEW_S", 0.2)
    url, proc = private_redis
    adm = admission(url)
    try:
        warm = await adm.admit(Demand("warm", KEY, least=10, most=100))
        await adm.settle(warm, 1, 0)
        await wait_until_free(adm, within_s=2.0)
        os.kill(proc.pid, signal.SIGSTOP)
        waiting = asyncio.create_task(adm.admit(Demand("cancelled", KEY, least=10, most=100)))
        await asyncio.sleep(0.3)                 # the script is in Redis's socket buffer
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.3)
        assert await wait_until_free(adm, within_s=3.0) < 3.0
    finally:
        await adm.close()

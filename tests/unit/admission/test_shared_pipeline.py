"""RedisAdmission sends admissions and settlements as one pipeline at a time, by script digest
(a private real redis-server): scripts Redis lost are loaded again, and admissions queued
behind a pipeline that Redis does not answer are refused with it, not sent after it."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from typing import Any

from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord

KEY = KeyRecord(token="pipelinetest", key_name="sk-...test", max_budget_nanos=1_000_000,
                max_parallel_requests=3)


def admission(url: str) -> RedisAdmission:
    async def load_key(token: str) -> KeyRecord | None:
        return KEY

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    return RedisAdmission(url, load_key, lambda *_: None, 1.0, "fail_closed", local, 1)


async def held(adm: RedisAdmission) -> tuple[int, int, int]:
    """(slots, reservations, spend) of the key in Redis."""
    slots = await adm.client.zcard(f"fg:{{{KEY.token}}}:parallel")
    resv = await adm.client.zcard(f"fg:{{{KEY.token}}}:leases")
    spend = await adm.client.hget(f"fg:{{{KEY.token}}}:budget", "spend")
    return int(slots), int(resv), int(spend or 0)


async def test_scripts_that_redis_lost_are_loaded_again(private_redis) -> None:
    adm = admission(private_redis[0])
    try:
        first = await adm.admit(Demand("first", KEY, least=10, most=100))
        await adm.settle(first, 7, 0)
        await adm.client.script_flush()          # as after a restart: the digests are unknown
        second = await adm.admit(Demand("second", KEY, least=10, most=100))
        assert await held(adm) == (1, 1, 7)
        await adm.settle(second, 5, 0)
        await adm.drain()
        assert await held(adm) == (0, 0, 12)
    finally:
        await adm.close()


async def test_concurrent_admissions_share_round_trips_and_stay_exact(private_redis,
                                                                       monkeypatch) -> None:
    """Ten callers at once against max_parallel_requests 3: exactly 3 admitted, in fewer
    pipelines than calls; their settlements free every slot."""
    adm = admission(private_redis[0])
    pipelines: list[int] = []
    pipelined = adm._pipelined

    async def counting(calls: list[Any]) -> list[Any]:
        admissions = sum(1 for script, _ in calls if script is adm._admit)
        if admissions:                           # not lease renewals
            pipelines.append(admissions)
        return await pipelined(calls)

    monkeypatch.setattr(adm, "_pipelined", counting)
    try:
        await adm.admit(Demand("warm", KEY, least=1, most=10))      # the key's budget loaded
        outcomes = await asyncio.gather(
            *(adm.admit(Demand(f"r{i}", KEY, least=1, most=10)) for i in range(10)),
            return_exceptions=True)
        admitted = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(admitted) == 2                # 'warm' holds the third slot
        assert all("max_parallel_requests" in str(o) for o in outcomes
                   if isinstance(o, BaseException))
        assert max(pipelines) > 1                # several decided in one round trip
        for a in admitted:
            await adm.settle(a, 1, 0)
        await adm.drain()
        assert (await held(adm))[:2] == (1, 1)  # only 'warm' is still held
    finally:
        await adm.close()


async def test_admissions_queued_behind_an_unanswered_pipeline_are_refused_with_it(
        private_redis, monkeypatch) -> None:
    url, proc = private_redis
    adm = admission(url)
    pipelines: list[int] = []
    pipelined = adm._pipelined

    async def counting(calls: list[Any]) -> list[Any]:
        admissions = sum(1 for script, _ in calls if script is adm._admit)
        if admissions:                           # not lease renewals
            pipelines.append(admissions)
        return await pipelined(calls)

    try:
        warm = await adm.admit(Demand("warm", KEY, least=1, most=10))
        await adm.settle(warm, 1, 0)
        await adm.drain()
        monkeypatch.setattr(adm, "_pipelined", counting)
        os.kill(proc.pid, signal.SIGSTOP)
        first = asyncio.create_task(adm.admit(Demand("first", KEY, least=1, most=10)))
        await asyncio.sleep(0.2)                 # its pipeline is out; these queue behind it
        queued = [asyncio.create_task(adm.admit(Demand(f"q{i}", KEY, least=1, most=10)))
                  for i in range(3)]
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        assert all(isinstance(o, ServiceUnavailable) for o in outcomes), outcomes
        assert pipelines == [1]                  # refused with the first, never sent
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await adm.close()


async def test_a_settlement_rides_with_the_next_admission_or_goes_alone_soon(
        private_redis, monkeypatch) -> None:
    """A client that sends its next request at once: the previous request's settlement and
    the new admission share one round trip (settlement first, so its slot is free for the
    admission). With no admission coming, the settlement goes by itself within a few ms."""
    adm = admission(private_redis[0])
    pipelines: list[tuple[str, ...]] = []
    pipelined = adm._pipelined

    async def recorded(calls: list[Any]) -> list[Any]:
        pipelines.append(tuple("admit" if script is adm._admit else "settle"
                               for script, _ in calls))
        return await pipelined(calls)

    monkeypatch.setattr(adm, "_pipelined", recorded)
    try:
        slots = KEY.max_parallel_requests
        assert slots is not None
        admitted = [await adm.admit(Demand(f"busy{i}", KEY, least=1, most=10))
                    for i in range(slots)]
        del pipelines[:]
        await adm.settle(admitted[0], 2, 0)      # the slot it frees is needed by the next
        nxt = await adm.admit(Demand("next", KEY, least=1, most=10))
        assert pipelines == [("settle", "admit")]
        await adm.settle(nxt, 3, 0)
        async with asyncio.timeout(5):           # no drain(): the timer sends it
            while (await held(adm))[2] != 5:
                await asyncio.sleep(0.01)
        assert pipelines[1:] == [("settle",)]
        for a in admitted[1:]:
            await adm.settle(a, 0, 0)
        await adm.drain()
        assert await held(adm) == (0, 0, 5)
    finally:
        await adm.close()

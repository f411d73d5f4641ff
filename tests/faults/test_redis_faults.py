"""Redis, which replicas share admission through, stopped and paused under load (real
processes: two `faregate serve` replicas on a private Postgres and a private redis-server).

Stopped, admission fails closed with the documented 503 and comes back by itself; paused (a
hang, not a refusal), it must not strand what it held: once Redis answers again, every
parallel slot and every reservation is free within seconds, and a key whose
`max_parallel_requests` equals the callers' concurrency is served in full again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from e2e.conftest import ServedGateway
from e2e.test_replicas import RedisServer
from faults.conftest import model, new_database, new_key, start
from faults.harness import (
    FaultTable,
    Load,
    check_and_record,
    drive,
    read_ledger,
    wait_until_written,
)
from faults.private_postgres import PrivatePostgres
from support import chat, stop

from faregate.admission.shared import (
    CALL_TIMEOUT_S,
    LEASE_S,
    PROBE_EVERY_S,
    RELEASE_ROUNDS,
    RENEW_S,
)
from faregate.keys.tokens import hash_key

# A lease is renewed every 5 s; what a hang made a replica lose track of (an admission whose
# answer timed out or whose caller was cancelled, a settlement that never reached Redis) is
# released on the next RELEASE_ROUNDS renewal rounds that reach Redis (admission/shared.py):
# a round that failed in the hang costs a call timeout, then rounds follow every RENEW_S. Well
# under the 30 s lease, so a slot left to its lease fails this. Before settlements were
# released too (session 4), one whose flush had to open a connection during the hang never
# reached Redis, and its slot and reservation stayed: 40 s after the load, (1, 1) or (2, 2).
FREED_WITHIN_S = (RELEASE_ROUNDS + 1) * RENEW_S + CALL_TIMEOUT_S
assert FREED_WITHIN_S < LEASE_S


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)     # never leave it stopped
        server.stop()


@pytest.fixture
def two_replicas(private_pg: PrivatePostgres, fault_mock: str, redis_server: RedisServer,
                 tmp_path: Path) -> Iterator[tuple[str, list[ServedGateway]]]:
    db = new_database(private_pg)
    general = {"redis_url": redis_server.url, "replicas": 2}
    models = [model("qwen-local", fault_mock)]
    gateways: list[ServedGateway] = []
    try:
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            gateways.append(start(home, db, models, general))
        yield db, gateways
    finally:
        for gw in gateways:
            stop(gw.proc)


async def on_both(gateways: list[ServedGateway], key: str, n: int, concurrency: int,
                  pace_s: float, **body: object) -> Load:
    """n requests split over the replicas, `concurrency` in flight in all."""
    half = n // len(gateways)
    loads = await asyncio.gather(*(
        drive(gw.base_url, key, [chat(f"{i}-{j}", **body) for j in range(half)],
              max(1, concurrency // len(gateways)), pace_s=pace_s, timeout_s=30)
        for i, gw in enumerate(gateways)))
    return Load([o for load in loads for o in load.outcomes])


async def held_in_redis(url: str, key: str) -> tuple[int, int]:
    """(parallel slots taken, reservations open) for the key, as Redis holds them."""
    token = hash_key(key)
    client = aioredis.Redis.from_url(url)
    try:
        slots = await client.zcard(f"fg:{{{token}}}:parallel")
        reservations = await client.hlen(f"fg:{{{token}}}:held")
    finally:
        await client.aclose()
    return int(slots), int(reservations)


async def until_free(url: str, key: str) -> float:
    started = time.monotonic()
    while (held := await held_in_redis(url, key)) != (0, 0):
        assert time.monotonic() - started < FREED_WITHIN_S, \
            f"(slots, reservations) {held} still held {FREED_WITHIN_S} s after recovery"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def until_admitting(gateways: list[ServedGateway], key: str) -> Load:
    """Each gateway admits again: after a hang it refuses at once until its probe (every
    PROBE_EVERY_S) hears Redis answer, so a burst right after SIGCONT can land in that gap.
    The calls it made (to count with the rest)."""
    deadline = time.monotonic() + 10
    probes = Load()
    for gw in gateways:
        while True:
            (outcome,) = (await drive(gw.base_url, key, [chat("up")], 1)).outcomes
            probes.outcomes.append(outcome)
            if outcome.status != 503:
                assert outcome.status == 200, outcome
                break
            assert time.monotonic() < deadline, outcome
            await asyncio.sleep(PROBE_EVERY_S / 2)
    return probes


def test_redis_stopped_mid_load_fails_closed_and_recovers(
        two_replicas: tuple[str, list[ServedGateway]], redis_server: RedisServer,
        fault_table: FaultTable) -> None:
    db, gateways = two_replicas
    key = new_key(gateways[0].base_url, max_budget=100)

    async def scenario() -> tuple[Load, Load]:
        during = asyncio.create_task(on_both(gateways, key, 400, 4, pace_s=0.03))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(5.0)
        await asyncio.to_thread(redis_server.start)       # same port, empty: keys re-read
        load = await during
        # Paced over ~6 s: a stale pooled connection once cost a stray 503 4.4 s after the
        # recovery (issue 13, also found); none may come.
        after = await on_both(gateways, key, 100, 4, pace_s=0.12)
        for gw in gateways:
            await wait_until_written(gw.base_url)
        return load, after

    load, after = asyncio.run(scenario())
    ledger = asyncio.run(read_ledger(db, key, gateways[0].base_url))
    everything = Load(load.outcomes + after.outcomes)
    check_and_record(fault_table, "Redis stopped 5 s mid-load (2 replicas)", everything, ledger,
                     everything.ids(lambda o: o.status == 200),
                     "503 fail-closed while down; served again after")
    assert set(load.failures()) == {"503"}               # the outage was mid-load
    assert after.failures() == {}                         # and recovery needs no restart
    assert ledger.rows.keys() == everything.ids(lambda o: o.status == 200)


def test_redis_paused_10s_frees_every_slot_and_reservation_within_seconds(
        two_replicas: tuple[str, list[ServedGateway]], redis_server: RedisServer,
        fault_table: FaultTable) -> None:
    db, gateways = two_replicas
    assert redis_server.proc is not None
    redis_pid = redis_server.proc.pid
    limit = 4
    key = new_key(gateways[0].base_url, max_budget=100, max_parallel_requests=limit)

    async def scenario() -> tuple[Load, Load, float]:
        during = asyncio.create_task(on_both(gateways, key, 300, limit, pace_s=0.02))
        await asyncio.sleep(1.5)
        os.kill(redis_pid, signal.SIGSTOP)                # a hang: connections stay open
        await asyncio.sleep(10.0)
        os.kill(redis_pid, signal.SIGCONT)
        load = await during
        freed_after = await until_free(redis_server.url, key)
        probes = await until_admitting(gateways, key)
        # Concurrency = the key's limit, every request must find a slot: none was stranded.
        after = await on_both(gateways, key, 80, limit, pace_s=0.0)
        for gw in gateways:
            await wait_until_written(gw.base_url)
        return Load(load.outcomes + probes.outcomes), after, freed_after

    load, after, freed_after = asyncio.run(scenario())
    ledger = asyncio.run(read_ledger(db, key, gateways[0].base_url))
    everything = Load(load.outcomes + after.outcomes)
    check_and_record(fault_table, "Redis paused 10 s (SIGSTOP), max_parallel_requests 4",
                     everything, ledger, everything.ids(lambda o: o.status == 200),
                     f"slots and reservations free {freed_after:.1f} s after the load ended")
    assert "503" in load.failures()                       # the hang was mid-load
    # Nothing stranded: after.failures() would then be full of 429s (half of the slots held).
    # A rare parallel 429 remains at concurrency = limit across two replicas (a settlement on
    # its way from the other replica; 1 in 80 seen once in CI): tolerated, not more.
    assert set(after.failures()) <= {"429"} and after.failures().get("429", 0) <= 2, \
        (after.codes(), [gw.output()[-3000:] for gw in gateways])
    assert asyncio.run(held_in_redis(redis_server.url, key)) == (0, 0)


def test_max_parallel_requests_at_concurrency_equal_to_the_limit_refuses_nothing(
        two_replicas: tuple[str, list[ServedGateway]], fault_table: FaultTable) -> None:
    """No fault: the baseline the hang is measured against (issue 13, also found). Callers
    that together never have more requests in flight than the key's max_parallel_requests
    must all be served: a replica queues a request's settlement before its answer leaves, and
    sends it ahead of its next admission. (Before, slots were released after the answer and
    37% of such requests got 429: 1,080 of 2,898.)"""
    db, gateways = two_replicas
    limit = 4
    key = new_key(gateways[0].base_url, max_budget=100, max_parallel_requests=limit)

    async def scenario() -> Load:
        load = await on_both(gateways, key, 600, limit, pace_s=0.0)
        for gw in gateways:
            await wait_until_written(gw.base_url)
        return load

    load = asyncio.run(scenario())
    ledger = asyncio.run(read_ledger(db, key, gateways[0].base_url))
    check_and_record(fault_table, f"max_parallel_requests {limit}, concurrency {limit}, no fault "
                     "(2 replicas)", load, ledger, load.ids(lambda o: o.status == 200),
                     f"{load.failures().get('429', 0)} parallel 429s")
    assert load.failures() == {}, load.failures()
    assert ledger.rows.keys() == load.ids(lambda o: o.status == 200)

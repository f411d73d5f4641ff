"""Serving processes on one database find each other (storage/replicas.py): the heartbeat rows
on SQLite and Postgres, the rule that picks the one process that may admit without Redis, and
the heartbeat's standing, readiness and hold over time."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import fresh_pg_database

from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand
from faregate.admission.local import LocalAdmission
from faregate.admission.sole import SoleAdmission
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord
from faregate.storage import migrate
from faregate.storage.database import SqlStorage
from faregate.storage.protocols import Replica
from faregate.storage.replicas import ReplicaHeartbeat, standing, this_host


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStorage]:
    """A fresh, migrated database of this test's own (the replicas table starts empty)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'replicas.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        store = SqlStorage.from_url(url)
        yield store
        await store.close()
        return
    with fresh_pg_database("faregate_replicas") as url:
        await asyncio.to_thread(migrate.upgrade, url)
        store = SqlStorage.from_url(url)
        yield store
        await store.close()


def process(replica_id: str, pid: int, redis: bool = False, host: str = "h") -> Replica:
    return Replica(replica_id, host, pid, redis)


async def test_a_beat_registers_and_lists_every_live_process_oldest_first(
        storage: SqlStorage) -> None:
    a, b = process("a", 1), process("b", 2, redis=True)
    assert [r.replica_id for r in await storage.beat_replica(a, 30)] == ["a"]
    await asyncio.sleep(1.1)        # SQLite's clock counts whole seconds
    live = await storage.beat_replica(b, 30)
    assert [(r.replica_id, r.pid, r.shares_admission) for r in live] == \
        [("a", 1, False), ("b", 2, True)]
    first = live[0].started_at
    assert first is not None and first.tzinfo is not None
    again = await storage.beat_replica(a, 30)           # a beat keeps the start
    assert again[0].started_at == first
    await storage.remove_replica("a")
    assert [r.replica_id for r in await storage.beat_replica(b, 30)] == ["b"]


async def test_a_process_that_stopped_beating_is_not_live(storage: SqlStorage) -> None:
    await storage.beat_replica(process("gone", 1), 30)
    await asyncio.sleep(2.2)
    live = await storage.beat_replica(process("here", 2), 1.0)
    assert [r.replica_id for r in live] == ["here"]
    live = await storage.beat_replica(process("here", 2), 30)
    assert [r.replica_id for r in live] == ["gone", "here"]
    assert live[0].seen_s_ago >= 1.0


async def test_a_restarted_container_replaces_its_predecessors_row(storage: SqlStorage) -> None:
    """The same host and pid: the earlier process in this container is gone."""
    await storage.beat_replica(process("before", 1, host="pod-0"), 30)
    await storage.beat_replica(process("other", 1, host="pod-1"), 30)
    live = await storage.beat_replica(process("after", 1, host="pod-0"), 30)
    assert sorted(r.replica_id for r in live) == ["after", "other"]


T0 = datetime(2026, 12, 3, tzinfo=UTC)


def at(r: Replica, seconds: int) -> Replica:
    return dataclasses.replace(r, started_at=T0 + timedelta(seconds=seconds))


def test_the_rule() -> None:
    old, new = at(process("a", 1), 0), at(process("b", 2), 5)
    shared = at(process("c", 3, redis=True), 10)
    assert standing(old, [old]).admitting
    assert standing(old, [old, new]).admitting          # the first one keeps serving
    refused = standing(new, [old, new])
    assert not refused.admitting and refused.others == (old,)
    assert refused.reason is not None and "REDIS_URL" in refused.reason
    assert "h pid 1" in refused.reason
    # without Redis, a process admitting through Redis blocks even a older one
    assert not standing(old, [old, shared]).admitting
    assert standing(shared, [old, new, shared]).admitting   # with Redis: always
    # the same start: the id decides, the same way on every process
    twin = at(process("z", 9), 0)
    assert standing(old, [old, twin]).admitting and not standing(twin, [old, twin]).admitting


class FakeStore:
    """The replicas table in memory, with processes that come and go as a test says."""

    def __init__(self) -> None:
        self.others: list[Replica] = []
        self.removed: list[str] = []
        self.fail = False

    async def beat_replica(self, me: Replica, stale_after_s: float) -> list[Replica]:
        if self.fail:
            raise ConnectionError("the database is down")
        return sorted([*self.others, at(me, 100)], key=lambda r: r.started_at or T0)

    async def remove_replica(self, replica_id: str) -> None:
        self.removed.append(replica_id)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_heartbeat_waits_for_an_older_process_then_admits_when_it_leaves() -> None:
    store, clock = FakeStore(), Clock()
    store.others = [at(process("old", 1), 0)]
    beat = ReplicaHeartbeat(store, False, clock, beat_s=0.01, handover_s=60)
    await beat.start()
    try:
        assert not beat.standing.admitting
        assert beat.ready()                 # the handover: still ready for a while
        clock.now = 59.0
        assert beat.ready()
        clock.now = 61.0
        assert not beat.ready()             # a real conflict, not a handover
        assert (await beat.wait_admitting(0.05)).admitting is False
        waiting = asyncio.create_task(beat.wait_admitting(5))
        await asyncio.sleep(0.03)
        assert not waiting.done()
        store.others = []                   # the old process left (its drain began)
        assert (await waiting).admitting
        assert beat.ready()
        # a beat that fails keeps the last standing
        store.fail = True
        store.others = [at(process("old", 1), 0)]
        await asyncio.sleep(0.05)
        assert beat.standing.admitting
    finally:
        await beat.leave()
    assert store.removed == [beat.me.replica_id]
    await beat.leave()                      # a second time does nothing
    assert store.removed == [beat.me.replica_id]


async def test_with_redis_the_heartbeat_only_reports() -> None:
    store = FakeStore()
    store.others = [at(process("old", 1), 0)]
    beat = ReplicaHeartbeat(store, True, Clock(), beat_s=0.01)
    await beat.start()
    try:
        assert beat.standing.admitting and beat.ready()
        assert [r.replica_id for r in beat.standing.others] == ["old"]
    finally:
        await beat.leave()


async def test_a_first_beat_that_fails_serves_as_before_the_check() -> None:
    store = FakeStore()
    store.fail = True
    beat = ReplicaHeartbeat(store, False, Clock(), beat_s=0.01)
    await beat.start()
    try:
        assert beat.standing.admitting
    finally:
        await beat.leave()


async def test_sole_admission_holds_then_refuses_with_a_503_naming_redis_url() -> None:
    store, clock = FakeStore(), Clock()
    store.others = [at(process("old", 1), 0)]
    beat = ReplicaHeartbeat(store, False, clock, beat_s=0.01)
    await beat.start()
    admission = SoleAdmission(LocalAdmission(Budgets(lambda: T0, 1.0, lambda *_: None), 1.0), beat,
                              hold_s=0.05)
    key = KeyRecord(token="t", key_name="k")
    demand = Demand(request_id="r1", key=key, least=0, most=0)
    try:
        with pytest.raises(ServiceUnavailable) as info:
            await admission.admit(demand)
        assert info.value.code == "replicas_without_redis"
        assert "REDIS_URL" in info.value.message
        held = asyncio.create_task(admission.admit(dataclasses.replace(demand,
                                                                       request_id="r2")))
        await asyncio.sleep(0.02)
        store.others = []
        admitted = await held                # admitted by the same call, not refused
        await admission.settle(admitted, 0, 0)
    finally:
        await beat.leave()


async def test_a_process_on_this_host_that_no_longer_exists_is_gone_at_once() -> None:
    """A restart after SIGKILL: the dead process's row is fresh, but its pid is gone here."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = FakeStore()
    store.others = [at(Replica("dead", this_host(), dead.pid, False), 0)]
    beat = ReplicaHeartbeat(store, False, Clock(), beat_s=0.01)
    await beat.start()
    try:
        assert beat.standing.admitting
        store.others = [at(Replica("alive", this_host(), os.getppid(), False), 0)]
        await asyncio.sleep(0.05)
        assert not beat.standing.admitting
    finally:
        await beat.leave()

"""Postgres stopped mid-load, SIGTERM mid-load with streams open, SIGKILL and restart: in each,
every request the client saw served has its spend row, no row counts twice, and the key's spend
equals the sum of its rows."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from e2e.conftest import ServedGateway
from e2e.test_replicas import RedisServer
from faults.conftest import model, new_database, new_key, start
from faults.harness import (
    FaultTable,
    Ledger,
    Load,
    check_and_record,
    drive,
    read_ledger,
    wait_until_written,
)
from faults.private_postgres import PrivatePostgres
from support import MASTER_KEY, chat, stop

from faregate.cli.commands import WORKER_MIN_LIFE_S

OUTAGE_S = 10.0


async def outage_during_load(pg: PrivatePostgres, gw: ServedGateway, key: str, n: int,
                             pace_s: float) -> tuple[Load, float, float, dict]:
    load_task = asyncio.create_task(drive(gw.base_url, key, [chat(f"q{i}") for i in range(n)],
                                          4, pace_s=pace_s))
    await asyncio.sleep(2.0)
    await asyncio.to_thread(pg.stop)
    down_at = time.monotonic()
    await asyncio.sleep(OUTAGE_S / 2)
    async with httpx.AsyncClient(base_url=gw.base_url) as http:
        readiness = await http.get("/health/readiness")
        generate = await http.post("/key/generate", json={},
                                   headers={"Authorization": f"Bearer {MASTER_KEY}"})
        liveness = await http.get("/health/liveliness")
        seen = {"http": readiness.status_code, **readiness.json(), "live": liveness.status_code,
                "generate": (generate.status_code, generate.json()["error"]["code"])}
    await asyncio.sleep(OUTAGE_S / 2)
    await asyncio.to_thread(pg.start)
    up_at = time.monotonic()
    return await load_task, down_at, up_at, seen


def ledger_after_exit(tmp_path: Path, db: str, models: list[dict[str, Any]],
                      key: str) -> Ledger:
    """The key's ledger once a gateway has exited, with what /key/info says on the process
    started next (nothing is left for it to write: it reports what the database holds)."""
    after = start(tmp_path, db, models)
    try:
        return asyncio.run(read_ledger(db, key, after.base_url))
    finally:
        stop(after.proc)


def test_postgres_stopped_for_10s_mid_load_serves_known_keys_and_loses_no_row(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    gw = start(tmp_path, db, [model("qwen-local", fault_mock)],
               {"allow_requests_on_db_unavailable": True})
    try:
        key = new_key(gw.base_url, max_budget=100)

        async def scenario() -> tuple[Load, Ledger, float, float, dict]:
            load, down_at, up_at, seen = await outage_during_load(private_pg, gw, key, 900,
                                                                  pace_s=0.06)
            await wait_until_written(gw.base_url)
            return load, await read_ledger(db, key, gw.base_url), down_at, up_at, seen

        load, ledger, down_at, up_at, seen = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    during = [o for o in load.served if down_at < o.at < up_at]
    check_and_record(fault_table, "Postgres stopped 10 s (allow_requests_on_db_unavailable)",
                     load, ledger, load.ids(lambda o: o.status == 200),
                     f"{len(during)} served while down")
    assert load.failures() == {}                 # the key was known: every request served
    assert len(during) > 50                      # the outage really was mid-load
    assert seen["http"] == 200 and seen["status"] == "degraded" and seen["db"] == "disconnected"
    assert seen["live"] == 200 and seen["generate"] == (503, "database_unavailable")
    assert ledger.rows.keys() == load.ids(lambda o: o.status == 200)


def test_postgres_stopped_without_the_setting_refuses_fast_with_503(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    gw = start(tmp_path, db, [model("qwen-local", fault_mock)])
    try:
        key = new_key(gw.base_url, max_budget=100)

        async def scenario() -> tuple[Load, Ledger, dict]:
            load, _, _, seen = await outage_during_load(private_pg, gw, key, 600, pace_s=0.06)
            await wait_until_written(gw.base_url)          # the database is back ...
            after = await drive(gw.base_url, key, [chat("after")], 1)  # ... and so is service
            assert after.failures() == {}
            await wait_until_written(gw.base_url)
            return (Load(load.outcomes + after.outcomes), await read_ledger(db, key, gw.base_url),
                    seen)

        load, ledger, seen = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    check_and_record(fault_table, "Postgres stopped 10 s (setting off)", load, ledger,
                     load.ids(lambda o: o.status == 200), "503 database_unavailable while down")
    assert set(load.failures()) == {"503"}
    assert seen["http"] == 503 and seen["db"] == "disconnected" and seen["live"] == 200
    assert ledger.rows.keys() == load.ids(lambda o: o.status == 200)


def test_sigterm_mid_load_finishes_open_streams_and_writes_every_row(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    # One token every 25 ms: a 60-token stream is open ~1.5 s.
    models = [model("qwen-local", fault_mock), model("slow", fault_mock, upstream_model="slow-25")]
    gw = start(tmp_path, db, models)
    try:
        key = new_key(gw.base_url, max_budget=100)

        async def scenario() -> tuple[Load, Load, int]:
            streams = asyncio.create_task(drive(
                gw.base_url, key,
                [chat(f"s{i}", model="slow", max_tokens=60, stream=True) for i in range(16)], 16))
            plain = asyncio.create_task(drive(gw.base_url, key,
                                              [chat(f"q{i}") for i in range(400)], 4,
                                              pace_s=0.01))
            await asyncio.sleep(0.6)                  # streams open, JSON requests flowing
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.proc.wait, 60)
            return await streams, await plain, code

        streams, plain, code = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    ledger = ledger_after_exit(tmp_path, db, models, key)
    load = Load(streams.outcomes + plain.outcomes)
    check_and_record(fault_table, "SIGTERM mid-load, 16 streams open", load, ledger,
                     load.ids(lambda o: o.status == 200),
                     f"exit {code}; {sum(o.finished for o in streams.outcomes)}/16 streams done")
    assert code == 0, gw.output()
    assert all(o.status == 200 and o.finished for o in streams.outcomes), streams.failures()
    assert len(ledger.rows) == len(load.served)        # flushed before exit: nothing waits


def test_sigkill_mid_load_then_restart_replays_what_was_on_disk(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    models = [model("qwen-local", fault_mock)]
    # Rows would reach Postgres only every 60 s (or at 500 waiting, more than this test
    # sends): at the kill, every row is on disk only.
    general = {"proxy_batch_write_at": 60}
    gw = start(tmp_path, db, models, general)
    try:
        key = new_key(gw.base_url, max_budget=100)

        async def scenario() -> Load:
            task = asyncio.create_task(drive(gw.base_url, key,
                                             [chat(f"q{i}") for i in range(450)], 8,
                                             pace_s=0.05))
            await asyncio.sleep(1.5)
            gw.proc.kill()
            return await task

        load = asyncio.run(scenario())
        gw.proc.wait(10)
        before = asyncio.run(read_ledger(db, key))
    finally:
        stop(gw.proc)
    restarted = start(tmp_path, db, models)
    try:
        asyncio.run(wait_until_written(restarted.base_url))
        ledger = asyncio.run(read_ledger(db, key, restarted.base_url))
        replayed = re.search(r"replaying (\d+) spend rows", restarted.output())
    finally:
        stop(restarted.proc)
    check_and_record(fault_table, "SIGKILL mid-load, restart", load, ledger,
                     load.ids(lambda o: o.status == 200),
                     f"{len(before.rows)} rows in Postgres at the kill, "
                     f"{replayed.group(1) if replayed else 0} replayed from disk")
    assert len(load.served) > 20 and len(before.rows) == 0      # killed mid-load
    assert replayed is not None and int(replayed.group(1)) >= len(load.served)


def test_sigterm_with_streams_longer_than_the_grace_period_cuts_and_charges_them(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    # 200 tokens at one per 25 ms = 5 s, against a grace period of 1 s.
    models = [model("slow", fault_mock, upstream_model="slow-25")]
    gw = start(tmp_path, db, models, {"graceful_shutdown_timeout_s": 1})
    try:
        key = new_key(gw.base_url, max_budget=100)

        async def scenario() -> tuple[Load, int]:
            streams = asyncio.create_task(drive(
                gw.base_url, key,
                [chat(f"s{i}", model="slow", max_tokens=200, stream=True) for i in range(8)], 8))
            await asyncio.sleep(1.0)
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.proc.wait, 60)
            return await streams, code

        load, code = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    ledger = ledger_after_exit(tmp_path, db, models, key)
    cut = load.ids(lambda o: o.chunks > 0)
    check_and_record(fault_table, "SIGTERM, streams longer than the 1 s grace", load, ledger,
                     cut, f"exit {code}; rows: "
                     f"{sorted({status for _, status, _ in ledger.rows.values()})}")
    assert code == 0, gw.output()
    assert len(cut) == 8 and not any(o.finished for o in load.outcomes)
    for request_id in cut:                    # charged for what was produced, not the bound
        spend, status, produced = ledger.rows[request_id]
        assert status == "partial" and 0 < produced < 200 and spend > 0


def test_sigkill_of_one_worker_restarts_it_and_its_replacement_replays_the_rows(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    db = new_database(private_pg)
    models = [model("qwen-local", fault_mock)]
    try:
        gw = start(tmp_path, db, models,
                   {"proxy_batch_write_at": 60, "redis_url": redis.url}, args=("--workers", "2"))
        try:
            async def until_output(text: str, count: int = 1, within_s: float = 30) -> None:
                try:
                    async with asyncio.timeout(within_s):
                        while gw.output().count(text) < count:
                            await asyncio.sleep(0.1)
                except TimeoutError:
                    raise AssertionError(f"{text!r} not logged in {within_s} s:\n"
                                         f"{gw.output()}") from None

            asyncio.run(until_output("faregate: listening on", 2))     # both workers up
            time.sleep(WORKER_MIN_LIFE_S)          # old enough to be restarted, not given up
            key = new_key(gw.base_url, max_budget=100)
            pids = re.search(r"workers \(pids (\d+), (\d+)\)", gw.output())
            assert pids is not None
            victim = int(pids.group(1))

            async def scenario() -> Load:
                task = asyncio.create_task(drive(gw.base_url, key,
                                                 [chat(f"q{i}") for i in range(300)], 4,
                                                 pace_s=0.02))
                await asyncio.sleep(1.0)
                os.kill(victim, signal.SIGKILL)
                await until_output(f"worker {victim} died")
                return await task

            load = asyncio.run(scenario())
            # The replacement adopted the rows (it starts in seconds, more on a loaded box).
            asyncio.run(until_output("replaying", within_s=90))
            gw.proc.send_signal(signal.SIGTERM)
            code = gw.proc.wait(60)
        finally:
            stop(gw.proc)
        ledger = ledger_after_exit(tmp_path, db, models, key)
    finally:
        redis.stop()
    replayed = re.search(r"replaying (\d+) spend rows", gw.output())
    check_and_record(fault_table, "SIGKILL of 1 of 2 workers (--workers 2)", load, ledger,
                     load.ids(lambda o: o.status == 200),
                     f"restarted; {replayed.group(1) if replayed else 0} rows replayed by "
                     f"the replacement; exit {code}")
    assert code == 0, gw.output()
    assert replayed is not None and int(replayed.group(1)) > 0
    assert len(load.served) >= 250                   # the other worker kept serving

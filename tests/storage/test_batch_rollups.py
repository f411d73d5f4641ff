"""The spend rollups written per ledger batch (issue 15): on SQLite write_spend adds each batch's
new rows itself (storage/spend_rollup.py, no insert triggers since 0012), on Postgres statement
triggers do. Either way every (level, id, bucket) of both rollup tables equals the ledger's own
GROUP BY, through both SQLite write paths, and a replayed batch adds nothing."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select
from support import token

from faregate.records import SpendRow
from faregate.storage import migrate
from faregate.storage.database import SqlStorage
from faregate.storage.schema import spend_logs, spend_rollup, spend_rollup_hour

# 10:44 to 11:16 UTC: three quarter hours, two hours
T0 = datetime(2026, 3, 1, 10, 44, tzinfo=UTC)
LEVELS = {"all": None, "model": "model", "key": "api_key", "team": "team_id",
          "user": "user_id", "org": "organization_id", "end_user": "end_user"}
HOURLY = ("all", "model")

Sums = tuple[int, int, int, int, int]
Rollup = dict[tuple[str, str, datetime], Sums]


@pytest.fixture(params=["ledger thread", "engine connection"])
async def storage(db_url: str, request: pytest.FixtureRequest) -> AsyncIterator[SqlStorage]:
    """On SQLite, both write paths: the ledger's own thread (a file) and the engine's
    connection (aiosqlite, what an in-memory database uses)."""
    if request.param == "engine connection" and not db_url.startswith("sqlite"):
        pytest.skip("SQLite's second write path")
    store = SqlStorage.from_url(db_url)
    if request.param == "engine connection":
        store._sqlite_spend = None          # not started yet: it connects on its first write
    try:
        yield store
    finally:
        await store.close()


def rows(prefix: str, count: int) -> list[SpendRow]:
    out = []
    for i in range(count):
        at = T0 + timedelta(seconds=57 * i)          # 10:44:00 ... 11:15:21 for 34 rows
        out.append(SpendRow(
            f"{prefix}{i}", token(i % 4), None, f"m{i % 3}", "u", "chat_completion", 1 + i,
            2 * i, 1_000_003 * (i + 1), at, at + timedelta(seconds=1),
            "failure" if i % 7 == 0 else "success",
            user_id=f"u{i % 2}" if i % 5 else None, team_id=f"t{i % 3}" if i % 2 else None,
            organization_id="o1" if i % 4 == 0 else None,
            end_user=f"e{i % 5}" if i % 3 else None))
    return out


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bucket(at: datetime, minutes: int) -> datetime:
    at = _utc(at)
    return at.replace(minute=at.minute - at.minute % minutes, second=0, microsecond=0)


async def ledger_grouped(store: SqlStorage, minutes: int, levels: tuple[str, ...]) -> Rollup:
    """The ledger's own sums per (level, id, bucket)."""
    want: dict[tuple[str, str, datetime], list[int]] = defaultdict(lambda: [0] * 5)
    async with store.engine.connect() as conn:
        for r in (await conn.execute(select(spend_logs))).mappings():
            for level in levels:
                column = LEVELS[level]
                ident = "" if column is None else r[column]
                if ident is None:
                    continue
                sums = want[(level, ident, _bucket(r["start_time"], minutes))]
                for i, value in enumerate((r["spend_nanos"], 1, r["status"] != "success",
                                           r["prompt_tokens"], r["completion_tokens"])):
                    sums[i] += int(value)
    return {k: (v[0], v[1], v[2], v[3], v[4]) for k, v in want.items()}


async def rollup(store: SqlStorage, hourly: bool) -> Rollup:
    table = spend_rollup_hour if hourly else spend_rollup
    c = table.c
    async with store.engine.connect() as conn:
        got = await conn.execute(select(c.level, c.id, c.bucket, c.spend_nanos, c.requests,
                                        c.failures, c.prompt_tokens, c.completion_tokens))
        return {(r[0], r[1], _utc(r[2])): (r[3], r[4], r[5], r[6], r[7])
                for r in got if r[4] != 0}


async def assert_rollups_equal_ledger(store: SqlStorage) -> None:
    assert await rollup(store, hourly=False) == await ledger_grouped(store, 15, tuple(LEVELS))
    assert await rollup(store, hourly=True) == await ledger_grouped(store, 60, HOURLY)


async def test_a_batch_across_buckets_and_an_hour_equals_the_ledger(
        storage: SqlStorage) -> None:
    batch = rows("r", 34)
    assert {_bucket(r.start_time, 15) for r in batch} == {
        T0.replace(minute=m) for m in (30, 45)} | {T0.replace(hour=11, minute=m)
                                                   for m in (0, 15)}
    assert await storage.write_spend(batch) == 34
    await assert_rollups_equal_ledger(storage)
    quarter = await rollup(storage, hourly=False)
    assert quarter[("all", "", T0.replace(minute=45))][1] == 15     # 10:45:54 ... 10:59:12
    assert {b for _, _, b in await rollup(storage, hourly=True)} == {
        T0.replace(minute=0), T0.replace(hour=11, minute=0)}
    assert {level for level, _, _ in quarter} == set(LEVELS)


async def test_a_replayed_batch_adds_nothing(storage: SqlStorage) -> None:
    batch = rows("r", 34)
    assert await storage.write_spend(batch[:20]) == 20
    before_quarter, before_hour = await rollup(storage, False), await rollup(storage, True)
    assert await storage.write_spend(batch[:20]) == 0                # replayed whole
    assert await storage.write_spend(batch[5:10] + batch[5:10]) == 0  # and twice in one batch
    assert (await rollup(storage, False), await rollup(storage, True)) == (
        before_quarter, before_hour)
    # a batch half replayed, half new (an adopted segment beside a retry), one id twice
    assert await storage.write_spend(batch[10:] + batch[25:26]) == 14
    await assert_rollups_equal_ledger(storage)
    assert (await rollup(storage, False))[("all", "", T0.replace(hour=11, minute=15))][1] == 1


async def test_corrections_still_move_the_rollups(storage: SqlStorage) -> None:
    """The update and delete triggers stay: a regenerated key's rows move its sums."""
    assert await storage.write_spend(rows("r", 34)) == 34
    async with storage.engine.begin() as conn:
        await conn.execute(spend_logs.update().where(spend_logs.c.api_key == token(1))
                           .values(api_key=token(9), model="moved"))
        await conn.execute(spend_logs.delete().where(spend_logs.c.api_key == token(2)))
    await assert_rollups_equal_ledger(storage)
    assert not [k for k in await rollup(storage, False) if k[1] in (token(1), token(2))]


async def test_down_to_0011_the_insert_triggers_are_back(db_url: str) -> None:
    """Downgrading 0012 restores SQLite's row triggers, so an older release's writes (which
    leave the rollups to them) stay counted; up again they go."""
    if not db_url.startswith("sqlite"):
        pytest.skip("Postgres's triggers are unchanged by 0012")
    await asyncio.to_thread(command.downgrade, migrate._config(db_url), "0011")
    store = SqlStorage.from_url(db_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(spend_logs.insert(), [_as_values(r) for r in rows("old", 34)])
        await assert_rollups_equal_ledger(store)
    finally:
        await store.close()
    await asyncio.to_thread(migrate.upgrade, db_url)
    store = SqlStorage.from_url(db_url)
    try:
        assert await store.write_spend(rows("new", 34)) == 34       # counted once, not twice
        await assert_rollups_equal_ledger(store)
    finally:
        await store.close()


def _as_values(row: SpendRow) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in spend_logs.columns}

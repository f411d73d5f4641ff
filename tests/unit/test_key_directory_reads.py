"""KeyDirectory (and EndUsers): requests that miss on the same key at once share one database
read (an expired entry under load sent every request in flight to the database, one query
each); an error reaches each of them; a change made meanwhile is not served from the older
read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from faregate.keys.directory import KeyDirectory
from faregate.keys.end_users import EndUsers
from faregate.records import EndUserRecord, KeyRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class SlowRows:
    """get_key answers when `release` is set; counts the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None
        self.name = "first"

    async def get_key(self, token: str) -> KeyRecord | None:
        self.reads += 1
        name = self.name
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return KeyRecord(token=token, key_name=name, created_at=T0, updated_at=T0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_requests_missing_on_one_key_at_once_share_one_read() -> None:
    rows, clock = SlowRows(), Clock()
    keys = KeyDirectory(rows, clock, 60.0)    # type: ignore[arg-type]
    waiting = [asyncio.create_task(keys.get("t")) for _ in range(32)]
    await asyncio.sleep(0)
    rows.release.set()
    found = await asyncio.gather(*waiting)
    assert rows.reads == 1 and all(k is not None and k.key_name == "first" for k in found)
    clock.now = 61.0                          # expired: the next burst reads once more
    found = await asyncio.gather(*(keys.get("t") for _ in range(32)))
    assert rows.reads == 2 and all(k is not None for k in found)


async def test_the_reads_error_reaches_every_request_waiting_for_it() -> None:
    rows = SlowRows()
    rows.fail = RuntimeError("the database said no")
    keys = KeyDirectory(rows, Clock(), 60.0)  # type: ignore[arg-type]
    waiting = [asyncio.create_task(keys.get("t")) for _ in range(5)]
    await asyncio.sleep(0)
    rows.release.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert rows.reads == 1
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    rows.fail = None
    assert await keys.get("t") is not None and rows.reads == 2     # nothing cached from it


async def test_a_cancelled_reader_leaves_the_others_to_read_again() -> None:
    rows = SlowRows()
    keys = KeyDirectory(rows, Clock(), 60.0)  # type: ignore[arg-type]
    reader = asyncio.create_task(keys.get("t"))
    await asyncio.sleep(0)
    other = asyncio.create_task(keys.get("t"))
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    rows.release.set()
    found = await other
    assert found is not None and rows.reads == 2


async def test_a_key_forgotten_during_a_read_is_read_again_by_later_requests() -> None:
    rows = SlowRows()
    keys = KeyDirectory(rows, Clock(), 60.0)  # type: ignore[arg-type]
    before = asyncio.create_task(keys.get("t"))
    await asyncio.sleep(0)
    keys.forget("t")                          # an admin change while the read is on its way
    rows.name = "changed"
    after = asyncio.create_task(keys.get("t"))
    await asyncio.sleep(0)
    rows.release.set()
    assert (await after).key_name == "changed"  # type: ignore[union-attr]
    await before
    assert rows.reads == 2


class SlowEndUsers:
    """get_or_create_end_user (a write on SQLite) answers when `release` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def get_or_create_end_user(self, end_user_id: str,
                                     budget_id: str | None = None) -> EndUserRecord:
        self.calls += 1
        await self.release.wait()
        return EndUserRecord(end_user_id)

    async def get_budget(self, budget_id: str) -> None:
        return None


async def test_requests_for_one_end_user_at_once_share_one_get_or_create() -> None:
    store, clock = SlowEndUsers(), Clock()
    end_users = EndUsers(store, clock, 60.0)    # type: ignore[arg-type]
    waiting = [asyncio.create_task(end_users.get("u1")) for _ in range(32)]
    await asyncio.sleep(0)
    store.release.set()
    found = await asyncio.gather(*waiting)
    assert store.calls == 1 and {record.end_user_id for record, _ in found} == {"u1"}
    clock.now = 61.0
    await end_users.get("u1")
    assert store.calls == 2

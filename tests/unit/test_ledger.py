"""faregate.spend.ledger.LedgerWriter against a real SQLite database."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from faregate.records import KeyRecord, MemberRecord, SpendRow, TeamRecord
from faregate.spend import ledger
from faregate.spend.journal import SpendJournal
from faregate.spend.ledger import MAX_BATCH, LedgerWriter
from faregate.storage import migrate
from faregate.storage.database import SpendQuery, SqlStorage
from faregate.storage.protocols import SpendWritten

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
KEY_A, KEY_B = "a" * 64, "b" * 64


def row(request_id: str, api_key: str = KEY_A, spend: int = 100, i: int = 0) -> SpendRow:
    start = T0 + timedelta(seconds=i)
    return SpendRow(request_id=request_id, api_key=api_key, key_alias=None, model="m",
                    upstream="http://up/v1#m", call_type="chat_completion", prompt_tokens=10,
                    completion_tokens=5, spend_nanos=spend, start_time=start,
                    end_time=start + timedelta(seconds=1), status="success")


async def add_key(storage: SqlStorage, token: str) -> None:
    await storage.insert_key(KeyRecord(token=token, key_name="sk-...x", created_at=T0,
                                       updated_at=T0))


async def key_spend(storage: SqlStorage, token: str) -> int:
    record = await storage.get_key(token)
    assert record is not None
    return record.spend_nanos


async def row_sum(storage: SqlStorage, token: str) -> int:
    rows = await storage.spend_logs(SpendQuery(api_key=token, page_size=10_000))
    return sum(r["spend_nanos"] for r in rows)


async def flush(writer: LedgerWriter) -> None:
    await asyncio.wait_for(writer.flush(), 10)      # a writer that never drains fails, not hangs


async def close(writer: LedgerWriter) -> None:
    await asyncio.wait_for(writer.close(), 10)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spend-journal"


@pytest.fixture
async def storage(url: str) -> AsyncIterator[SqlStorage]:
    await asyncio.to_thread(migrate.upgrade, url)
    store = SqlStorage.from_url(url)
    await add_key(store, KEY_A)
    await add_key(store, KEY_B)
    try:
        yield store
    finally:
        await store.close()


async def test_flush_writes_rows_and_key_spend_is_their_sum(
        storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    spends = {KEY_A: [100, 250, 1], KEY_B: [7, 3_000_000_000_000]}
    n = 0
    for token, amounts in spends.items():
        for amount in amounts:
            writer.record(row(f"req-{n}", token, amount, n))
            n += 1
    assert writer.pending == n
    assert await storage.total_spend() == 0              # record() alone writes nothing

    await flush(writer)
    assert writer.pending == 0
    assert writer.written == n
    for token, amounts in spends.items():
        assert await key_spend(storage, token) == sum(amounts)
        assert await row_sum(storage, token) == sum(amounts)
    assert await storage.total_spend() == sum(sum(a) for a in spends.values())


async def test_close_without_start_writes_everything(storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    for i in range(5):
        writer.record(row(f"r{i}", spend=10, i=i))
    await close(writer)
    assert writer.pending == 0
    assert await key_spend(storage, KEY_A) == 50


async def test_background_writer_and_close(storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 0.01, SpendJournal(spool))
    await writer.start()
    for i in range(20):
        writer.record(row(f"r{i}", spend=i, i=i))
        if i % 5 == 0:
            await asyncio.sleep(0)
    await close(writer)
    assert writer.pending == 0
    assert writer.written == 20
    assert await key_spend(storage, KEY_A) == sum(range(20)) == await row_sum(storage, KEY_A)


async def test_steady_traffic_is_written_once_per_interval_not_back_to_back(
        storage: SqlStorage, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows keep arriving while a write runs: the writer takes them at its next round, so
    the database sees one transaction (and the journal one segment) per interval, not one
    per write's duration (which at c=1 was a transaction every ~15 ms)."""
    writes = 0
    write_rows = storage.write_spend_rows

    async def counted(rows: list[SpendRow]) -> SpendWritten:
        nonlocal writes
        writes += 1
        return await write_rows(rows)

    monkeypatch.setattr(storage, "write_spend_rows", counted)
    writer = LedgerWriter(storage, 0.2, SpendJournal(spool))
    await writer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for i in range(300):                       # below MAX_BATCH: only the timer wakes it
            writer.record(row(f"r{i}", spend=1, i=i))
            await asyncio.sleep(0.004)
        elapsed = loop.time() - started
        assert writes <= elapsed / 0.2 + 2, (writes, elapsed)
    finally:
        await close(writer)
    assert writer.written == 300
    assert await key_spend(storage, KEY_A) == 300 == await row_sum(storage, KEY_A)


async def test_a_full_batch_wakes_the_writer(storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 3600, SpendJournal(spool))   # the timer alone would never fire
    await writer.start()
    try:
        for i in range(MAX_BATCH):
            writer.record(row(f"r{i}", spend=1, i=i))
        async with asyncio.timeout(10):
            while writer.written < MAX_BATCH:
                await asyncio.sleep(0.005)
        assert await key_spend(storage, KEY_A) == MAX_BATCH
    finally:
        await close(writer)


async def test_flush_splits_large_queues_into_batches(storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    n = 2 * MAX_BATCH + 17
    for i in range(n):
        writer.record(row(f"r{i}", KEY_A if i % 2 else KEY_B, spend=3, i=i))
    await flush(writer)
    assert writer.written == n
    assert await storage.total_spend() == 3 * n
    assert await key_spend(storage, KEY_A) + await key_spend(storage, KEY_B) == 3 * n


async def test_recording_the_same_rows_again_changes_nothing(
        storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    rows = [row(f"r{i}", spend=40, i=i) for i in range(3)]
    for r in rows:
        writer.record(r)
    await flush(writer)
    for r in rows:                                       # a retried batch
        writer.record(r)
    await flush(writer)
    assert writer.written == 3
    assert await key_spend(storage, KEY_A) == 120 == await row_sum(storage, KEY_A)


async def test_record_period_reaches_the_key(storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    reset_at = T0 + timedelta(days=1)
    writer.record_period(KEY_A, 12_345, reset_at)
    writer.record_period(KEY_A, 23_456, reset_at + timedelta(days=1))   # the newest wins
    await flush(writer)
    record = await storage.get_key(KEY_A)
    assert record is not None
    assert record.period_base_nanos == 23_456
    assert record.budget_reset_at == reset_at + timedelta(days=1)


async def test_record_period_reaches_every_level(storage: SqlStorage, spool: Path) -> None:
    """Periods by scope: a key's (by "key:<token>" as by its bare token), a team's, a member's,
    an end user's; a malformed scope is refused at once, not at every flush."""
    now = datetime.now(UTC)
    await storage.insert_team(TeamRecord("t1", created_at=now, updated_at=now))
    await storage.add_team_member(MemberRecord("t1", "u1", created_at=now))
    await storage.get_or_create_end_user("c1")
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    reset_at = T0 + timedelta(days=1)
    writer.record_period(f"key:{KEY_A}", 11, reset_at)
    writer.record_period("team:t1", 22, reset_at)
    writer.record_period("member:t1:u1", 33, reset_at)
    writer.record_period("end_user:c1", 44, None)
    writer.record_period("team:missing", 55, None)          # gone since: nothing to do
    with pytest.raises(ValueError):
        writer.record_period("squad:t1", 1, None)
    await flush(writer)
    key_record = await storage.get_key(KEY_A)
    assert key_record is not None and key_record.period_base_nanos == 11
    team = await storage.get_team("t1")
    assert team is not None and (team.period_base_nanos, team.budget_reset_at) == (22, reset_at)
    member = await storage.get_team_member("t1", "u1")
    assert member is not None and member.period_base_nanos == 33
    end_user = await storage.get_end_user("c1")
    assert end_user is not None and end_user.period_base_nanos == 44


async def test_rows_survive_a_failed_write(url: str, spool: Path) -> None:
    store = SqlStorage.from_url(url)                     # no tables yet: writes fail
    try:
        writer = LedgerWriter(store, 60, SpendJournal(spool))
        for i in range(4):
            writer.record(row(f"r{i}", spend=25, i=i))
        writer.record_period(KEY_A, 0, T0)
        with pytest.raises(Exception, match="faregate_spend_logs"):
            await flush(writer)
        assert writer.pending == 4
        assert writer.written == 0
        with pytest.raises(Exception, match="faregate_spend_logs"):
            await flush(writer)                         # and again: still nothing lost
        assert writer.pending == 4

        await asyncio.to_thread(migrate.upgrade, url)
        await add_key(store, KEY_A)
        await flush(writer)
        assert writer.pending == 0
        assert writer.written == 4
        assert await key_spend(store, KEY_A) == 100 == await row_sum(store, KEY_A)
        record = await store.get_key(KEY_A)
        assert record is not None and record.budget_reset_at == T0   # the period too
    finally:
        await store.close()


async def test_background_writer_retries_until_the_database_is_back(spool: Path, 
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = SqlStorage.from_url(url)
    writer = LedgerWriter(store, 0.005, SpendJournal(spool))
    try:
        with caplog.at_level(logging.WARNING, logger="faregate.ledger"):
            await writer.start()
            for i in range(3):
                writer.record(row(f"r{i}", spend=5, i=i))
            async with asyncio.timeout(10):
                while "spend ledger write failed" not in caplog.text:
                    await asyncio.sleep(0.005)
        assert writer.pending == 3                       # kept for the retry
        await asyncio.to_thread(migrate.upgrade, url)
        await add_key(store, KEY_A)
        async with asyncio.timeout(10):
            while writer.pending:
                await asyncio.sleep(0.01)
        assert writer.written == 3
        # (not the key's spend: the writer may get in between the migration and add_key)
        assert await row_sum(store, KEY_A) == 15
    finally:
        await close(writer)
        await store.close()


# --- the journal: what survives a crash -------------------------------------------------

_CRASHING_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from faregate.records import SpendRow
from faregate.spend.journal import SpendJournal

journal = SpendJournal(Path(sys.argv[1]))
t = datetime(2024, 5, 1, 12, tzinfo=UTC)
for i in range(int(sys.argv[2])):
    journal.append(SpendRow(f"killed-{i}", sys.argv[3], None, "m", "u", "chat_completion",
                            1, 2, 7, t, t, "success"))
if len(sys.argv) > 4:       # a write cut short by the crash
    os.write(os.open(next(Path(sys.argv[1]).glob("*.spend")), os.O_WRONLY | os.O_APPEND),
             b'["torn", "')
os.kill(os.getpid(), signal.SIGKILL)
"""


def crash_after_recording(spool: Path, n: int, token: str, torn: bool = False) -> None:
    """A real process records n rows and is SIGKILLed before any flush."""
    args = [sys.executable, "-c", _CRASHING_WRITER, str(spool), str(n), token]
    proc = subprocess.run(args + (["torn"] if torn else []), timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL


async def test_rows_of_a_killed_process_are_replayed_at_the_next_start(
        storage: SqlStorage, spool: Path) -> None:
    crash_after_recording(spool, 30, KEY_A)
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    await writer.start()
    assert writer.pending == 30
    await close(writer)
    assert writer.written == 30
    assert await key_spend(storage, KEY_A) == 30 * 7 == await row_sum(storage, KEY_A)
    assert list(spool.glob("*.spend")) == []             # nothing left to replay again


async def test_a_line_torn_by_the_crash_is_skipped_and_the_rest_replayed(
        storage: SqlStorage, spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    crash_after_recording(spool, 3, KEY_A, torn=True)
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    with caplog.at_level(logging.ERROR, logger="faregate.journal"):
        await writer.start()
    assert "line 4 is unreadable" in caplog.text
    await close(writer)
    assert await key_spend(storage, KEY_A) == 21


async def test_a_live_writers_segments_are_not_adopted(storage: SqlStorage, spool: Path) -> None:
    owner = LedgerWriter(storage, 60, SpendJournal(spool))
    owner.record(row("owned", spend=9))
    other = LedgerWriter(storage, 60, SpendJournal(spool))   # a second worker, same directory
    await other.start()
    assert other.pending == 0
    await close(other)
    await close(owner)
    assert await key_spend(storage, KEY_A) == 9            # written once, by its owner


async def test_replaying_rows_the_database_already_has_counts_them_once(
        storage: SqlStorage, spool: Path) -> None:
    first = LedgerWriter(storage, 60, SpendJournal(spool))
    for i in range(5):
        first.record(row(f"r{i}", spend=11, i=i))
    await flush(first)
    crash_after_recording(spool, 5, KEY_A)               # different ids: killed-0..4
    for i in range(5):                                   # and the same five again, unsealed
        first.record(row(f"r{i}", spend=11, i=i))
    await close(first)
    second = LedgerWriter(storage, 60, SpendJournal(spool))
    await second.start()
    await close(second)
    assert await key_spend(storage, KEY_A) == 5 * 11 + 5 * 7 == await row_sum(storage, KEY_A)


async def test_close_with_the_database_down_leaves_rows_on_disk_for_the_next_start(
        url: str, spool: Path) -> None:
    store = SqlStorage.from_url(url)                     # no tables yet: writes fail
    try:
        writer = LedgerWriter(store, 60, SpendJournal(spool))
        for i in range(4):
            writer.record(row(f"r{i}", spend=25, i=i))
        with pytest.raises(Exception, match="faregate_spend_logs"):
            await close(writer)
        assert len(list(spool.glob("*.spend"))) == 1

        await asyncio.to_thread(migrate.upgrade, url)
        await add_key(store, KEY_A)
        replay = LedgerWriter(store, 60, SpendJournal(spool))
        await replay.start()
        assert replay.pending == 4
        await close(replay)
        assert await key_spend(store, KEY_A) == 100 == await row_sum(store, KEY_A)
    finally:
        await store.close()


async def test_flush_beside_the_background_writer_writes_each_row_once(
        storage: SqlStorage, spool: Path) -> None:
    writer = LedgerWriter(storage, 0.001, SpendJournal(spool))
    await writer.start()
    try:
        for i in range(300):
            writer.record(row(f"r{i}", spend=2, i=i))
            if i % 7 == 0:
                await asyncio.gather(flush(writer), flush(writer))
    finally:
        await close(writer)
    assert writer.written == 300
    assert await key_spend(storage, KEY_A) == 600 == await row_sum(storage, KEY_A)


# --- rows other processes left: adopted, held per key, credited -------------------------

async def test_keys_with_rows_left_behind_are_held_until_those_rows_are_written(
        storage: SqlStorage, spool: Path) -> None:
    crash_after_recording(spool, 6, KEY_A)
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    credited: list[tuple[str, int]] = []
    writer.holds.on_written(lambda token, nanos: credited.append((token, nanos)))
    await writer.adopt_orphans()
    assert writer.holds.held(KEY_A)
    assert not writer.holds.held(KEY_B)                  # nothing pending: never waits
    assert await writer.holds.wait(KEY_B, 0.01)
    assert not await writer.holds.wait(KEY_A, 0.01)      # not written yet
    waiting = asyncio.ensure_future(writer.holds.wait(KEY_A, 10))
    await flush(writer)
    assert await waiting
    assert not writer.holds.held(KEY_A)
    assert credited == [(KEY_A, 6 * 7)]
    assert await key_spend(storage, KEY_A) == 42
    await close(writer)


async def test_an_orphan_source_is_made_durable_written_and_held(
        storage: SqlStorage, spool: Path) -> None:
    crash_after_recording(spool, 2, KEY_A)
    handed = [row("checkpoint-1", KEY_B, spend=500), row("checkpoint-2", KEY_B, spend=5)]
    calls: list[int] = []

    def source() -> list[SpendRow]:
        calls.append(1)
        return handed if len(calls) == 1 else []

    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    writer.add_orphan_source(source)
    await writer.start()
    try:
        assert calls == [1]
        assert writer.pending == 4                       # the segment's 2 and the source's 2
        assert writer.holds.held(KEY_A) and writer.holds.held(KEY_B)
        # On disk before anything is written: a crash now would not lose them.
        on_disk = "".join(p.read_text() for p in spool.glob("*.spend"))
        assert "checkpoint-1" in on_disk and "checkpoint-2" in on_disk
        await flush(writer)
        assert not writer.holds.held(KEY_B)
        assert await key_spend(storage, KEY_B) == 505 == await row_sum(storage, KEY_B)
        assert await key_spend(storage, KEY_A) == 14
    finally:
        await close(writer)


async def test_segments_orphaned_while_running_are_picked_up(
        storage: SqlStorage, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger, "ORPHAN_SCAN_S", 0.05)
    writer = LedgerWriter(storage, 0.01, SpendJournal(spool))
    await writer.start()
    try:
        # A predecessor sharing the directory stops (killed) after this one started.
        crash_after_recording(spool, 5, KEY_B)
        async with asyncio.timeout(10):
            while await key_spend(storage, KEY_B) != 35:
                await asyncio.sleep(0.02)
    finally:
        await close(writer)
    assert await row_sum(storage, KEY_B) == 35


async def test_a_database_error_that_is_not_about_a_row_is_retried_not_dead_lettered(
        url: str, spool: Path) -> None:
    store = SqlStorage.from_url(url)                     # no tables yet
    try:
        writer = LedgerWriter(store, 60, SpendJournal(spool))
        writer.record(row("r0", spend=3))
        with pytest.raises(Exception, match="faregate_spend_logs"):
            await flush(writer)
        assert writer.dead_lettered == 0 and writer.pending == 1
    finally:
        await store.close()


class _CheckViolation(Exception):
    sqlstate = "23514"          # what a CHECK constraint says: a refusal of the row's content


class _RefusesOneRow:
    """The storage, refusing any batch that holds one given request id (copy included)."""

    def __init__(self, storage: SqlStorage, refused: str) -> None:
        self._storage, self._refused = storage, refused
        self.calls = 0

    async def write_spend_rows(self, rows: list[SpendRow]) -> SpendWritten:
        self.calls += 1
        if any(r.request_id == self._refused for r in rows):
            raise _CheckViolation("new row violates check constraint")
        return await self._storage.write_spend_rows(rows)

    async def start_budget_period(self, token: str, base: int, reset_at: datetime) -> None:
        await self._storage.start_budget_period(token, base, reset_at)


async def test_a_refusal_the_cheap_look_misses_is_found_by_halving_the_batch(
        storage: SqlStorage, spool: Path) -> None:
    store = _RefusesOneRow(storage, "r137")
    writer = LedgerWriter(store, 60, SpendJournal(spool))    # type: ignore[arg-type]
    for i in range(300):
        writer.record(row(f"r{i}", KEY_A if i % 3 else KEY_B, spend=2, i=i))
    await flush(writer)
    assert writer.pending == 0 and writer.written == 299
    assert store.calls < 40                               # halving, not row by row
    (letter,) = writer.dead_letters.read()
    assert (letter.row.request_id, letter.sqlstate, letter.stored) == ("r137", "23514", False)
    # Not even its copy could be stored: neither the ledger nor the key counts it.
    for token in (KEY_A, KEY_B):
        assert await key_spend(storage, token) == await row_sum(storage, token)
    assert await storage.total_spend() == 2 * 299
    await close(writer)

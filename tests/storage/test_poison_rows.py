"""A spend row the database refuses for its content holds back no other row (issue 13, finding
2), on SQLite and on the real Postgres: it is found by halving the batch, kept in the
dead-letter file with the reason, a storable copy counts its spend, and `retry` writes what was
not counted."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from faregate.records import KeyRecord, MemberRecord, SpendRow, TeamRecord, UserRecord
from faregate.spend import dead_letters
from faregate.spend.dead_letters import DEAD_LETTER_STATUS, DeadLetters
from faregate.spend.journal import SpendJournal
from faregate.spend.ledger import LedgerWriter
from faregate.storage.database import SpendQuery, SqlStorage

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
KEY_A, KEY_B = "a" * 64, "b" * 64
LONE_SURROGATE = "openai/x\ud800y"       # not Unicode: no database stores it


def row(request_id: str, api_key: str = KEY_A, spend: int = 100, model: str = "m",
        i: int = 0) -> SpendRow:
    start = T0 + timedelta(seconds=i)
    return SpendRow(request_id=request_id, api_key=api_key, key_alias=None, model=model,
                    upstream="http://up/v1#m", call_type="chat_completion", prompt_tokens=10,
                    completion_tokens=5, spend_nanos=spend, start_time=start,
                    end_time=start + timedelta(seconds=1), status="success")


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[SqlStorage]:
    store = SqlStorage.from_url(db_url)
    for token in (KEY_A, KEY_B):
        await store.insert_key(KeyRecord(token=token, key_name="sk-...x", created_at=T0,
                                         updated_at=T0))
    try:
        yield store
    finally:
        await store.close()


def bad_models(db_url: str) -> list[str]:
    models = [LONE_SURROGATE]
    if db_url.startswith("postgres"):
        # Postgres also refuses NUL in text (22021) and text longer than the column (22001).
        models += ["openai/x\x00y", "m" * 300]
    return models


async def ledger_rows(storage: SqlStorage, token: str) -> dict[str, dict]:
    rows = await storage.spend_logs(SpendQuery(api_key=token, page_size=10_000))
    return {r["request_id"]: r for r in rows}


async def key_spend(storage: SqlStorage, token: str) -> int:
    record = await storage.get_key(token)
    assert record is not None
    return record.spend_nanos


async def test_a_refused_row_is_dead_lettered_and_every_other_row_written(
        storage: SqlStorage, db_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "journal"
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    bad = bad_models(db_url)
    good = [row(f"good-{i}", KEY_A if i % 2 else KEY_B, spend=10 + i, i=i) for i in range(40)]
    poison = [row(f"bad-{n}", KEY_A, spend=1000 + n, model=m) for n, m in enumerate(bad)]
    for i, r in enumerate(good):
        writer.record(r)
        if i in (3, 20, 37) and poison:
            writer.record(poison.pop())            # bad rows in the middle of the batch
    for r in poison:
        writer.record(r)
    await asyncio.wait_for(writer.flush(), 30)     # the old writer raised here, forever

    assert writer.pending == 0
    rows_a, rows_b = await ledger_rows(storage, KEY_A), await ledger_rows(storage, KEY_B)
    for r in good:                                  # every good row, as recorded
        written = (rows_a if r.api_key == KEY_A else rows_b)[r.request_id]
        assert (written["spend_nanos"], written["model"], written["status"]) == \
            (r.spend_nanos, r.model, "success")
    for n, model in enumerate(bad):                 # each bad row: a marked, storable copy
        copy = rows_a[f"bad-{n}"]
        assert copy["status"] == DEAD_LETTER_STATUS and copy["spend_nanos"] == 1000 + n
        assert copy["model"] != model
    # The key's spend is still the sum of its rows, and counts the refused rows.
    assert await key_spend(storage, KEY_A) == sum(r["spend_nanos"] for r in rows_a.values()) \
        == sum(r.spend_nanos for r in good if r.api_key == KEY_A) + \
        sum(1000 + n for n in range(len(bad)))
    assert await key_spend(storage, KEY_B) == sum(r["spend_nanos"] for r in rows_b.values())

    letters = {letter.row.request_id: letter for letter in DeadLetters(spool).read()}
    assert set(letters) == {f"bad-{n}" for n in range(len(bad))}
    for n, model in enumerate(bad):
        letter = letters[f"bad-{n}"]
        assert letter.row.model == model           # the original, exactly
        assert letter.stored and letter.reason
    if db_url.startswith("postgres"):
        assert letters["bad-1"].sqlstate == "22021"  # NUL
        assert letters["bad-2"].sqlstate == "22001"  # too long
    assert writer.dead_lettered == len(bad)
    await writer.close()

    # A restart replays nothing again: the segment went once the batch was through.
    again = LedgerWriter(storage, 60, SpendJournal(spool))
    await again.start()
    assert again.pending == 0
    await again.close()
    assert len(DeadLetters(spool).read()) == len(bad)


async def test_retry_writes_what_was_not_counted_and_resolve_drops_entries(
        storage: SqlStorage, tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path)
    # Refused before even a copy could be stored (say its key row was missing then).
    await asyncio.to_thread(letters.add, dead_letters.DeadLetter(
        row("later-ok", spend=7), "SQLSTATE 23503: ...", "23503", False, T0))
    await asyncio.to_thread(letters.add, dead_letters.DeadLetter(
        row("never-ok", spend=9, model=LONE_SURROGATE), "UnicodeEncodeError", None, False, T0))
    await asyncio.to_thread(letters.add, dead_letters.DeadLetter(   # the same id again: once
        row("never-ok", spend=9, model=LONE_SURROGATE), "UnicodeEncodeError", None, False, T0))
    assert letters.count() == 2

    done = await dead_letters.retry(letters, storage)
    assert (done.originals, done.copies, done.refused) == (["later-ok"], ["never-ok"], [])
    rows = await ledger_rows(storage, KEY_A)
    assert rows["later-ok"]["status"] == "success"
    assert rows["never-ok"]["status"] == DEAD_LETTER_STATUS
    assert await key_spend(storage, KEY_A) == 16
    left = letters.read()
    assert [(x.row.request_id, x.stored) for x in left] == [("never-ok", True)]
    assert left[0].row.model == LONE_SURROGATE      # the original stays until resolved

    assert (await dead_letters.retry(letters, storage)).copies == []   # nothing left to do
    assert await key_spend(storage, KEY_A) == 16
    assert letters.remove({"never-ok"}) == 1
    assert letters.count() == 0


_KILLED_WITH_A_BAD_ROW = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from faregate.records import SpendRow
from faregate.spend.journal import SpendJournal

journal = SpendJournal(Path(sys.argv[1]))
t = datetime(2024, 5, 1, 12, tzinfo=UTC)
for i in range(20):
    model = "openai/x\\ud800y" if i == 7 else "m"
    journal.append(SpendRow(f"left-{i}", sys.argv[2], None, model, "u", "chat_completion",
                            1, 2, 10, t, t, "success"))
os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_a_bad_row_left_by_a_killed_process_does_not_block_the_replay(
        storage: SqlStorage, tmp_path: Path) -> None:
    spool = tmp_path / "journal"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_WITH_A_BAD_ROW, str(spool), KEY_A)
    assert await proc.wait() == -signal.SIGKILL
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    await writer.start()                                 # the restart used to fail forever
    assert writer.holds.held(KEY_A) and writer.pending == 20
    await asyncio.wait_for(writer.flush(), 30)
    assert not writer.holds.held(KEY_A)                 # the key is not held forever either
    rows = await ledger_rows(storage, KEY_A)
    assert len(rows) == 20 and rows["left-7"]["status"] == DEAD_LETTER_STATUS
    assert await key_spend(storage, KEY_A) == 200
    assert [x.row.request_id for x in DeadLetters(spool).read()] == ["left-7"]
    await writer.close()
    assert list(spool.glob("*.spend")) == []


async def test_a_bad_end_user_id_is_dead_lettered_and_every_level_adds_up(
        storage: SqlStorage, db_url: str, tmp_path: Path) -> None:
    """Payer ids come from clients (an end user is a header or the body's `user`): one that no
    database stores is set aside like any bad row, its copy (the id escaped and cut to its
    column) still counts at every level, and each level stays the sum of its rows."""
    await storage.insert_team(TeamRecord("t1", created_at=T0, updated_at=T0))
    await storage.insert_user(UserRecord("u1", created_at=T0, updated_at=T0))
    await storage.add_team_member(MemberRecord("t1", "u1", created_at=T0))
    bad_ids = ["cust\ud800"] + (["cust\x00", "c" * 300] if db_url.startswith("postgres") else [])
    writer = LedgerWriter(storage, 60, SpendJournal(tmp_path / "journal"))
    rows = [replace(row(f"p{i}", spend=10 + i, i=i), user_id="u1", team_id="t1",
                    end_user=f"cust-{i % 3}") for i in range(30)]
    rows += [replace(row(f"bad-{n}", spend=1000, i=n), user_id="u1", team_id="t1",
                     end_user=end_user) for n, end_user in enumerate(bad_ids)]
    for r in rows:
        writer.record(r)
    await asyncio.wait_for(writer.flush(), 30)
    await writer.close()

    written = await ledger_rows(storage, KEY_A)
    assert len(written) == len(rows)
    for n in range(len(bad_ids)):
        copy = written[f"bad-{n}"]
        assert copy["status"] == DEAD_LETTER_STATUS and copy["team_id"] == "t1"
        assert copy["end_user"] is not None and len(copy["end_user"]) <= 256
    total = sum(r.spend_nanos for r in rows)
    assert await key_spend(storage, KEY_A) == total
    assert (await storage.get_team("t1")).spend_nanos == total  # type: ignore[union-attr]
    assert (await storage.get_user("u1")).spend_nanos == 0  # type: ignore[union-attr]
    assert (await storage.get_team_member("t1", "u1")).spend_nanos == total  # type: ignore
    for i in range(3):
        customer = await storage.get_end_user(f"cust-{i}")
        assert customer is not None
        assert customer.spend_nanos == sum(r.spend_nanos for r in rows
                                           if r.end_user == f"cust-{i}")
    for copy in (written[f"bad-{n}"] for n in range(len(bad_ids))):
        customer = await storage.get_end_user(copy["end_user"])
        assert customer is not None and customer.spend_nanos == 1000


async def test_a_row_whose_error_cannot_be_stored_keeps_its_attempts_and_a_storable_error(
        storage: SqlStorage, db_url: str, tmp_path: Path) -> None:
    """Should an unstorable error text reach the ledger (row_error's rules bypassed), the row
    is dead-lettered like any other: the copy keeps the attempts and an escaped error cut to
    the column, and the letter keeps both as recorded."""
    spool = tmp_path / "journal"
    writer = LedgerWriter(storage, 60, SpendJournal(spool))
    errors = ["upstream_error: x\ud800y"]
    if db_url.startswith("postgres"):
        errors += ["upstream_error: x\x00y", "e" * 1000]
    bad = [replace(row(f"err-{n}", spend=50 + n), status="failure", attempts=3, error=e)
           for n, e in enumerate(errors)]
    writer.record(row("fine", spend=7))
    for r in bad:
        writer.record(r)
    await asyncio.wait_for(writer.close(), 30)
    rows = await ledger_rows(storage, KEY_A)
    assert set(rows) == {"fine", *(r.request_id for r in bad)}
    for r in bad:
        copy = await storage.report_log(r.request_id)
        assert copy is not None and copy.status == DEAD_LETTER_STATUS
        assert copy.attempts == 3
        assert copy.error is not None and len(copy.error) <= 400
        assert "\x00" not in copy.error
        copy.error.encode("utf-8")
    letters = {d.row.request_id: d.row for d in DeadLetters(spool).read()}
    assert {k: (v.attempts, v.error) for k, v in letters.items()} == {
        r.request_id: (3, r.error) for r in bad}
    assert await key_spend(storage, KEY_A) == 7 + sum(r.spend_nanos for r in bad)

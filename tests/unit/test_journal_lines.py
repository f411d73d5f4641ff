"""Journal lines written before the payer fields existed (issue 14), or before attempts and
error (issue 16), still decode, and lines with them round-trip (spend/journal.py keeps a row as
a JSON list in SpendRow's order); a journal the previous release left behind replays into the
upgraded ledger."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson

from faregate.records import KeyRecord, SpendRow
from faregate.spend.journal import SpendJournal, _decode_lines, _encode
from faregate.spend.ledger import LedgerWriter
from faregate.storage import migrate
from faregate.storage.database import SqlStorage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def read(path: Path, lines: list[bytes]) -> list[SpendRow]:
    path.write_bytes(b"".join(lines))
    return list(_decode_lines(path))


def test_a_line_from_before_the_payer_fields_decodes(tmp_path: Path) -> None:
    # exactly what the previous release wrote: twelve values, no payers
    old = orjson.dumps(["r1", "k" * 64, "alias", "m", "u", "chat_completion", 3, 4, 99,
                        T0.isoformat(), T0.isoformat(), "success"]) + b"\n"
    (got,) = read(tmp_path / "old.spend", [old])
    assert got == SpendRow("r1", "k" * 64, "alias", "m", "u", "chat_completion", 3, 4, 99,
                           T0, T0, "success", attempts=None)
    assert (got.user_id, got.team_id, got.organization_id, got.end_user) == (
        None, None, None, None)
    assert (got.attempts, got.error) == (None, None)     # not recorded, rather than 1


def test_payers_round_trip_beside_old_lines(tmp_path: Path) -> None:
    new = SpendRow("r2", "k" * 64, None, "m", "u", "chat_completion", 1, 2, 5, T0, T0,
                   "success", user_id="u1", team_id="t1", organization_id="o1",
                   end_user="c1")
    old = orjson.dumps(["r1", "k" * 64, None, "m", "u", "chat_completion", 1, 2, 5,
                        T0.isoformat(), T0.isoformat(), "success"]) + b"\n"
    rows = read(tmp_path / "mixed.spend", [old, _encode(new)])
    assert [r.request_id for r in rows] == ["r1", "r2"]
    assert rows[1] == new


def test_too_short_or_too_long_lines_are_skipped(tmp_path: Path) -> None:
    short = orjson.dumps(["r1", "k", None, "m", "u", "chat_completion", 1, 2, 5,
                          T0.isoformat(), T0.isoformat()]) + b"\n"
    long = orjson.dumps(["r2", "k", None, "m", "u", "chat_completion", 1, 2, 5,
                         T0.isoformat(), T0.isoformat(), "success", "u", "t", "o", "e",
                         2, "boom", "extra"]) + b"\n"
    assert read(tmp_path / "bad.spend", [short, long]) == []


# What the release before attempts and error wrote: sixteen values, the payers last.
PREVIOUS = ["r3", "k" * 64, "alias", "m", "http://up/v1#m", "chat_completion", 3, 4, 99,
            T0.isoformat(), T0.isoformat(), "failure", "u1", "t1", "o1", "c1"]


def test_attempts_and_error_round_trip_beside_the_previous_releases_lines(
        tmp_path: Path) -> None:
    new = SpendRow("r4", "k" * 64, None, "m", "u", "chat_completion", 0, 0, 0, T0, T0,
                   "failure", attempts=3, error="upstream_error: HTTP 503 \ufffd")
    rows = read(tmp_path / "mixed.spend", [orjson.dumps(PREVIOUS) + b"\n", _encode(new)])
    assert rows[1] == new
    assert (rows[0].end_user, rows[0].attempts, rows[0].error) == ("c1", None, None)


async def test_a_journal_the_previous_release_left_replays_after_the_upgrade(
        tmp_path: Path) -> None:
    """A process of the previous release died with rows in its journal; the upgraded gateway
    (schema at head) adopts the segment at start and writes every row, charged to its key,
    with attempts and error not recorded (NULL)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    storage = SqlStorage.from_url(url)
    spool = tmp_path / "spend-journal"
    spool.mkdir()
    oldest = ["r1", "k" * 64, "alias", "m", "http://up/v1#m", "chat_completion", 3, 4, 7,
              T0.isoformat(), T0.isoformat(), "success"]
    # a segment as the previous release left it: unlocked (its owner is dead), rows, zeros
    lines = orjson.dumps(oldest) + b"\n" + orjson.dumps(PREVIOUS) + b"\n"
    (spool / "4242-deadbeef-00000001.spend").write_bytes(lines + b"\0" * 4096)
    try:
        await storage.insert_key(KeyRecord(token="k" * 64, key_name="sk-...k", created_at=T0,
                                           updated_at=T0))
        writer = LedgerWriter(storage, 60, SpendJournal(spool))
        await writer.start()
        await asyncio.wait_for(writer.close(), 10)
        assert writer.written == 2
        assert list(spool.glob("*.spend")) == []
        old, previous = await storage.report_log("r1"), await storage.report_log("r3")
        assert old is not None and previous is not None
        assert (old.spend_nanos, old.attempts, old.error) == (7, None, None)
        assert (previous.status, previous.end_user, previous.attempts, previous.error) == (
            "failure", "c1", None, None)
        key = await storage.get_key("k" * 64)
        assert key is not None and key.spend_nanos == 7 + 99
    finally:
        await storage.close()

"""The journal's mapped segments (spend/journal.py): rows copied into the map are on disk for
the next reader, a segment that outgrows its room goes on by write(), and the unused room
(zeros) is never read as a row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from faregate.records import SpendRow
from faregate.spend import journal as journal_module
from faregate.spend.journal import SpendJournal, _decode_lines

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(i: int) -> SpendRow:
    return SpendRow(f"r{i}", "k" * 64, None, "m", "u#m", "chat_completion", 3, 4, 7 + i, T0, T0,
                    "success")


def test_rows_in_the_map_are_read_back_from_the_file_and_the_room_is_skipped(
        tmp_path: Path) -> None:
    journal = SpendJournal(tmp_path)
    for i in range(5):
        journal.append(row(i))
    (path,) = tmp_path.glob("*.spend")
    assert path.stat().st_size == journal_module.SEGMENT_BYTES      # the room, sparse
    assert list(_decode_lines(path)) == [row(i) for i in range(5)]  # read while still mapped
    segment = journal.seal()
    assert segment is not None and segment.rows == [row(i) for i in range(5)]
    assert list(_decode_lines(path)) == [row(i) for i in range(5)]
    journal.close()


def test_a_segment_that_outgrows_its_room_goes_on_by_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 4096)      # ~13 rows of room
    journal = SpendJournal(tmp_path)
    rows = [row(i) for i in range(40)]
    for r in rows:
        journal.append(r)
    (path,) = tmp_path.glob("*.spend")
    assert list(_decode_lines(path)) == rows
    assert b"\0" not in path.read_bytes()        # the room was cut off before the writes
    journal.seal()
    journal.append(row(99))                      # a new segment has its room again
    assert len(list(tmp_path.glob("*.spend"))) == 2
    journal.close()


def test_closing_with_rows_keeps_the_segment_for_the_next_start(tmp_path: Path) -> None:
    journal = SpendJournal(tmp_path)
    journal.append(row(1))
    journal.close()
    (path,) = tmp_path.glob("*.spend")
    assert list(_decode_lines(path)) == [row(1)]
    (adopted,) = SpendJournal(tmp_path).adopt_orphans()
    assert adopted.read() == [row(1)]


def test_seal_switches_to_the_segment_prepared_ahead_and_close_removes_an_unused_one(
        tmp_path: Path) -> None:
    journal = SpendJournal(tmp_path)
    journal.append(row(1))
    journal.prepare()
    journal.prepare()                                # one spare at most
    assert len(list(tmp_path.glob("*.spend"))) == 2
    sealed = journal.seal()
    assert sealed is not None
    journal.append(row(2))                           # into the prepared segment
    assert len(list(tmp_path.glob("*.spend"))) == 2
    SpendJournal.discard(sealed)
    journal.prepare()
    journal.close()                                  # keeps row 2, drops the spare
    (path,) = tmp_path.glob("*.spend")
    assert list(_decode_lines(path)) == [row(2)]


def faults_appending(journal: SpendJournal, rows: list[SpendRow]) -> int:
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for r in rows:
        journal.append(r)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.parametrize("populated", [True, False])
def test_appending_into_a_prepared_segment_takes_no_page_fault(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, populated: bool) -> None:
    """The segment `prepare` makes (in a thread) has every page faulted in for writing, so the
    event loop's copies into it do not fault (on ext4 a fault may wait for the file system's
    journal). Needs MADV_POPULATE_WRITE (Linux >= 5.14). The unpopulated case shows the
    measure sees the faults: ~one per 4 KB page."""
    import os
    if tuple(int(p) for p in os.uname().release.split(".")[:2]) < (5, 14):
        pytest.skip("MADV_POPULATE_WRITE needs Linux 5.14")
    if not populated:
        monkeypatch.setattr(journal_module, "_populate", lambda room: None)
    journal = SpendJournal(tmp_path)
    journal.append(row(0))
    assert journal.seal() is not None
    journal.prepare()
    journal.append(row(1))                          # the first one switches to the spare
    rows = [row(i) for i in range(2, 2002)]        # ~0.35 MB of lines: ~90 pages
    faults = faults_appending(journal, rows)
    if populated:
        assert faults < 15, faults
    else:
        assert faults > 60, faults
    journal.close()

"""Journal lines written before the payer fields existed (issue 14) still decode, and lines
with the payers round-trip (spend/journal.py keeps a row as a JSON list in SpendRow's order)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from faregate.records import SpendRow
from faregate.spend.journal import _decode_lines, _encode

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
                           T0, T0, "success")
    assert (got.user_id, got.team_id, got.organization_id, got.end_user) == (
        None, None, None, None)


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
                         "extra"]) + b"\n"
    assert read(tmp_path / "bad.spend", [short, long]) == []

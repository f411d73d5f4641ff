"""Stream checkpoint lines carry the payers (issue 14), and lines written before the payer
fields existed still decode: a stream cut by a crash is charged at every level, and one
checkpointed by the previous release is still charged to its key (spend/checkpoints.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from faregate.config import Deployment
from faregate.records import SpendRow
from faregate.spend.checkpoints import INTERRUPTED, OpenStream, _open_rows

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OLD_LINE = ["open", "s1", "k" * 64, None, "m", "u", "chat_completion", 10, 3, 500,
            T0.isoformat(), T0.isoformat(), INTERRUPTED]


def rows(path: Path, records: list[list[object]]) -> list[SpendRow]:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return list(_open_rows(path))


def test_a_checkpoint_from_before_the_payer_fields_decodes(tmp_path: Path) -> None:
    (row,) = rows(tmp_path / "old.streams", [OLD_LINE])
    assert (row.request_id, row.spend_nanos, row.status) == ("s1", 500, INTERRUPTED)
    assert (row.user_id, row.team_id, row.organization_id, row.end_user) == (
        None, None, None, None)


def test_a_checkpoint_with_payers_round_trips(tmp_path: Path) -> None:
    new = ["open", "s2", "k" * 64, None, "m", "u", "chat_completion", 10, 4, 600,
           T0.isoformat(), T0.isoformat(), INTERRUPTED, "u1", "t1", "o1", "c1"]
    got = {r.request_id: r for r in rows(tmp_path / "mixed.streams", [OLD_LINE, new])}
    assert (got["s2"].user_id, got["s2"].team_id, got["s2"].organization_id,
            got["s2"].end_user) == ("u1", "t1", "o1", "c1")
    assert got["s1"].team_id is None
    # both written before attempts were counted: not recorded, rather than a guessed 1
    assert (got["s1"].attempts, got["s2"].attempts) == (None, None)


def test_lines_of_the_wrong_length_are_skipped(tmp_path: Path) -> None:
    too_long = [*OLD_LINE, "u", "t", "o", "c", 1, None, "extra"]
    assert rows(tmp_path / "bad.streams", [OLD_LINE[:-1], too_long]) == []


def test_a_stream_checkpoints_its_payers(tmp_path: Path) -> None:
    """OpenStream.record writes the template's payers; reading the line back has them."""
    deployment = Deployment(model_name="m", provider="openai", upstream_model="u",
                            api_base="http://127.0.0.1:1/v1", api_key=None, input_femtos=10**9,
                            output_femtos=10**9, max_output_tokens=16,
                            prompt_overhead_tokens=0, per_message_overhead_tokens=0,
                            timeout_s=1.0)
    template = SpendRow("s3", "k" * 64, None, "m", "u", "chat_completion", 10, 0, 0, T0, T0,
                        INTERRUPTED, user_id="u1", team_id="t1", organization_id="o1",
                        end_user="c1", attempts=3)
    stream = OpenStream(None, template, deployment)  # type: ignore[arg-type]  # no owner needed
    stream.delivered = 5
    path = tmp_path / "one.streams"
    path.write_bytes(stream.record(T0))
    (row,) = _open_rows(path)
    assert (row.user_id, row.team_id, row.organization_id, row.end_user) == (
        "u1", "t1", "o1", "c1")
    assert row.completion_tokens == 5 and row.spend_nanos > 0
    assert (row.attempts, row.error) == (3, None)     # a crash keeps the attempts made

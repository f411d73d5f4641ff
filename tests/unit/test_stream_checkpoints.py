"""faregate.spend.checkpoints: open streams' progress on disk, adopted after their process died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from faregate.config import Deployment
from faregate.records import SpendRow
from faregate.spend.checkpoints import INTERRUPTED, StreamCheckpoints
from faregate.spend.pricing import cost

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
# 1,000 and 2,000 nano-dollars per token: the prompt's cost is never 0.
D = Deployment(model_name="m", provider="openai", upstream_model="u",
               api_base="http://127.0.0.1:1/v1", api_key=None, input_femtos=10**9,
               output_femtos=2 * 10**9, max_output_tokens=16, prompt_overhead_tokens=0,
               per_message_overhead_tokens=0, timeout_s=1.0)
PROMPT = 40


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


def template(request_id: str) -> SpendRow:
    return SpendRow(request_id=request_id, api_key="a" * 64, key_alias="k", model="m",
                    upstream="http://127.0.0.1:1/v1#u", call_type="chat_completion",
                    prompt_tokens=PROMPT, completion_tokens=0, spend_nanos=0, start_time=T0,
                    end_time=T0, status=INTERRUPTED)


def charged(delivered: int) -> int:
    return cost(D, PROMPT, delivered)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def owner(spool: Path, clock: Clock) -> Iterator[StreamCheckpoints]:
    checkpoints = StreamCheckpoints(spool, clock, every_chunks=10)
    yield checkpoints
    died(checkpoints)


def died(checkpoints: StreamCheckpoints) -> None:
    """What its process's death does: the file stays as written and its lock is free (the
    real thing, a SIGKILL, is the last test)."""
    if checkpoints._fd >= 0:
        os.close(checkpoints._fd)
        checkpoints._fd = -1


def adopted(spool: Path, clock: Clock) -> dict[str, SpendRow]:
    heir = StreamCheckpoints(spool, clock)
    try:
        return {row.request_id: row for row in heir.adopt_orphans()}
    finally:
        died(heir)


def test_a_stream_is_charged_its_prompt_from_its_first_delivered_event(
        owner: StreamCheckpoints, spool: Path, clock: Clock) -> None:
    stream = owner.open(template("s1"), D)
    died_before = adopted(spool, clock)            # nothing delivered: nothing to charge
    assert died_before == {}
    stream.reached(0)                              # message_start: no chunk produced yet
    died(owner)
    rows = adopted(spool, clock)
    assert list(rows) == ["s1"]
    row = rows["s1"]
    assert (row.prompt_tokens, row.completion_tokens, row.spend_nanos, row.status) == \
        (PROMPT, 0, charged(0), INTERRUPTED)
    assert charged(0) > 0
    assert (row.api_key, row.key_alias, row.model, row.start_time) == ("a" * 64, "k", "m", T0)


def test_every_n_chunks_and_every_tick_move_the_checkpoint(owner: StreamCheckpoints,
                                                          spool: Path, clock: Clock) -> None:
    fast, slow = owner.open(template("fast"), D), owner.open(template("slow"), D)
    for delivered in range(1, 26):
        fast.reached(delivered)                    # checkpoints at 1, 11, 21
    slow.reached(1)
    slow.reached(4)                                # under 10 more: not written yet ...
    clock.at = T0 + timedelta(seconds=1)
    assert owner.tick() == 2                       # ... until the tick (fast: 21 -> 25)
    assert owner.tick() == 0                       # no progress since: nothing written
    fast.reached(27)
    died(owner)
    rows = adopted(spool, clock)
    assert rows["fast"].completion_tokens == 25    # the last 2 chunks are the crash's loss
    assert rows["slow"].completion_tokens == 4
    assert rows["slow"].spend_nanos == charged(4)
    assert rows["slow"].end_time == T0 + timedelta(seconds=1)


def test_closed_streams_are_not_charged_again(owner: StreamCheckpoints, spool: Path,
                                              clock: Clock) -> None:
    done, cut = owner.open(template("done"), D), owner.open(template("open"), D)
    done.reached(3)
    cut.reached(2)
    owner.closed(done)                             # its real row was recorded
    owner.closed(owner.open(template("never-delivered"), D))
    assert owner.open_streams == 1
    died(owner)
    assert list(adopted(spool, clock)) == ["open"]


def test_a_live_owners_file_is_not_adopted_and_an_adopted_file_is_gone(
        owner: StreamCheckpoints, spool: Path, clock: Clock) -> None:
    owner.open(template("s"), D).reached(1)
    (path,) = spool.glob("*.streams")
    assert adopted(spool, clock) == {}             # a second worker on the same directory
    died(owner)
    assert list(adopted(spool, clock)) == ["s"]
    assert not path.exists()
    assert adopted(spool, clock) == {}             # charged once


def test_compaction_keeps_only_open_streams_and_stays_owned(spool: Path, clock: Clock) -> None:
    owner = StreamCheckpoints(spool, clock, every_chunks=1, compact_bytes=4096)
    kept = owner.open(template("kept"), D)
    kept.reached(1)
    for i in range(200):                           # ~60 kB of closed streams
        stream = owner.open(template(f"closed-{i}"), D)
        stream.reached(1)
        stream.reached(2)
        owner.closed(stream)
    kept.reached(7)
    owner.tick()
    (path,) = spool.glob("*.streams")
    assert len(path.read_bytes().rstrip(b"\0")) < 1024   # one line: the open stream
    assert adopted(spool, clock) == {}             # the new file is locked by its owner too
    kept.reached(9)
    died(owner)
    assert {i: r.completion_tokens for i, r in adopted(spool, clock).items()} == {"kept": 9}


def test_a_file_left_half_made_is_removed_once_it_is_old(spool: Path, clock: Clock) -> None:
    spool.mkdir()
    fresh, old = spool / "1-a.streams-new", spool / "2-b.streams-new"
    fresh.write_bytes(b"")                         # its maker may be about to lock it
    old.write_bytes(b'["open", "x"')               # a compaction cut by a crash
    os.utime(old, (0, 0))
    assert adopted(spool, clock) == {}
    assert fresh.exists() and not old.exists()


async def test_close_removes_the_file_or_leaves_open_streams_for_the_next_start(
        spool: Path, clock: Clock) -> None:
    clean = StreamCheckpoints(spool, clock)
    clean.start()
    stream = clean.open(template("a"), D)
    stream.reached(1)
    clean.closed(stream)
    await clean.close()
    assert list(spool.glob("*.streams")) == []

    cut = StreamCheckpoints(spool, clock, every_chunks=100)
    stream = cut.open(template("b"), D)
    stream.reached(1)
    stream.reached(5)                              # after the last checkpoint ...
    await cut.close()                              # ... saved at exit
    assert {i: r.completion_tokens for i, r in adopted(spool, clock).items()} == {"b": 5}


_CRASHING_RELAY = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from faregate.config import Deployment
from faregate.records import SpendRow
from faregate.spend.checkpoints import StreamCheckpoints

t = datetime(2024, 5, 1, 12, tzinfo=UTC)
d = Deployment(model_name="m", provider="openai", upstream_model="u",
               api_base="http://127.0.0.1:1/v1", api_key=None, input_femtos=10**9,
               output_femtos=2 * 10**9, max_output_tokens=16, prompt_overhead_tokens=0,
               per_message_overhead_tokens=0, timeout_s=1.0)
checkpoints = StreamCheckpoints(Path(sys.argv[1]), lambda: t, every_chunks=8)
for i in range(10):
    stream = checkpoints.open(SpendRow(f"s{i}", "a" * 64, None, "m", "u", "chat_completion",
                                       40, 0, 0, t, t, "interrupted"), d)
    for delivered in range(1, 31):
        stream.reached(delivered)
    if i % 2:
        checkpoints.closed(stream)
os.write(os.open(next(Path(sys.argv[1]).glob("*.streams")), os.O_WRONLY | os.O_APPEND),
         b'["open", "torn')                      # a write cut short by the kill
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_streams_open_in_a_killed_process_are_charged_from_their_last_checkpoint(
        spool: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASHING_RELAY, str(spool)], timeout=60,
                          check=False)
    assert proc.returncode == -signal.SIGKILL
    rows = adopted(spool, clock)
    # The five still open: checkpointed at 1, 9, 17, 25 of 30 chunks delivered.
    assert {i: r.completion_tokens for i, r in rows.items()} == \
        {f"s{i}": 25 for i in range(0, 10, 2)}
    assert all(r.spend_nanos == charged(25) for r in rows.values())
    assert "unreadable" in caplog.text


def test_a_full_map_goes_on_by_write_and_the_tick_maps_it_again(spool: Path,
                                                                clock: Clock) -> None:
    """Records past the mapped room are written; compaction makes a mapped file again."""
    owner = StreamCheckpoints(spool, clock, every_chunks=1, compact_bytes=2048, room=4096)
    kept = owner.open(template("kept"), D)
    kept.reached(1)
    for i in range(40):                            # ~12 kB: past the room
        stream = owner.open(template(f"closed-{i}"), D)
        stream.reached(1)
        owner.closed(stream)
    assert owner._map is None
    kept.reached(3)
    owner.tick()                                   # compacts: one record, mapped again
    assert owner._map is not None
    kept.reached(5)
    died(owner)
    assert {i: r.completion_tokens for i, r in adopted(spool, clock).items()} == {"kept": 5}


def test_a_record_cut_inside_the_mapped_room_is_skipped(
        owner: StreamCheckpoints, spool: Path, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    owner.open(template("whole"), D).reached(1)
    owner._write(b'["open", "cut')                 # a copy cut short by a kill: zeros follow
    died(owner)
    assert list(adopted(spool, clock)) == ["whole"]
    assert "unreadable" in caplog.text


def test_without_room_for_a_map_records_go_by_write(spool: Path, clock: Clock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (or no fallocate) when the file is made: the streams are still
    checkpointed, by write()."""
    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    owner = StreamCheckpoints(spool, clock, every_chunks=10)
    assert owner._map is None
    owner.open(template("s"), D).reached(1)
    died(owner)
    assert {i: r.completion_tokens for i, r in adopted(spool, clock).items()} == {"s": 1}

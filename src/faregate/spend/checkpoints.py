"""StreamCheckpoints: what each open stream has delivered, on disk, so that a crash leaves it
charged.

A stream's spend row is recorded when the stream ends; a process killed while streams are open
never records theirs. So the row each open stream would be charged *now* (the prompt at its
bound, the chunks delivered so far, status `interrupted`) goes to this process's checkpoint
file at its first delivered event, then every `every_chunks` chunks or every `every_s` seconds,
whichever comes first; a `closed` record follows the stream's real row. Records are copied into
the file through a shared memory map, as the journal's rows are: in the page cache when the copy
returns (the page cache outlives the process), never an fsync, and no system call on the stream's
path (an `os.write` per record cost ~5-9 µs of CPU and, as it lets go of the GIL, often waited
~20-40 µs for the ledger's thread). The file is made `room` bytes long up front (allocated, so a
full disk shows at its making, as an error, not as a fault on a later copy); one that fills up
goes on with `os.write` until the next tick compacts it. Readers stop at the zeros after the
last record.

A process that finds a checkpoint file whose owner died (its flock is free: the journal's rule)
adopts it: one row per stream that was still open, from its latest checkpoint. The ledger
writes them after the dead process's journal, and rows are idempotent by request id, so a
stream whose real row was recorded just before the crash keeps that row.

What a SIGKILL can leave unbilled per open stream: the chunks delivered since its last
checkpoint, fewer than `every_chunks` and at most `every_s` seconds' worth (plus a tick's delay
on a busy loop). Never its prompt, from its first delivered event on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import orjson

from faregate.config import Deployment
from faregate.records import SpendRow
from faregate.spend.pricing import cost

log = logging.getLogger("faregate.checkpoints")

INTERRUPTED = "interrupted"       # the status of a row recovered from a checkpoint
EVERY_CHUNKS = 32
EVERY_S = 1.0
# Past this size the file is rewritten with only the open streams' latest checkpoints.
COMPACT_BYTES = 1 << 20

_SUFFIX = ".streams"
_NEW = ".streams-new"             # a file being made (created, locked, then renamed)
_NEW_LEFT_S = 60.0                # one older than this, unlocked: its maker died making it
_OPEN, _CLOSED = "open", "closed"
_FIELDS = SpendRow.__slots__
_OLDEST_LINE = _FIELDS.index("status") + 1   # the fields every checkpoint line has had
_ATTEMPTS_AT = _FIELDS.index("attempts")      # lines shorter than this did not count them


class OpenStream:
    """One open stream's progress: the relay reports it (`reached`), the checkpoints save it."""

    __slots__ = ("_deployment", "_owner", "delivered", "due", "saved", "template", "written")

    def __init__(self, owner: StreamCheckpoints, template: SpendRow,
                 deployment: Deployment) -> None:
        self._owner = owner
        self._deployment = deployment
        self.template = template      # the row's fixed fields; prompt_tokens = the prompt bound
        self.delivered = 0            # produced chunks handed to the client so far
        self.saved = 0                # `delivered` at the last checkpoint
        self.due = 0                  # checkpoint when `delivered` reaches this
        self.written = False          # a checkpoint of it is in the file

    def reached(self, delivered: int) -> None:
        """The client has been handed `delivered` chunks (the hot path: a compare, mostly)."""
        self.delivered = delivered
        if delivered >= self.due:
            self._owner.save(self)

    def record(self, now: datetime) -> bytes:
        """The row it would be charged now, as one checkpoint line."""
        t = self.template
        spend = cost(self._deployment, t.prompt_tokens, self.delivered)
        return orjson.dumps([_OPEN, t.request_id, t.api_key, t.key_alias, t.model, t.upstream,
                             t.call_type, t.prompt_tokens, self.delivered, spend, t.start_time,
                             now, INTERRUPTED, t.user_id, t.team_id, t.organization_id,
                             t.end_user, t.attempts], option=orjson.OPT_APPEND_NEWLINE)


class StreamCheckpoints:
    def __init__(self, directory: Path, now: Callable[[], datetime], *,
                 every_chunks: int = EVERY_CHUNKS, every_s: float = EVERY_S,
                 compact_bytes: int = COMPACT_BYTES, room: int | None = None) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._now = now
        self._every_chunks = every_chunks
        self._every_s = every_s
        self._compact_bytes = compact_bytes
        # Mapped room, by default twice the compaction point: a tick finds the file past that
        # point before it is full (at ~380 bytes a stream, 1 MiB is ~2,700 streams a second).
        self._room = 2 * compact_bytes if room is None else room
        self._name = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._path = self._dir / f"{self._name}{_SUFFIX}"
        self._new = self._dir / f"{self._name}{_NEW}"
        self._fd, self._map = _create_locked(self._new, b"", self._room)
        os.rename(self._new, self._path)
        self._size = 0
        self._open: dict[str, OpenStream] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def open(self, template: SpendRow, deployment: Deployment) -> OpenStream:
        """A stream that started: `template` is its row with the prompt at its bound; nothing
        is written until its first event is delivered."""
        stream = OpenStream(self, template, deployment)
        self._open[template.request_id] = stream
        return stream

    def save(self, stream: OpenStream) -> None:
        """Checkpoint one stream now (its first event, or `every_chunks` more chunks)."""
        try:
            self._write(stream.record(self._now()))
        except OSError as exc:
            # A full disk must not cut the stream: its row still comes when it ends.
            stream.due = stream.delivered + self._every_chunks
            log.error("stream checkpoint not written (%s)", exc)
            return
        self._saved(stream)

    def closed(self, stream: OpenStream) -> None:
        """Its real row has been recorded (call this right after, with no await between)."""
        if self._open.pop(stream.template.request_id, None) is None or not stream.written:
            return
        try:
            self._write(orjson.dumps([_CLOSED, stream.template.request_id],
                                     option=orjson.OPT_APPEND_NEWLINE))
        except OSError as exc:
            # Harmless: its row reaches the ledger first, and a recovered copy is skipped.
            log.error("stream checkpoint close not written (%s)", exc)

    def tick(self) -> int:
        """Checkpoint every stream that delivered more since its last checkpoint (one write);
        compact the file when it has grown. Returns how many were checkpointed."""
        now = self._now()
        moved = [s for s in self._open.values() if s.written and s.delivered > s.saved]
        if moved:
            self._write(b"".join(s.record(now) for s in moved))
            for stream in moved:
                self._saved(stream)
        if self._size > self._compact_bytes:
            self._compact(now)
        return len(moved)

    def start(self) -> None:
        """Checkpoint on the clock from now on (on the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="stream-checkpoints")

    async def close(self) -> None:
        """At exit: with no stream open the file goes; otherwise the open streams' latest
        progress stays on disk for the next start to charge."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._fd < 0:
            return
        if self._open:
            self.tick()
            self._unmap()
            log.warning("%d streams still open at exit; their progress stays in %s for the "
                        "next start to charge", len(self._open), self._path.name)
        else:
            self._unmap()
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1

    def adopt_orphans(self) -> list[SpendRow]:
        """One row per stream that was open in a process that died, from its latest
        checkpoint; the files are removed. Blocking: the ledger calls it from a thread."""
        rows: list[SpendRow] = []
        for path in sorted(self._dir.glob(f"*{_SUFFIX}")):
            if path == self._path:
                continue
            fd = _lock_orphan(path)
            if fd is None:
                continue
            try:
                found = list(_open_rows(path))
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
            if found:
                log.warning("charging %d streams that were open when the process owning %s "
                            "stopped, from their last checkpoints", len(found), path.name)
            rows.extend(found)
        for path in self._dir.glob(f"*{_NEW}"):
            if _age_s(path) > _NEW_LEFT_S:   # a compaction cut by a crash: the file is whole
                fd = _lock_orphan(path)
                if fd is not None:
                    path.unlink(missing_ok=True)
                    os.close(fd)
        return rows

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                self.tick()
            except OSError as exc:
                # A full disk: what is in the file stays; the next tick tries again.
                log.error("stream checkpoints could not be written (%s)", exc)

    def _saved(self, stream: OpenStream) -> None:
        stream.saved = stream.delivered
        stream.due = stream.delivered + self._every_chunks
        stream.written = True

    def _write(self, data: bytes) -> None:
        end = self._size + len(data)
        if self._map is not None and end <= len(self._map):
            self._map[self._size:end] = data
        else:
            self._unmap()                   # full: on by write() until the next compaction
            os.write(self._fd, data)
        self._size = end

    def _unmap(self) -> None:
        """Let go of the map and cut the unused room off the file (writes go on at its end)."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        os.ftruncate(self._fd, self._size)

    def _compact(self, now: datetime) -> None:
        """Rewrite the file with one record per open stream; a live owner's lock is on the new
        file before it takes the name."""
        data = b"".join(s.record(now) for s in self._open.values() if s.written)
        fd, room = _create_locked(self._new, data, max(self._room, 2 * len(data)))
        try:
            os.replace(self._new, self._path)
        except BaseException:
            self._new.unlink(missing_ok=True)
            if room is not None:
                room.close()
            os.close(fd)
            raise
        if self._map is not None:
            self._map.close()
        os.close(self._fd)
        self._fd, self._map, self._size = fd, room, len(data)
        for stream in self._open.values():
            if stream.written:
                self._saved(stream)


def _create_locked(path: Path, content: bytes, room: int) -> tuple[int, mmap.mmap | None]:
    """A new file at `path` (a `_NEW` name, which adopters leave alone for a minute), locked,
    holding `content`, and its map of `room` bytes (None where the room could not be made;
    then records go by write()); the caller renames it into place, so that adopters never see
    it unlocked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if room <= len(content):
            os.write(fd, content)
            return fd, None
        # Mapped through a second descriptor: the map keeps its own copy of it, which must
        # not hold the lock (a lock lives as long as any descriptor of the open file).
        mapped = os.open(path, os.O_RDWR)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.posix_fallocate(mapped, 0, room)
        room_map = mmap.mmap(mapped, room)
    except OSError as exc:
        # A full disk, or a file system without fallocate: slower, not less safe.
        log.warning("stream checkpoints: no mapped room (%s); records go by write()", exc)
        os.ftruncate(fd, 0)
        os.write(fd, content)
        return fd, None
    finally:
        os.close(mapped)
    room_map[:len(content)] = content
    return fd, room_map


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _lock_orphan(path: Path) -> int | None:
    """An fd holding `path`'s lock if its owner is gone and the name still leads to the file
    locked (a compaction may have put a live owner's new file there); else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None                          # adopted and removed by another process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass                                 # owned by a live process, or gone meanwhile
    os.close(fd)
    return None


def _open_rows(path: Path) -> Iterator[SpendRow]:
    """The latest checkpoint of every stream the file has no `closed` record for."""
    latest: dict[str, SpendRow] = {}
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            # A mapped file's unused room is zeros (and a record cut by a crash is followed
            # by them): they are no record.
            line = line.strip(b"\0")
            if not line:
                continue
            try:
                record = orjson.loads(line)
                if record[0] == _CLOSED:
                    latest.pop(record[1], None)
                    continue
                # Lines written before the payer fields, or attempts and error, are shorter.
                if not _OLDEST_LINE <= len(record) - 1 <= len(_FIELDS):
                    raise ValueError(f"{len(record) - 1} fields")
                fields = dict(zip(_FIELDS, record[1:], strict=False))
                if len(record) - 1 <= _ATTEMPTS_AT:
                    fields["attempts"] = None
                fields["start_time"] = datetime.fromisoformat(fields["start_time"])
                fields["end_time"] = datetime.fromisoformat(fields["end_time"])
                row = SpendRow(**fields)
            except (orjson.JSONDecodeError, ValueError, TypeError, IndexError) as exc:
                # Only a line cut by a crash mid-write (or a full disk) can be unreadable.
                log.error("stream checkpoints %s line %d is unreadable (%s); skipped",
                          path.name, number, exc)
                continue
            latest[row.request_id] = row
    yield from latest.values()

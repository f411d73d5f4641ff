"""SpendJournal: every spend row is on disk before the request that produced it has returned.

Rows are copied into the current segment file through a shared memory map: the kernel's page
cache holds them from then on, as after a `write()`, so a killed process loses nothing, and
the request path pays no system call per row (a `write()` per row cost ~10-25 µs and, on ext4,
now and then waited tens of ms for the file system's journal: a stall of the event loop). A
segment is made SEGMENT_BYTES long (sparse) up front; a segment that fills up goes on with
`write()`. Readers stop at the zeros after the last row. The ledger writer fsyncs when it seals a
segment (so a power cut loses at most one flush interval). A segment is deleted only after the
database has committed every row in it; rows are idempotent by request id, so replaying a
segment that was partly written before is harmless.

Segments are locked (flock) by the process that owns them, so several workers or replicas can
share a directory: a process adopts only the segments whose owner has died (at start, and every
few seconds while it runs: a predecessor may still be shutting down when it starts).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import mmap
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from faregate.records import SpendRow

log = logging.getLogger("faregate.journal")

_SUFFIX = ".spend"
# The room mapped for a segment's rows (~3,300 rows; a flush interval holds far fewer, and
# MAX_BATCH rows wake the writer): sparse on disk, its pages populated in the page cache up
# front (`_populate`) and deleted with the segment, normally before they are written back.
SEGMENT_BYTES = 1 << 20
_MADV_POPULATE_WRITE = 23        # Linux >= 5.14; not in Python 3.11's mmap module
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_FIELDS = SpendRow.__slots__
_VALUES = operator.attrgetter(*_FIELDS)     # a row's values in _FIELDS' order, as a tuple
_OLDEST_LINE = _FIELDS.index("status") + 1   # the fields every journal line has had
_ATTEMPTS_AT = _FIELDS.index("attempts")      # lines shorter than this did not count them


@dataclass(slots=True)
class Segment:
    """A closed segment: its rows are on disk and fsync'd, waiting for the database."""

    path: Path
    fd: int                       # kept open: holds the lock that tells others it is owned
    rows: list[SpendRow] | None   # in memory when known; None = read it back from disk
    written: int = 0              # rows already committed to the database
    synced: bool = False
    adopted: bool = False         # left by another process: its keys are held until written
    size: int = 0                 # rows, once counted (adopted segments)

    def read(self) -> list[SpendRow]:
        """The rows (blocking when they must be read back from disk)."""
        if self.rows is None:
            self.rows = list(_decode_lines(self.path))
        return self.rows

    def sync(self) -> None:
        """fsync (blocking: call it from a thread)."""
        if not self.synced:
            os.fsync(self.fd)
            self.synced = True


class SpendJournal:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._seq = 0
        self._fd = -1
        self._map: mmap.mmap | None = None   # the current segment's room, until it fills up
        self._end = 0                        # bytes of rows in the current segment
        self._rows: list[SpendRow] = []
        # The next segment, made ahead off the event loop (`prepare`): creating a file can
        # wait for the file system's journal, as long as another process's fsync takes.
        self._spare: tuple[Path, int, mmap.mmap] | None = None
        # Sealed segments' maps, let go of by `prepare` (unmapping a segment's pages costs
        # as much as mapping them: off the event loop too).
        self._retired: list[mmap.mmap] = []
        self._open_segment()

    @property
    def directory(self) -> Path:
        return self._dir

    def append(self, row: SpendRow) -> None:
        """Put one row in the current segment (in the page cache when this returns; no
        fsync: see `seal`)."""
        line = _encode(row)
        end = self._end + len(line)
        if self._map is not None and end <= SEGMENT_BYTES:
            self._map[self._end:end] = line
        else:
            self._unmap(self._end)          # full: the rest of this segment by write()
            os.write(self._fd, line)
        self._end = end
        self._rows.append(row)

    @property
    def unsealed(self) -> int:
        return len(self._rows)

    def write_segment(self, rows: list[SpendRow]) -> Segment:
        """A new segment holding `rows` (another process's, handed over), fsync'd before this
        returns: from then on they are this journal's to write (blocking: call from a thread)."""
        self._seq += 1
        path = self._dir / f"{self._prefix}-{self._seq:08d}{_SUFFIX}"
        fd = _create_locked(path, b"".join(_encode(row) for row in rows))
        directory = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(directory)                 # the new name, too, survives a power cut
        finally:
            os.close(directory)
        return Segment(path, fd, rows, synced=True, adopted=True)

    def seal(self) -> Segment | None:
        """Close the current segment to appends and start a new one; None if it is empty.

        Call it on the event loop (it swaps the file `append` writes to); the sealed segment
        is fsync'd only if the database cannot take its rows at once (`Segment.sync`).
        """
        if not self._rows:
            return None
        fd, path, rows = self._fd, self._path, self._rows
        if self._map is not None:   # its pages stay in the page cache, dirty until written back
            self._retired.append(self._map)
            self._map = None
        self._open_segment()
        return Segment(path, fd, rows)

    def prepare(self) -> None:
        """Make the next segment now, so that `seal` only switches to it (blocking: call it
        from a thread, from the one task that seals)."""
        self._let_go_retired()
        if self._spare is None:
            self._spare = self._new_segment()

    def sync(self) -> None:
        """fsync the current segment without closing it (blocking: call it from a thread)."""
        os.fsync(self._fd)

    def adopt_orphans(self) -> list[Segment]:
        """Segments left by processes that died (their lock is free), oldest first."""
        orphans = []
        for path in sorted(self._dir.glob(f"*{_SUFFIX}"), key=_age):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue                     # another process adopted and finished it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)                 # owned by a live process
                continue
            if not path.exists():            # finished by its adopter between glob and lock
                os.close(fd)
                continue
            orphans.append(Segment(path, fd, None, adopted=True))
        return orphans

    @staticmethod
    def release(segment: Segment) -> None:
        """At exit, with rows still waiting: leave the file for the next start to adopt."""
        os.close(segment.fd)

    @staticmethod
    def discard(segment: Segment) -> None:
        """Every row of the segment is in the database: delete it, then let go of its lock."""
        segment.path.unlink(missing_ok=True)
        os.close(segment.fd)

    def close(self) -> None:
        """At exit: an empty current segment is removed; one with rows stays for a replay."""
        if self._fd < 0:
            return
        self._let_go_retired()
        if self._spare is not None:
            path, fd, room = self._spare
            self._spare = None
            room.close()
            path.unlink(missing_ok=True)
            os.close(fd)
        self._unmap(self._end)
        if self._rows:
            os.fsync(self._fd)
        else:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1

    def _open_segment(self) -> None:
        spare, self._spare = self._spare, None
        self._path, self._fd, self._map = spare if spare is not None else self._new_segment()
        self._end = 0
        self._rows = []

    def _new_segment(self) -> tuple[Path, int, mmap.mmap]:
        self._seq += 1
        path = self._dir / f"{self._prefix}-{self._seq:08d}{_SUFFIX}"
        fd = _create_locked(path, room=SEGMENT_BYTES)
        room = mmap.mmap(fd, SEGMENT_BYTES)
        _populate(room)
        return path, fd, room

    def _let_go_retired(self) -> None:
        retired, self._retired = self._retired, []
        for room in retired:
            room.close()

    def _unmap(self, truncate_at: int | None = None) -> None:
        """Let go of the current segment's map; `truncate_at`: also cut the unused room off
        the file (writes go on at its end)."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        if truncate_at is not None:
            os.ftruncate(self._fd, truncate_at)


def _populate(room: mmap.mmap) -> None:
    """Fault every page of a new segment in for writing now (prepare runs this in a thread):
    the first write to a page of a file mapping faults, and on ext4 that fault updates the
    file's times through the file system's journal, so on the event loop it can wait as long
    as another process's fsync (py-spy caught the loop in `append` for ~0.9 s of 8 at c=1
    beside a build's writes). madvise(MADV_POPULATE_WRITE) through ctypes lets go of the GIL
    meanwhile; a Python loop touching each page would hold it (and the event loop) through
    every fault. Kernels before 5.14 refuse it: the pages then fault on first use, as before."""
    view = ctypes.c_char.from_buffer(room)
    try:
        _libc.madvise(ctypes.addressof(view), len(room), _MADV_POPULATE_WRITE)
    finally:
        del view                 # an exported pointer would keep the map from closing


def _create_locked(path: Path, content: bytes = b"", room: int = 0) -> int:
    """A new segment, locked (and holding `content`, fsync'd) before it has its name: another
    process scanning for orphans must never find it unlocked. `room`: the file is made this
    long (sparse: zeros until written), to be mapped."""
    hidden = path.with_name(path.name + ".new")
    fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if content:
        os.write(fd, content)
        os.fsync(fd)
    if room:
        os.ftruncate(fd, room)
    os.rename(hidden, path)
    return fd


def _age(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, path.name
    except FileNotFoundError:
        return 0.0, path.name


def _encode(row: SpendRow) -> bytes:
    values = _VALUES(row)
    try:
        return orjson.dumps(values, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        # Text orjson will not encode (a lone surrogate): the row must still be kept, to be
        # charged or dead-lettered; the standard library escapes it and reads it back as it was.
        return json.dumps([v.isoformat() if isinstance(v, datetime) else v
                           for v in values]).encode() + b"\n"


def _loads(line: bytes) -> list[Any]:
    try:
        values = orjson.loads(line)
    except orjson.JSONDecodeError:
        values = json.loads(line)           # written by the fallback in _encode
    if not isinstance(values, list):
        raise ValueError("not a row")
    return values


def _decode_lines(path: Path) -> Iterator[SpendRow]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.startswith(b"\0"):
                # The unused room of a mapped segment (zeros), after its last row; anything
                # after zeros was appended by write() once the room was full, or torn.
                line = line.lstrip(b"\0")
                if not line:
                    continue
            try:
                values = _loads(line)
                if not _OLDEST_LINE <= len(values) <= len(_FIELDS):
                    raise ValueError(f"{len(values)} fields")
                # A line written before the payer fields existed is shorter: they default;
                # one written before attempts were counted has them as not recorded (None).
                fields = dict(zip(_FIELDS, values, strict=False))
                if len(values) <= _ATTEMPTS_AT:
                    fields["attempts"] = None
                fields["start_time"] = datetime.fromisoformat(fields["start_time"])
                fields["end_time"] = datetime.fromisoformat(fields["end_time"])
                yield SpendRow(**fields)
            except (ValueError, TypeError) as exc:
                # Only a line cut by a crash mid-write (or a full disk) can be unreadable.
                log.error("spend journal %s line %d is unreadable (%s); skipped", path.name,
                          number, exc)

"""SpendJournal: every spend row is on disk before the request that produced it has returned.

Rows go to the current segment file with one `write()` each (the kernel's page cache holds them
from then on, so a killed process loses nothing); the ledger writer fsyncs when it seals a
segment (so a power cut loses at most one flush interval). A segment is deleted only after the
database has committed every row in it; rows are idempotent by request id, so replaying a
segment that was partly written before is harmless.

Segments are locked (flock) by the process that owns them, so several workers or replicas can
share a directory: a process adopts only the segments whose owner has died (at start, and every
few seconds while it runs: a predecessor may still be shutting down when it starts).
"""

from __future__ import annotations

import fcntl
import json
import logging
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
_FIELDS = SpendRow.__slots__
_OLDEST_LINE = _FIELDS.index("status") + 1   # the fields every journal line has had


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
        self._rows: list[SpendRow] = []
        self._open_segment()

    @property
    def directory(self) -> Path:
        return self._dir

    def append(self, row: SpendRow) -> None:
        """Write one row to the current segment (one syscall; no fsync: see `seal`)."""
        os.write(self._fd, _encode(row))
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
        self._open_segment()
        return Segment(path, fd, rows)

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
        if self._rows:
            os.fsync(self._fd)
        else:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1

    def _open_segment(self) -> None:
        self._seq += 1
        self._path = self._dir / f"{self._prefix}-{self._seq:08d}{_SUFFIX}"
        self._fd = _create_locked(self._path)
        self._rows = []


def _create_locked(path: Path, content: bytes = b"") -> int:
    """A new segment, locked (and holding `content`, fsync'd) before it has its name: another
    process scanning for orphans must never find it unlocked."""
    hidden = path.with_name(path.name + ".new")
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if content:
        os.write(fd, content)
        os.fsync(fd)
    os.rename(hidden, path)
    return fd


def _age(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, path.name
    except FileNotFoundError:
        return 0.0, path.name


def _encode(row: SpendRow) -> bytes:
    values = [getattr(row, name) for name in _FIELDS]
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
            try:
                values = _loads(line)
                if not _OLDEST_LINE <= len(values) <= len(_FIELDS):
                    raise ValueError(f"{len(values)} fields")
                # A line written before the payer fields existed is shorter: they default.
                fields = dict(zip(_FIELDS, values, strict=False))
                fields["start_time"] = datetime.fromisoformat(fields["start_time"])
                fields["end_time"] = datetime.fromisoformat(fields["end_time"])
                yield SpendRow(**fields)
            except (ValueError, TypeError) as exc:
                # Only a line cut by a crash mid-write (or a full disk) can be unreadable.
                log.error("spend journal %s line %d is unreadable (%s); skipped", path.name,
                          number, exc)

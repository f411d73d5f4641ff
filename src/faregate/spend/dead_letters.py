"""DeadLetters: spend rows the database refused for their content, kept in a file.

A file (JSON lines, `dead-letters.jsonl` in the journal directory), because the database just
refused the row. Each line holds the original row exactly as recorded, the reason, the SQLSTATE
(when the database gave one) and whether a storable copy of the row is in the ledger.

The key's spend still counts the row: the writer stores a copy with every unstorable character
escaped (NUL becomes the six characters `\\u0000`, a lone surrogate `\\ud800`), text cut to its
column's length, token counts clamped to the column's range, and `status` set to `dead_letter`
(so `SELECT ... WHERE status = 'dead_letter'` finds them). The request id, key and spend are
the original's, so "a key's spend is the sum of its rows" stays true and a replay stays
idempotent. Only if even the copy is refused is the row not counted (`stored: false`), and the
key's spend then does not count it either. `faregate dead-letters list|retry|resolve` manages
the file: `retry` writes the rows not stored (the original if the database takes it now, else
the copy), `resolve` drops entries once someone has looked at them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from faregate.records import SpendRow
from faregate.storage.protocols import SpendStore
from faregate.storage.rejected_rows import is_rejected_content
from faregate.storage.schema import spend_logs
from faregate.wire.storable import INT32_MAX

FILE_NAME = "dead-letters.jsonl"
DEAD_LETTER_STATUS = "dead_letter"
_FIELDS = [f.name for f in fields(SpendRow)]
_TEXT_COLUMNS = [(name, getattr(spend_logs.c[name].type, "length", None))
                 for name in ("request_id", "api_key", "key_alias", "model", "upstream",
                              "call_type", "status", "user_id", "team_id", "organization_id",
                              "end_user", "error")]


@dataclass(frozen=True)
class DeadLetter:
    row: SpendRow                   # as recorded, unstorable characters and all
    reason: str
    sqlstate: str | None
    stored: bool                    # a storable copy (status dead_letter) is in the ledger
    at: datetime


def storable(row: SpendRow) -> SpendRow:
    """The copy of a refused row that any database takes, marked status=dead_letter."""
    changes: dict[str, Any] = {"status": DEAD_LETTER_STATUS}
    for name, length in _TEXT_COLUMNS:
        value = getattr(row, name)
        if value is not None and name != "status":
            changes[name] = _escaped(value)[:length]
    for name in ("prompt_tokens", "completion_tokens"):
        changes[name] = min(max(getattr(row, name), 0), INT32_MAX)
    return replace(row, **changes)


def looks_unstorable(row: SpendRow) -> bool:
    """A cheap look for what databases refuse: NUL, text that is not Unicode, text longer than
    its column, a token count out of range. Such a row is written alone, so that its refusal
    costs one round trip instead of halving a whole batch."""
    for name, length in _TEXT_COLUMNS:
        value = getattr(row, name)
        if value is None:
            continue
        if "\x00" in value or (length is not None and len(value) > length):
            return True
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return not (0 <= row.prompt_tokens <= INT32_MAX and 0 <= row.completion_tokens <= INT32_MAX)


def _escaped(text: str) -> str:
    text = text.replace("\x00", "\\u0000")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class DeadLetters:
    """The file; several processes may share it (appends and rewrites take its flock)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._counted: tuple[int, int] = (-1, 0)     # (inode, bytes) the count covers
        self._count = 0
        self._ids: set[str] | None = None            # request ids in the file, once read

    def add(self, letter: DeadLetter) -> None:
        """Append one line and fsync it (blocking: call it from a thread). A request id
        already in the file is not added again (a batch retried after an outage)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._ids is None:
                self._ids = {known.row.request_id for known in self.read()}
            if letter.row.request_id in self._ids:
                return
            os.write(fd, _encode(letter))
            os.fsync(fd)
            self._ids.add(letter.row.request_id)
        finally:
            os.close(fd)

    def read(self) -> list[DeadLetter]:
        try:
            with self.path.open("rb") as lines:
                return list(_decode(lines))
        except FileNotFoundError:
            return []

    def count(self) -> int:
        """Entries in the file. Readiness and /metrics ask often: only bytes appended since the
        last count are read (all of it again after a rewrite by `faregate dead-letters`)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._counted, self._count = (-1, 0), 0
            return 0
        inode, size = self._counted
        if stat.st_ino != inode or stat.st_size < size:
            size, self._count = 0, 0
        if stat.st_size > size:
            with self.path.open("rb") as lines:
                lines.seek(size)
                appended = lines.read(stat.st_size - size)
            self._count += appended.count(b"\n")
        self._counted = (stat.st_ino, stat.st_size)
        return self._count

    def remove(self, request_ids: set[str]) -> int:
        """Drop these entries (blocking); returns how many went."""
        self._ids = None
        return self._rewrite(lambda letter: None if letter.row.request_id in request_ids
                             else letter)

    def mark_stored(self, request_ids: set[str]) -> int:
        """Their storable copies are in the ledger now (blocking)."""
        return self._rewrite(lambda letter: replace(letter, stored=True)
                             if letter.row.request_id in request_ids else letter)

    def _rewrite(self, change: Callable[[DeadLetter], DeadLetter | None]) -> int:
        """Rewrite the file with each entry changed (None: dropped); how many changed."""
        if not self.path.exists():
            return 0
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)     # appenders wait; the lock goes with the old file
            letters = self.read()
            changed = [change(letter) for letter in letters]
            kept = [letter for letter in changed if letter is not None]
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(b"".join(_encode(letter) for letter in kept))
            with temporary.open("rb") as written:
                os.fsync(written.fileno())
            os.replace(temporary, self.path)
            return sum(1 for old, new in zip(letters, changed, strict=True) if new != old)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Retried:
    originals: list[str]            # written as recorded: the entry is gone from the file
    copies: list[str]               # the database still refuses the original: copy written
    refused: list[str]              # not even the copy: still not counted


async def retry(letters: DeadLetters, storage: SpendStore) -> Retried:
    """Write every dead-lettered row not yet counted: the original if the database takes it
    now, else its storable copy. Outages raise (nothing is lost: run it again)."""
    originals: list[str] = []
    copies: list[str] = []
    refused: list[str] = []
    for letter in await asyncio.to_thread(letters.read):
        if letter.stored:
            continue
        for row, done in ((letter.row, originals), (storable(letter.row), copies)):
            try:
                await storage.write_spend_rows([row])
            except Exception as exc:
                if not is_rejected_content(exc):
                    raise
                continue
            done.append(letter.row.request_id)
            break
        else:
            refused.append(letter.row.request_id)
    await asyncio.to_thread(letters.remove, set(originals))
    await asyncio.to_thread(letters.mark_stored, set(copies))
    return Retried(originals, copies, refused)


def _encode(letter: DeadLetter) -> bytes:
    row = {name: getattr(letter.row, name) for name in _FIELDS}
    row["start_time"] = letter.row.start_time.isoformat()
    row["end_time"] = letter.row.end_time.isoformat()
    # The standard library's escapes keep NUL and lone surrogates exactly, in ASCII.
    return json.dumps({"request_id": letter.row.request_id, "reason": letter.reason,
                       "sqlstate": letter.sqlstate, "stored": letter.stored,
                       "at": letter.at.isoformat(), "row": row}).encode() + b"\n"


def _decode(lines: Any) -> Iterator[DeadLetter]:
    for line in lines:
        try:
            item = json.loads(line)
            row = dict(item["row"])
            row.setdefault("attempts", None)    # a letter from before attempts were counted
            row["start_time"] = datetime.fromisoformat(row["start_time"])
            row["end_time"] = datetime.fromisoformat(row["end_time"])
            yield DeadLetter(SpendRow(**row), str(item["reason"]), item.get("sqlstate"),
                             bool(item["stored"]), datetime.fromisoformat(item["at"]))
        except (ValueError, KeyError, TypeError):
            continue                # a line cut short by a crash mid-append

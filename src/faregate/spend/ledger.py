"""LedgerWriter: spend rows leave the request path here and reach the database in batches.

`record` writes the row to the on-disk journal (one syscall; see spend/journal.py) and returns:
the request path never waits on the database. One task owns the writing: every flush interval
it seals the journal's current segment and writes its rows; a segment is deleted once the
database has them all. When the database is down, segments stay on disk (fsync'd every
interval) and are written when it is back. Rows are idempotent by request id, so a replay never
counts a row twice.

Rows other processes left behind are adopted at start and every ORPHAN_SCAN_S while running: the
journal's orphaned segments, then what each orphan source hands over (stream checkpoints). Until
they are in the database their keys are held (spend/holds.py): nothing reads those keys' spend
to admit against them. They are written key by key, so a key whose row is locked holds back no
other key's rows.

A row the database refuses for its content (a NUL in a text column, ...) is found by halving
the batch, set aside in the dead-letter file with a storable copy written in its place
(spend/dead_letters.py), and the rest are written: one row never holds back the others.
Outages are retried, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from faregate.records import SpendRow
from faregate.spend.dead_letters import DeadLetter, DeadLetters, looks_unstorable, storable
from faregate.spend.holds import KeyHolds, count_by_key
from faregate.spend.journal import Segment, SpendJournal
from faregate.storage.health import DatabaseHealth, is_outage, outage_reason, sqlstate
from faregate.storage.protocols import SpendStore, SpendWritten, parse_scope
from faregate.storage.rejected_rows import is_rejected_content

log = logging.getLogger("faregate.ledger")

# Rows recorded since the last write that wake the writer before its interval is up.
MAX_BATCH = 500
# Rows per transaction: one commit (one fsync on SQLite) and one round trip per this many.
WRITE_BATCH = 5000
# Rows kept in memory across sealed segments while the database is down; past this, older
# segments are read back from disk when their turn comes.
MAX_ROWS_IN_MEMORY = 200_000
ORPHAN_SCAN_S = 5.0
# Keys whose left-behind rows are written at once (Postgres' pool holds 20 connections).
_KEYS_AT_ONCE = 8
_RETRY_MAX_S = 5.0

OrphanSource = Callable[[], list[SpendRow]]


class LedgerWriter:
    def __init__(self, storage: SpendStore, flush_interval_s: float, journal: SpendJournal,
                 health: DatabaseHealth | None = None,
                 dead_letters: DeadLetters | None = None) -> None:
        self._storage = storage
        self._interval = flush_interval_s
        self._journal = journal
        self._health = health
        self.dead_letters = dead_letters or DeadLetters(journal.directory)
        self.holds = KeyHolds()
        self._sources: list[OrphanSource] = []
        self._sealed: list[Segment] = []
        self._sealed_rows = 0         # rows in sealed segments not yet in the database
        # Adopted segments being written (key by key), and how many rows of each key are in.
        self._adopted: list[Segment] | None = None
        self._adopted_progress: dict[str, int] = {}
        self._periods: dict[str, tuple[int, datetime | None]] = {}
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._adopting = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0

    @property
    def pending(self) -> int:
        """Rows not yet in the database (on disk, waiting), adopted orphans included."""
        return self._journal.unsealed + self._sealed_rows

    @property
    def dead_lettered(self) -> int:
        """Rows in the dead-letter file (until `faregate dead-letters` resolves them)."""
        return self.dead_letters.count()

    def record(self, row: SpendRow) -> None:
        self._journal.append(row)
        if self._journal.unsealed >= MAX_BATCH:
            self._wake.set()

    def record_period(self, account: str, period_base: int, reset_at: datetime | None) -> None:
        """A payer's new budget period, written with the next flush (the newest per payer wins).
        `account` is a payer's scope ("key:<token>", "team:<id>", "member:<team>:<user>", ...)
        or, as before scopes, a key's bare token (hex: never holds a colon). A malformed scope
        raises ValueError here, rather than fail every flush."""
        if ":" in account:
            parse_scope(account)
        self._periods[account] = (period_base, reset_at)
        self._wake.set()

    def add_orphan_source(self, source: OrphanSource) -> None:
        """`source()` (called in a thread, at start and at each orphan scan, after the orphaned
        segments are adopted) returns rows another process left that this one must write: they
        are made durable in this journal, written after the adopted segments, counted in
        `pending`, and their keys are held until they are in the database."""
        self._sources.append(source)

    async def start(self) -> None:
        """Adopt what stopped processes left on disk, then start writing."""
        await self.adopt_orphans()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def adopt_orphans(self) -> int:
        """Take over orphaned segments and the orphan sources' rows; returns how many rows."""
        async with self._adopting:
            found = await asyncio.to_thread(self._find_orphans)
            rows = 0
            for segment, by_key in found:
                count = segment.size = sum(by_key.values())
                self.holds.add(by_key)
                self._sealed.append(segment)
                self._sealed_rows += count
                rows += count
        if rows:
            log.warning("replaying %d spend rows left by a process that stopped before "
                        "writing them; their %d keys wait for them", rows, self.holds.keys)
            self._wake.set()
        return rows

    async def flush(self) -> None:
        """Write everything queued now; raises if the database refuses."""
        while self._journal.unsealed or self._sealed or self._periods:
            await self._write_some()

    async def _write_due(self) -> None:
        """One round of the background writer: the rows recorded by now, after any segment
        still waiting before them. Rows recorded meanwhile wait for the next round: under
        steady traffic `flush` would never run out of rows and write back to back (at c=1,
        a transaction and a segment file every ~15 ms instead of every interval)."""
        await self._write_some()
        while self._sealed:
            await self._write_some()

    async def close(self, retry_s: float = 0.0) -> None:
        """Stop the writer, then write what is left, trying for up to `retry_s` while the
        database refuses. If it still cannot take it, the rows stay on disk (fsync'd) for the
        next start, and this raises."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        deadline = time.monotonic() + retry_s
        try:
            while True:
                try:
                    await self.flush()
                    break
                except Exception:
                    if time.monotonic() + 0.5 > deadline:
                        raise
                    await asyncio.sleep(0.5)
        except Exception:
            await asyncio.to_thread(self._sync_all)
            raise
        finally:
            for segment in self._sealed:
                SpendJournal.release(segment)
            self._journal.close()

    def _find_orphans(self) -> list[tuple[Segment, Counter[str]]]:
        """Blocking (a thread): call the sources, then lock and read orphaned segments.

        The sources are asked first and their rows are queued last: a process that dies
        between the two steps then has its own journal rows written before any row a source
        made for it (rows are idempotent by request id, so the first one written counts)."""
        handed_rows = []
        for source in self._sources:
            try:
                handed = source()
            except Exception:
                log.exception("an orphan spend source failed; it is asked again at the next "
                              "scan")
                continue
            if handed:
                handed_rows.append(handed)
        found = []
        in_memory = self._sealed_rows
        for segment in self._journal.adopt_orphans():
            rows = segment.read()
            found.append((segment, count_by_key(rows)))
            in_memory += len(rows)
            if in_memory > MAX_ROWS_IN_MEMORY:
                segment.rows = None       # read again when its turn comes
        for handed in handed_rows:
            found.append((self._journal.write_segment(handed), count_by_key(handed)))
        return found

    async def _run(self) -> None:
        retry_at = 0.0
        delay = self._interval
        scan_at = time.monotonic() + ORPHAN_SCAN_S
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if time.monotonic() >= scan_at:
                scan_at = time.monotonic() + ORPHAN_SCAN_S
                try:
                    await self.adopt_orphans()
                except Exception:
                    log.exception("scanning the spend journal for orphaned rows failed")
            if time.monotonic() < retry_at:
                # Backing off the database; keep what waits durable against a power cut.
                await asyncio.to_thread(self._sync_all)
                continue
            try:
                await self._write_due()
                delay = self._interval
            except Exception as exc:
                if self._health is not None and is_outage(exc):
                    self._health.failed(exc)
                delay = min(max(delay * 2, 0.1), _RETRY_MAX_S)
                retry_at = time.monotonic() + delay
                log.warning("spend ledger write failed (%s); %d rows kept on disk, retrying in "
                            "%.1fs", type(exc).__name__, self.pending, delay)
                await asyncio.to_thread(self._sync_all)

    async def _write_some(self) -> None:
        # One writer at a time: `flush` (tests, shutdown) may run beside the background task.
        async with self._writing:
            await self._write_some_alone()

    async def _write_some_alone(self) -> None:
        # Seal the rows recorded so far, unless earlier segments still wait (then they go
        # first, and the current segment keeps growing instead of making one file per retry).
        if not self._sealed:
            segment = self._journal.seal()
            if segment is not None:
                self._sealed.append(segment)
                self._sealed_rows += len(segment.read())
                # The next segment is made off the event loop (file creation may wait on
                # the file system's journal); seal switches to it.
                await asyncio.to_thread(self._journal.prepare)
        if self._sealed and self._sealed[0].adopted:
            await self._write_adopted()
        elif self._sealed:
            await self._write_segment(self._sealed[0])
        periods, self._periods = self._periods, {}
        try:
            for account, (base, reset_at) in periods.items():
                await self._start_period(account, base, reset_at)
        except Exception:
            for account, value in periods.items():
                self._periods.setdefault(account, value)
            raise
        if self._health is not None:
            self._health.succeeded()

    async def _start_period(self, account: str, base: int, reset_at: datetime | None) -> None:
        if ":" not in account:
            await self._storage.start_budget_period(account, base, reset_at)
            return
        level, ids = parse_scope(account)
        if level == "key":
            await self._storage.start_budget_period(ids[0], base, reset_at)
        else:
            await self._storage.start_period(account, base, reset_at)

    async def _write_segment(self, segment: Segment) -> None:
        rows = segment.rows if segment.rows is not None else \
            await asyncio.to_thread(segment.read)
        while segment.written < len(rows):
            batch = rows[segment.written:segment.written + WRITE_BATCH]
            self.written += (await self._write_batch(batch)).rows
            segment.written += len(batch)
            self._sealed_rows -= len(batch)
        self._sealed.pop(0)
        await asyncio.to_thread(SpendJournal.discard, segment)      # off the loop, as above

    async def _write_adopted(self) -> None:
        """The adopted segments at the head of the queue, as one unit written key by key:
        each key's rows in transactions of their own, several keys at once, each key's hold
        ending as soon as its rows are in. A key whose row is locked (or whose writes fail)
        holds back only itself; the segments go once every key is through."""
        if self._adopted is None:
            # As many as memory allows (at least one): all their rows are read at once.
            group: list[Segment] = []
            rows_in = 0
            for segment in self._sealed:
                if not segment.adopted or (group and rows_in + segment.size > MAX_ROWS_IN_MEMORY):
                    break
                group.append(segment)
                rows_in += segment.size
            self._adopted, self._adopted_progress = group, {}
        by_key: dict[str, list[SpendRow]] = {}
        for segment in self._adopted:
            rows = segment.rows if segment.rows is not None else \
                await asyncio.to_thread(segment.read)
            for row in rows:
                by_key.setdefault(row.api_key, []).append(row)
        progress = self._adopted_progress
        at_once = asyncio.Semaphore(_KEYS_AT_ONCE)

        async def write(token: str, rows: list[SpendRow]) -> None:
            async with at_once:
                while (done := progress.get(token, 0)) < len(rows):
                    chunk = rows[done:done + WRITE_BATCH]
                    result = await self._write_batch(chunk)
                    self.written += result.rows
                    progress[token] = done + len(chunk)
                    self._sealed_rows -= len(chunk)
                    self.holds.written(chunk, result.by_key, result.by_payer)

        outcomes = await asyncio.gather(
            *(write(t, r) for t, r in by_key.items() if progress.get(t, 0) < len(r)),
            return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        for segment in self._adopted:
            self._sealed.remove(segment)
        await asyncio.to_thread(_discard_all, self._adopted)
        self._adopted = None

    async def _write_batch(self, rows: Sequence[SpendRow]) -> SpendWritten:
        """Write the rows; a row the database refuses for its content is dead-lettered and the
        others written. Outages raise. Rows that look unstorable go alone (one round trip each
        when refused, e.g. every call to a model whose name holds a NUL); any other refusal is
        found by halving the batch."""
        suspects = [row for row in rows if looks_unstorable(row)]
        if not suspects:
            return await self._write_halving(rows)
        result = await self._write_halving([row for row in rows if not looks_unstorable(row)])
        for row in suspects:
            result = result + await self._write_halving([row])
        return result

    async def _write_halving(self, rows: Sequence[SpendRow]) -> SpendWritten:
        if not rows:
            return SpendWritten()
        try:
            return await self._storage.write_spend_rows(rows)
        except Exception as exc:
            if not is_rejected_content(exc):
                raise
            if len(rows) == 1:
                return await self._dead_letter(rows[0], exc)
        middle = len(rows) // 2
        return await self._write_halving(rows[:middle]) + \
            await self._write_halving(rows[middle:])

    async def _dead_letter(self, row: SpendRow, refusal: Exception) -> SpendWritten:
        copy = storable(row)
        try:
            result = await self._storage.write_spend_rows([copy])
            stored = True
        except Exception as exc:
            if not is_rejected_content(exc):
                raise
            result, stored = SpendWritten(), False
        reason = outage_reason(refusal)
        await asyncio.to_thread(self.dead_letters.add, DeadLetter(
            row, reason, sqlstate(refusal), stored, datetime.now(UTC)))
        log.error("spend row %s refused by the database (%s); kept in %s, %s",
                  row.request_id.encode("unicode_escape").decode(), reason,
                  self.dead_letters.path,
                  "a storable copy counts its spend" if stored
                  else "its spend is NOT counted: see `faregate dead-letters`")
        return result

    def _sync_all(self) -> None:
        for segment in self._sealed:
            segment.sync()
        self._journal.sync()


def _discard_all(segments: list[Segment]) -> None:
    for segment in segments:
        SpendJournal.discard(segment)

"""LedgerWriter: spend rows leave the request path here and reach the database in batches.

`record` writes the row to the on-disk journal (one syscall; see spend/journal.py) and returns:
the request path never waits on the database. One task owns the writing: every flush interval
it seals the journal's current segment and writes its rows; a segment is deleted once the
database has them all. When the database is down, segments stay on disk (fsync'd every
interval) and are written when it is back; after a crash the next start adopts them. Rows are
idempotent by request id, so a replay never counts a row twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from faregate.records import SpendRow
from faregate.spend.journal import Segment, SpendJournal
from faregate.storage.health import DatabaseHealth, is_outage
from faregate.storage.protocols import SpendStore

log = logging.getLogger("faregate.ledger")

MAX_BATCH = 500
# Rows kept in memory across sealed segments while the database is down; past this, older
# segments are read back from disk when their turn comes.
MAX_ROWS_IN_MEMORY = 200_000
_RETRY_MAX_S = 5.0


class LedgerWriter:
    def __init__(self, storage: SpendStore, flush_interval_s: float, journal: SpendJournal,
                 health: DatabaseHealth | None = None) -> None:
        self._storage = storage
        self._interval = flush_interval_s
        self._journal = journal
        self._health = health
        self._sealed: list[Segment] = []
        self._sealed_rows = 0         # rows in sealed segments not yet in the database
        self._periods: dict[str, tuple[int, datetime | None]] = {}
        self._wake = asyncio.Event()
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0

    @property
    def pending(self) -> int:
        """Rows not yet in the database (on disk, waiting)."""
        return self._journal.unsealed + self._sealed_rows

    def record(self, row: SpendRow) -> None:
        self._journal.append(row)
        if self._journal.unsealed >= MAX_BATCH:
            self._wake.set()

    def record_period(self, token: str, period_base: int, reset_at: datetime | None) -> None:
        self._periods[token] = (period_base, reset_at)
        self._wake.set()

    async def start(self) -> None:
        """Adopt what crashed processes left on disk, then start writing."""
        orphans = await asyncio.to_thread(self._adopt_orphans)
        if orphans:
            log.warning("replaying %d spend rows left on disk by a process that stopped "
                        "before writing them", orphans)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def flush(self) -> None:
        """Write everything queued now; raises if the database refuses."""
        while self._journal.unsealed or self._sealed or self._periods:
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

    def _adopt_orphans(self) -> int:
        orphans = self._journal.adopt_orphans()
        rows = 0
        for segment in orphans:
            rows += len(segment.read())
            if rows > MAX_ROWS_IN_MEMORY:
                segment.rows = None       # read again when its turn comes
        self._sealed.extend(orphans)
        self._sealed_rows += rows
        return rows

    async def _run(self) -> None:
        retry_at = 0.0
        delay = self._interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if time.monotonic() < retry_at:
                # Backing off the database; keep what waits durable against a power cut.
                await asyncio.to_thread(self._sync_all)
                continue
            try:
                await self.flush()
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
        if self._sealed:
            await self._write_segment(self._sealed[0])
        periods, self._periods = self._periods, {}
        try:
            for token, (base, reset_at) in periods.items():
                await self._storage.start_budget_period(token, base, reset_at)
        except Exception:
            for token, value in periods.items():
                self._periods.setdefault(token, value)
            raise
        if self._health is not None:
            self._health.succeeded()

    async def _write_segment(self, segment: Segment) -> None:
        rows = segment.rows if segment.rows is not None else \
            await asyncio.to_thread(segment.read)
        while segment.written < len(rows):
            batch = rows[segment.written:segment.written + MAX_BATCH]
            self.written += await self._storage.write_spend(batch)
            segment.written += len(batch)
            self._sealed_rows -= len(batch)
        self._sealed.pop(0)
        SpendJournal.discard(segment)

    def _sync_all(self) -> None:
        for segment in self._sealed:
            segment.sync()
        self._journal.sync()

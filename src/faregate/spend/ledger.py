"""LedgerWriter: spend rows leave the request path here and reach the database in batches.

One task owns the writing. `record` only appends to a list, so the request path never waits on
the database. A batch that fails stays queued and is retried (rows are idempotent by request id);
`close` writes everything still queued before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from faregate.records import SpendRow
from faregate.storage.database import SqlStorage

log = logging.getLogger("faregate.ledger")

MAX_BATCH = 500
_RETRY_MAX_S = 5.0


class LedgerWriter:
    def __init__(self, storage: SqlStorage, flush_interval_s: float) -> None:
        self._storage = storage
        self._interval = flush_interval_s
        self._rows: list[SpendRow] = []
        self._periods: dict[str, tuple[int, datetime | None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def record(self, row: SpendRow) -> None:
        self._rows.append(row)
        if len(self._rows) >= MAX_BATCH:
            self._wake.set()

    def record_period(self, token: str, period_base: int, reset_at: datetime | None) -> None:
        self._periods[token] = (period_base, reset_at)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    async def flush(self) -> None:
        """Write everything queued now; raises if the database refuses."""
        while self._rows or self._periods:
            await self._write_some()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def _run(self) -> None:
        delay = self._interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                while self._rows or self._periods:
                    await self._write_some()
                delay = self._interval
            except Exception:
                delay = min(max(delay * 2, 0.1), _RETRY_MAX_S)
                log.exception("spend ledger write failed; %d rows kept, retrying in %.1fs",
                              len(self._rows), delay)

    async def _write_some(self) -> None:
        batch = self._rows[:MAX_BATCH]
        if batch:
            self.written += await self._storage.write_spend(batch)
            del self._rows[:len(batch)]
        periods, self._periods = self._periods, {}
        try:
            for token, (base, reset_at) in periods.items():
                await self._storage.start_budget_period(token, base, reset_at)
        except Exception:
            for token, value in periods.items():
                self._periods.setdefault(token, value)
            raise

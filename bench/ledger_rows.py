"""How many spend rows a second LedgerWriter puts into the database, alone on the event loop.

    python -m bench.ledger_rows --rows 100000 [--database-url sqlite:///...] [--rate 3300]

Rows are recorded at `--rate` a second (0: as fast as the loop goes) in slices of 1/100 s, the
way a serving process records them, and the writer runs as in `faregate serve`. Prints rows/s
written, the most rows ever waiting, and the process's RSS before and after. `--busy N` keeps N
tasks spinning on the loop (a process serving at full load), the case where a writer that hops
to a thread many times per batch falls behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from faregate.records import KeyRecord, SpendRow
from faregate.spend.journal import SpendJournal
from faregate.spend.ledger import LedgerWriter
from faregate.storage import migrate
from faregate.storage.database import SqlStorage

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE / 1e6


async def busy(stop: asyncio.Event) -> None:
    """A request's share of a saturated loop: ~100 µs of CPU, then yield."""
    while not stop.is_set():
        spin_until = time.perf_counter() + 0.0001
        while time.perf_counter() < spin_until:
            pass
        await asyncio.sleep(0)


async def main(url: str, spool: Path, n: int, rate: float, keys: int, busy_tasks: int) -> None:
    await asyncio.to_thread(migrate.upgrade, url)
    storage = SqlStorage.from_url(url)
    now = datetime.now(UTC)
    tokens = [uuid.uuid4().hex * 2 for _ in range(keys)]
    await storage.insert_keys([KeyRecord(token=t, key_name="sk-...x", created_at=now,
                                         updated_at=now) for t in tokens])
    writer = LedgerWriter(storage, 0.2, SpendJournal(spool))
    await writer.start()
    stop = asyncio.Event()
    loaders = [asyncio.create_task(busy(stop)) for _ in range(busy_tasks)]
    rss_before = rss_mb()
    most_waiting = 0
    started = time.perf_counter()
    slice_rows = max(1, int(rate / 100)) if rate else 500
    for i in range(0, n, slice_rows):
        for j in range(i, min(n, i + slice_rows)):
            writer.record(SpendRow(f"bench-{j}-{uuid.uuid4().hex[:8]}", tokens[j % keys],
                                   None, "m", "http://up/v1#m", "chat_completion", 10, 5,
                                   1000, now, now, "success"))
        most_waiting = max(most_waiting, writer.pending)
        if rate:
            await asyncio.sleep(max(0.0, started + (i + slice_rows) / rate
                                    - time.perf_counter()))
        else:
            await asyncio.sleep(0)
    recorded = time.perf_counter() - started
    while writer.pending:
        most_waiting = max(most_waiting, writer.pending)
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*loaders)
    await writer.close()
    await storage.close()
    print(f"rows={n} recorded_in={recorded:.2f}s written_in={elapsed:.2f}s "
          f"rows_per_s={n / elapsed:,.0f} most_waiting={most_waiting} "
          f"rss_mb={rss_before:.1f}->{rss_mb():.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--busy", type=int, default=0,
                        help="tasks keeping the loop busy, ~100 µs of CPU each per turn")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        asyncio.run(main(url, Path(tmp) / "spool", args.rows, args.rate, args.keys,
                         args.busy))

"""Fill the database the way a year of production would, to show costs do not grow with it."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from datetime import UTC, datetime, timedelta

import httpx

from faregate.keys.tokens import hash_key
from faregate.records import KeyRecord, SpendRow
from faregate.storage.database import SqlStorage

BATCH = 5_000


def seed(db_url: str, bench_key: str, keys: int, rows: int) -> str:
    """Returns the hash of a key that owns seeded rows, to query."""
    return asyncio.run(_seed(db_url, hash_key(bench_key), keys, rows))


async def _seed(db_url: str, bench_token: str, keys: int, rows: int) -> str:
    storage = SqlStorage.from_url(db_url)
    now = datetime.now(UTC)
    tokens = [hashlib.sha256(f"seed-{i}".encode()).hexdigest() for i in range(keys)]
    try:
        for start in range(0, keys, BATCH):
            await storage.insert_keys([KeyRecord(token=t, key_name="sk-...seed", created_at=now,
                                                 updated_at=now)
                                       for t in tokens[start:start + BATCH]])
        owners = tokens or [bench_token]
        for start in range(0, rows, BATCH):
            batch = [SpendRow(
                request_id=f"seed-{i:012d}", api_key=owners[i % len(owners)], key_alias=None,
                model="bench-model", upstream="seed", call_type="chat_completion",
                prompt_tokens=8, completion_tokens=16, spend_nanos=40_000,
                start_time=now - timedelta(seconds=i), end_time=now - timedelta(seconds=i),
                status="success") for i in range(start, min(rows, start + BATCH))]
            await storage.write_spend(batch)
    finally:
        await storage.close()
    return owners[0]


def spend_logs_latency(base_url: str, key: str, master: str, samples: int = 20) -> float:
    """Median milliseconds of /spend/logs for one key (first page, 100 rows)."""
    timings = []
    with httpx.Client(base_url=base_url, timeout=30,
                      headers={"Authorization": f"Bearer {master}"}) as http:
        for _ in range(samples):
            started = time.perf_counter()
            http.get("/spend/logs", params={"api_key": key}).raise_for_status()
            timings.append((time.perf_counter() - started) * 1e3)
    return statistics.median(timings)

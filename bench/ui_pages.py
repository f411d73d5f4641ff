"""The UI's and the admin API's reads at size (issue 16): 100,000 keys and 1,000,000 ledger
rows on SQLite and on Postgres, each query's server time (median of N runs, through the
same SqlStorage methods the pages call).

    python -m bench.ui_pages                          # both backends, full size
    python -m bench.ui_pages --backend sqlite --keys 10000 --rows 100000 --runs 5
    python -m bench.ui_pages --sqlite-path /tmp/ui.db --keep   # keep (and reuse) the file

Rows are spread evenly over the last 30 days and over every key (the worst case for per-key
sums: no key repeats in a bucket), 2% of them failures; 1,000 teams, 10,000 users, 5,000
end users. The seed goes through the driver in bulk (executemany / COPY), with the rollup's
triggers on, so the rollup is what the ledger would have made.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from faregate.storage import migrate
from faregate.storage.database import SqlStorage
from faregate.storage.reports import KeyFilters, LogFilters

PG_ADMIN = os.environ.get("FAREGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TEAMS, USERS, END_USERS, MODELS = 1_000, 10_000, 5_000, 12
BATCH = 50_000


def _token(i: int) -> str:
    return hashlib.sha256(f"ui-bench-{i}".encode()).hexdigest()


def _key_rows(keys: int, now: datetime) -> list[tuple[Any, ...]]:
    return [(_token(i), "sk-...ui", f"alias-{i:06d}", "[]", 0, 0, "{}", i % 97 == 0,
             now - timedelta(seconds=keys - i), now, "{}", "{}", "{}", f"u{i % USERS}",
             f"t{i % TEAMS}") for i in range(keys)]


KEY_COLUMNS = ("token", "key_name", "key_alias", "models", "spend_nanos", "period_base_nanos",
               "metadata", "blocked", "created_at", "updated_at", "model_rpm_limit",
               "model_tpm_limit", "aliases", "user_id", "team_id")
ROW_COLUMNS = ("request_id", "api_key", "key_alias", "model", "upstream", "call_type",
               "prompt_tokens", "completion_tokens", "spend_nanos", "start_time", "end_time",
               "status", "user_id", "team_id", "organization_id", "end_user")


def _spend_rows(start: int, stop: int, keys: int, now: datetime) -> list[tuple[Any, ...]]:
    rnd = random.Random(start)
    out = []
    for i in range(start, stop):
        k = i % keys
        at = now - timedelta(seconds=rnd.random() * 30 * 86400)
        out.append((f"ui-{i:010d}", _token(k), f"alias-{k:06d}", f"model-{k % MODELS}",
                    "http://upstream", "chat_completion", 10, 20, 1_000 + k % 5_000, at,
                    at + timedelta(seconds=1), "failure" if rnd.random() < 0.02 else "success",
                    f"u{k % USERS}", f"t{k % TEAMS}", None,
                    f"e{k % END_USERS}" if k % 3 == 0 else None))
    return out


def _payer_rows(now: datetime) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    common = ("models", "spend_nanos", "period_base_nanos", "metadata", "created_at",
              "updated_at")
    return {
        "faregate_teams": (("team_id", "team_alias", "blocked", *common),
                           [(f"t{i}", f"team {i}", False, "[]", 0, 0, "{}", now, now)
                            for i in range(TEAMS)]),
        "faregate_users": (("user_id", "user_role", *common),
                           [(f"u{i}", "internal_user", "[]", 0, 0, "{}", now, now)
                            for i in range(USERS)]),
        "faregate_end_users": (("end_user_id", "blocked", "spend_nanos", "period_base_nanos",
                                "metadata", "created_at", "updated_at"),
                               [(f"e{i}", False, 0, 0, "{}", now, now)
                                for i in range(END_USERS)]),
    }


# the payers' spend columns, made the sums of their rows (as the ledger keeps them)
_SPEND_SUMS = [
    "UPDATE faregate_keys SET spend_nanos = (SELECT coalesce(sum(spend_nanos), 0) FROM "
    "faregate_spend_logs WHERE api_key = faregate_keys.token)",
    "UPDATE faregate_teams SET spend_nanos = (SELECT coalesce(sum(spend_nanos), 0) FROM "
    "faregate_spend_logs WHERE team_id = faregate_teams.team_id)",
    "UPDATE faregate_end_users SET spend_nanos = (SELECT coalesce(sum(spend_nanos), 0) FROM "
    "faregate_spend_logs WHERE end_user = faregate_end_users.end_user_id)",
]


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def seed_sqlite(path: str, keys: int, rows: int, now: datetime) -> None:
    migrate.upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")

    def insert(table: str, columns: tuple[str, ...], values: list[tuple[Any, ...]]) -> None:
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' for _ in columns)})",
                         [tuple(_sqlite_time(v) if isinstance(v, datetime) else v for v in r)
                          for r in values])

    conn.execute("BEGIN")
    insert("faregate_keys", KEY_COLUMNS, _key_rows(keys, now))
    for table, (columns, values) in _payer_rows(now).items():
        insert(table, columns, values)
    conn.execute("COMMIT")
    for start in range(0, rows, BATCH):
        conn.execute("BEGIN")
        insert("faregate_spend_logs", ROW_COLUMNS,
               _spend_rows(start, min(rows, start + BATCH), keys, now))
        conn.execute("COMMIT")
    for statement in _SPEND_SUMS:
        conn.execute(statement)
    conn.execute("ANALYZE")
    conn.close()


async def seed_postgres(url: str, keys: int, rows: int, now: datetime) -> None:
    await asyncio.to_thread(migrate.upgrade, url)
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("faregate_keys", records=_key_rows(keys, now),
                                         columns=list(KEY_COLUMNS))
        for table, (columns, values) in _payer_rows(now).items():
            await conn.copy_records_to_table(table, records=values, columns=list(columns))
        for start in range(0, rows, BATCH):
            await conn.copy_records_to_table(
                "faregate_spend_logs", records=_spend_rows(start, min(rows, start + BATCH),
                                                           keys, now),
                columns=list(ROW_COLUMNS))
        for statement in _SPEND_SUMS:
            await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def measure(url: str, runs: int, now: datetime) -> list[tuple[str, float]]:
    """Median milliseconds of each page's queries, as the pages make them."""
    storage = SqlStorage.from_url(url)
    out: list[tuple[str, float]] = []

    async def timed(name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        await call()                                # warm: the first read of a cold cache
        timings = []
        result = None
        for _ in range(runs):
            started = time.perf_counter()
            result = await call()
            timings.append((time.perf_counter() - started) * 1e3)
        out.append((name, statistics.median(timings)))
        return result

    month = now - timedelta(days=30)
    try:
        await timed("overview (Asia/Tokyo)", lambda: storage.report_overview(now, "Asia/Tokyo"))
        await timed("usage 30 days by day, all", lambda: storage.report_usage(
            month, now, "day", "Europe/Berlin"))
        await timed("usage 7 days by hour, all (Asia/Kolkata)", lambda: storage.report_usage(
            now - timedelta(days=7), now, "hour", "Asia/Kolkata"))
        for group in ("model", "key", "team", "user", "customer"):
            await timed(f"usage 30 days by day, top 10 {group}s + other",
                        lambda group=group: storage.report_usage(month, now, "day", "UTC",
                                                                 group))
        for level in ("model", "key", "team"):
            await timed(f"top 100 {level}s by spend in 30 days (report_top)",
                        lambda level=level: storage.report_top(level, month, now, 100))
        await timed("usage 30 days, one team's chart", lambda: storage.report_usage(
            month, now, "day", "UTC", "team", only="t7"))
        await timed("usage 30 days, one key's chart", lambda: storage.report_usage(
            month, now, "day", "UTC", "key", only=_token(7)))
        page = await timed("logs page 1 (50)", lambda: storage.report_logs(None, None, 50))
        cursor = page.next
        for _ in range(20):                          # 20 pages in: as cheap as the first
            cursor = (await storage.report_logs(None, cursor, 50)).next
        await timed("logs page 21 (keyset)", lambda: storage.report_logs(None, cursor, 50))
        await timed("logs, model + errors", lambda: storage.report_logs(
            LogFilters(model="model-3", status="error"), None, 50))
        await timed("logs, one team", lambda: storage.report_logs(
            LogFilters(team_id="t5"), None, 50))
        await timed("logs, one key", lambda: storage.report_logs(
            LogFilters(api_key=_token(5)), None, 50))
        anchor = page.rows[10].request_id
        await timed("logs live tail (newer than a row)",
                    lambda: storage.report_logs_newer(anchor, None, 50))
        await timed("log detail", lambda: storage.report_log(anchor))
        keys_page = await timed("keys page 1 (50)", lambda: storage.report_keys(None, None, 50))
        after = keys_page.next
        for _ in range(20):
            after = (await storage.report_keys(None, after, 50)).next
        await timed("keys page 21 (keyset)", lambda: storage.report_keys(None, after, 50))
        await timed("keys, alias prefix search", lambda: storage.report_keys(
            KeyFilters(search="alias-0123"), None, 50))
        await timed("keys, token prefix search", lambda: storage.report_keys(
            KeyFilters(search=_token(4242)[:6]), None, 50))
        await timed("keys, one team", lambda: storage.report_keys(
            KeyFilters(team_id="t7"), None, 50))
        await timed("keys, blocked", lambda: storage.report_keys(
            KeyFilters(blocked=True), None, 50))
        for level in ("team", "user", "customer"):
            await timed(f"{level}s page 1 (50)",
                        lambda level=level: storage.report_payers(level, None, 50))
        await timed("/key/list page 1 (100)", lambda: storage.list_keys(1, 100))
        await timed("/key/list page 1,000 (100)", lambda: storage.list_keys(1000, 100))
    finally:
        await storage.close()
    return out


async def _pg_database() -> str:
    name = f"faregate_ui_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


async def _drop_pg(url: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--sqlite-path", help="the SQLite file (reused if it exists)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    now = datetime.now(UTC)
    results: dict[str, list[tuple[str, float]]] = {}
    if args.backend in ("sqlite", "both"):
        path = args.sqlite_path or os.path.join(tempfile.mkdtemp(), "ui.db")
        if not os.path.exists(path):
            started = time.perf_counter()
            seed_sqlite(path, args.keys, args.rows, now)
            print(f"sqlite: seeded in {time.perf_counter() - started:.0f} s ({path})")
        try:
            results["sqlite"] = asyncio.run(measure(f"sqlite:///{path}", args.runs, now))
        finally:
            if not args.keep:
                os.remove(path)
    if args.backend in ("postgres", "both"):
        url = asyncio.run(_pg_database())
        try:
            started = time.perf_counter()
            asyncio.run(seed_postgres(url, args.keys, args.rows, now))
            print(f"postgres: seeded in {time.perf_counter() - started:.0f} s")
            results["postgres"] = asyncio.run(measure(url, args.runs, now))
        finally:
            if not args.keep:
                asyncio.run(_drop_pg(url))
    names = [name for name, _ in next(iter(results.values()))]
    print(f"\n{args.keys:,} keys, {args.rows:,} ledger rows; median of {args.runs} (ms)")
    print(f"| query | {' | '.join(results)} |")
    print(f"|---|{'---:|' * len(results)}")
    for i, name in enumerate(names):
        print(f"| {name} | {' | '.join(f'{r[i][1]:.1f}' for r in results.values())} |")


if __name__ == "__main__":
    main()

"""The UI's and the admin API's reads at size (issue 16): 100,000 keys and 1,000,000 ledger
rows on SQLite and on Postgres, each query's server time (median of N runs, wall and this
process's CPU, through the same SqlStorage methods the pages call).

    python -m bench.ui_pages                          # both backends, full size
    python -m bench.ui_pages --backend sqlite --keys 10000 --rows 100000 --runs 5
    python -m bench.ui_pages --sqlite-path /tmp/ui.db --keep   # keep (and reuse) the file
    python -m bench.ui_pages --backend postgres --pg-url postgresql://.../db   # reuse a db

Rows are spread evenly over the last 30 days and over every key (the worst case for per-key
sums: no key repeats in a bucket), 2% of them failures; 1,000 teams, 10,000 users, 5,000
end users. The seed is bulk (executemany in one transaction / COPY) into the schema as it was
before the rollups (0006); the migrations to head then build the indexes once and fill the
rollups from the rows, as an upgrade of a real ledger does (tests/storage checks that the
backfill and the triggers agree). 1,000,000 rows: ~130 s of CPU on SQLite.
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
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config

from faregate.storage import migrate
from faregate.storage.database import SqlStorage
from faregate.storage.reports import KeyFilters, LogFilters

PG_ADMIN = os.environ.get("FAREGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TEAMS, USERS, END_USERS, MODELS = 1_000, 10_000, 5_000, 12
BATCH = 50_000
BEFORE_ROLLUP = "0006"                # the last revision without the spend rollups


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


def _migrate(url: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrate.__file__).parent / "migrations"))
    cfg.attributes["url"] = url
    command.upgrade(cfg, revision)


def _row_batches(keys: int, rows: int, now: datetime) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, rows, BATCH):
        yield _spend_rows(start, min(rows, start + BATCH), keys, now)


def seed_sqlite(path: str, keys: int, rows: int, now: datetime) -> None:
    """Bulk rows into the schema as it was before the rollup (0006), then the migrations up to
    head: they build the indexes once and fill the rollups from the rows (the backfill that an
    upgrade of a real ledger runs), instead of one trigger upsert per level per row."""
    url = f"sqlite:///{path}"
    _migrate(url, BEFORE_ROLLUP)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")

    def insert(table: str, columns: tuple[str, ...], values: list[tuple[Any, ...]]) -> None:
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' for _ in columns)})",
                         (tuple(_sqlite_time(v) if isinstance(v, datetime) else v for v in r)
                          for r in values))

    conn.execute("BEGIN")
    insert("faregate_keys", KEY_COLUMNS, _key_rows(keys, now))
    for table, (columns, values) in _payer_rows(now).items():
        insert(table, columns, values)
    for batch in _row_batches(keys, rows, now):
        insert("faregate_spend_logs", ROW_COLUMNS, batch)
    for statement in _SPEND_SUMS:
        conn.execute(statement)
    conn.execute("COMMIT")
    conn.close()
    _migrate(url, "head")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ANALYZE")
    conn.close()


async def seed_postgres(url: str, keys: int, rows: int, now: datetime) -> None:
    """As seed_sqlite: COPY into the schema at 0006, then the migrations to head."""
    await asyncio.to_thread(_migrate, url, BEFORE_ROLLUP)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("faregate_keys", records=_key_rows(keys, now),
                                             columns=list(KEY_COLUMNS))
            for table, (columns, values) in _payer_rows(now).items():
                await conn.copy_records_to_table(table, records=values, columns=list(columns))
            for batch in _row_batches(keys, rows, now):
                await conn.copy_records_to_table("faregate_spend_logs", records=batch,
                                                 columns=list(ROW_COLUMNS))
            for statement in _SPEND_SUMS:
                await conn.execute(statement)
    finally:
        await conn.close()
    await asyncio.to_thread(_migrate, url, "head")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


Timing = tuple[str, float, float]          # (query, median ms, median CPU ms of this process)


async def measure(url: str, runs: int, now: datetime) -> list[Timing]:
    """Median milliseconds of each page's queries, as the pages make them: wall time, and
    this process's CPU time (SQLite runs in it; for Postgres it is the client's part)."""
    storage = SqlStorage.from_url(url)
    out: list[Timing] = []

    async def timed(name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        await call()                                # warm: the first read of a cold cache
        walls, cpus = [], []
        result = None
        for _ in range(runs):
            started, cpu = time.perf_counter(), time.process_time()
            result = await call()
            walls.append((time.perf_counter() - started) * 1e3)
            cpus.append((time.process_time() - cpu) * 1e3)
        out.append((name, statistics.median(walls), statistics.median(cpus)))
        return result

    async def csv_by_key(first_page_only: bool) -> None:
        # what /ui/usage.csv?group=key reads (ui/pages/usage.py): the 1,000 dearest keys,
        # 200 at a time with their names, then every row's buckets for "other"
        week = now - timedelta(days=7)
        ranked = [p.id for p in await storage.report_top_payers("key", 1000)]
        for at in range(0, len(ranked), 200):
            ids = ranked[at:at + 200]
            await storage.report_usage_of(week, now, "day", "UTC", "key", ids)
            await storage.report_key_names(ids)
            if first_page_only:
                return
        await storage.report_usage(week, now, "day", "UTC")

    month = now - timedelta(days=30)
    try:
        for tz in ("UTC", "Asia/Tokyo", "Asia/Kolkata"):
            await timed(f"overview ({tz})", lambda tz=tz: storage.report_overview(now, tz))
        await timed("usage 30 days by day, all", lambda: storage.report_usage(
            month, now, "day", "Europe/Berlin"))
        await timed("usage 7 days by hour, all (Asia/Kolkata)", lambda: storage.report_usage(
            now - timedelta(days=7), now, "hour", "Asia/Kolkata"))
        for group in ("model", "key", "team", "user", "customer"):
            await timed(f"usage 30 days by day, top 10 {group}s + other",
                        lambda group=group: storage.report_usage(month, now, "day", "UTC",
                                                                 group))
        await timed("usage 30 days by day, models (Asia/Kolkata)", lambda: storage.report_usage(
            month, now, "day", "Asia/Kolkata", "model"))
        await timed("usage 7 days by hour, models", lambda: storage.report_usage(
            now - timedelta(days=7), now, "hour", "UTC", "model"))
        await timed("usage CSV by key, first 200 keys (first rows)", lambda: csv_by_key(True))
        await timed("usage CSV by key, all 1,000 + other", lambda: csv_by_key(False))
        for level in ("key", "team", "customer"):
            await timed(f"top 5 {level}s by lifetime spend",
                        lambda level=level: storage.report_top_payers(level, 5))
        await timed("top 100 models by spend in 30 days (report_top)",
                    lambda: storage.report_top("model", month, now, 100))
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
        await timed("keys, alias prefix search (10 match)", lambda: storage.report_keys(
            KeyFilters(search="alias-0123"), None, 50))
        shared = await timed("keys, alias prefix 10,000 keys share", lambda: storage.report_keys(
            KeyFilters(search="alias-05"), None, 50))
        await timed("keys, that search's page 2", lambda: storage.report_keys(
            KeyFilters(search="alias-05"), shared.next, 50))
        await timed("keys, hex search 'a' (alias range, then tokens)",
                    lambda: storage.report_keys(KeyFilters(search="a"), None, 50))
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
    parser.add_argument("--pg-url", help="a Postgres database (reused if it has keys)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    now = datetime.now(UTC)
    results: dict[str, list[Timing]] = {}
    if args.backend in ("sqlite", "both"):
        path = args.sqlite_path or os.path.join(tempfile.mkdtemp(), "ui.db")
        if not os.path.exists(path):
            started = time.perf_counter()
            seed_sqlite(path, args.keys, args.rows, now)
            print(f"sqlite: seeded in {time.perf_counter() - started:.0f} s ({path})")
        else:
            migrate.upgrade(f"sqlite:///{path}")
        try:
            results["sqlite"] = asyncio.run(measure(f"sqlite:///{path}", args.runs, now))
        finally:
            if not args.keep:
                os.remove(path)
    if args.backend in ("postgres", "both"):
        url = args.pg_url or asyncio.run(_pg_database())
        try:
            if not asyncio.run(_has_keys(url)):
                started = time.perf_counter()
                asyncio.run(seed_postgres(url, args.keys, args.rows, now))
                print(f"postgres: seeded in {time.perf_counter() - started:.0f} s")
            else:
                migrate.upgrade(url)
            results["postgres"] = asyncio.run(measure(url, args.runs, now))
        finally:
            if not args.keep and not args.pg_url:
                asyncio.run(_drop_pg(url))
    names = [name for name, _, _ in next(iter(results.values()))]
    print(f"\n{args.keys:,} keys, {args.rows:,} ledger rows; median of {args.runs}, ms; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"| query | {' | '.join(f'{b} wall | {b} CPU' for b in results)} |")
    print(f"|---|{'---:|---:|' * len(results)}")
    for i, name in enumerate(names):
        cells = " | ".join(f"{r[i][1]:.1f} | {r[i][2]:.1f}" for r in results.values())
        print(f"| {name} | {cells} |")


async def _has_keys(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('faregate_keys')") is None:
            return False
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM faregate_keys)"))
    finally:
        await conn.close()


if __name__ == "__main__":
    main()

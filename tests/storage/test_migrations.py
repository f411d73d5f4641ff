"""Migrations produce exactly the reference schema, on SQLite and Postgres, from empty."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, Table, UniqueConstraint, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from support import fresh_pg_database

from faregate.errors import ConfigError
from faregate.records import SpendRow
from faregate.storage import migrate
from faregate.storage.database import SqlStorage, create_engine
from faregate.storage.protocols import SpendQuery
from faregate.storage.schema import metadata


@pytest.fixture(params=["sqlite", "postgres"])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with nothing in it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_pg_database("faregate_mig") as url:
        yield url


async def on(url: str, fn: Any) -> Any:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


# An index on an expression (lower(user_email)) is compared by name and uniqueness: SQLite's
# reflection skips it, so it is read from PRAGMA there; its definition is checked by
# behaviour (test_upgrade_with_duplicate_emails_keeps_the_oldest_holder).
EXPRESSION = ("<expression>",)


def expression_indexes(conn: Connection, table: str) -> dict[str, tuple[Any, bool]]:
    if conn.dialect.name != "sqlite":
        return {}
    out = {}
    for _, name, unique, *_ in conn.exec_driver_sql(f"PRAGMA index_list('{table}')"):
        info = conn.exec_driver_sql(f"PRAGMA index_xinfo('{name}')").all()
        if any(row[1] == -2 for row in info):           # cid -2: an expression
            out[name] = (EXPRESSION, bool(unique))
    return out


def reflect(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in insp.get_table_names():
        if table == "alembic_version":
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression")
            found = insp.get_indexes(table)
            uniques = insp.get_unique_constraints(table)
        out[table] = {
            "columns": {c["name"]: c["nullable"] for c in insp.get_columns(table)},
            "order": [c["name"] for c in insp.get_columns(table)],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "indexes": {i["name"]: (EXPRESSION if None in i["column_names"]
                                    else tuple(i["column_names"]), bool(i["unique"]))
                        for i in found if not i.get("duplicates_constraint")}
            | expression_indexes(conn, table),
            "unique": sorted(tuple(u["column_names"]) for u in uniques),
        }
    return out


def reference() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in metadata.sorted_tables:
        unique = [tuple(c.name for c in con.columns) for con in table.constraints
                  if isinstance(con, UniqueConstraint)]
        unique += [(c.name,) for c in table.columns if c.unique and (c.name,) not in unique]
        out[table.name] = {
            "columns": {c.name: c.nullable for c in table.columns},
            "order": [c.name for c in table.columns],
            "pk": [c.name for c in table.primary_key.columns],
            "indexes": {i.name: (EXPRESSION if any(not isinstance(e, Column)
                                                   for e in i.expressions)
                                 else tuple(c.name for c in i.columns), bool(i.unique))
                        for i in table.indexes},
            "unique": sorted(unique),
        }
    return out


async def test_empty_database_has_no_revision(fresh_url: str) -> None:
    assert await migrate.current_revision(fresh_url) is None


async def test_migrations_produce_the_reference_schema(fresh_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    got = await on(fresh_url, reflect)
    want = reference()
    assert set(got) == set(want) == {
        "faregate_keys", "faregate_spend_logs", "faregate_models", "faregate_replicas",
        "faregate_budgets", "faregate_users", "faregate_organizations",
        "faregate_organization_members", "faregate_teams", "faregate_team_members",
        "faregate_end_users", "faregate_spend_rollup", "faregate_spend_rollup_hour"}
    for table in want:
        assert got[table] == want[table], table
    # the reference is not trivially empty: the checks above compare something
    assert want["faregate_keys"]["unique"] == [("key_alias",)]
    assert set(want["faregate_spend_logs"]["indexes"]) == {
        "ix_spend_logs_api_key_start", "ix_spend_logs_start_id", "ix_spend_logs_user_start",
        "ix_spend_logs_team_start", "ix_spend_logs_org_start", "ix_spend_logs_end_user_start",
        "ix_spend_logs_model_start", "ix_spend_logs_status_start"}
    assert want["faregate_keys"]["columns"]["key_alias"] is True
    assert want["faregate_keys"]["columns"]["spend_nanos"] is False


async def test_autogenerate_finds_no_difference(fresh_url: str) -> None:
    """Alembic's own comparison (types included) sees nothing left to migrate."""
    await asyncio.to_thread(migrate.upgrade, fresh_url)

    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        with warnings.catch_warnings():     # SQLite cannot reflect lower(user_email)'s index
            warnings.filterwarnings("ignore", ".*expression-based index")
            return compare_metadata(ctx, metadata)

    assert await on(fresh_url, diff) == []


async def test_revision_is_head_after_upgrade_and_upgrade_is_repeatable(fresh_url: str) -> None:
    head = migrate.head_revision()
    assert head
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    assert await migrate.current_revision(fresh_url) == head
    await asyncio.to_thread(migrate.upgrade, fresh_url)          # a second start
    assert await migrate.current_revision(fresh_url) == head
    assert set(await on(fresh_url, reflect)) == set(reference())


async def test_require_current(fresh_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        await asyncio.to_thread(migrate.require_current, fresh_url)
    message = str(info.value)
    assert "faregate migrate" in message
    assert "empty database" in message
    assert migrate.head_revision() in message
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    await asyncio.to_thread(migrate.require_current, fresh_url)   # now it passes


def test_sync_callers_can_migrate(tmp_path: Path) -> None:
    """upgrade/require_current are blocking: the CLI calls them before any event loop runs."""
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    with pytest.raises(ConfigError):
        migrate.require_current(url)
    migrate.upgrade(url)
    migrate.require_current(url)


async def test_upgrade_from_0005_keeps_every_key_and_its_spend(fresh_url: str) -> None:
    """A database written by the previous release (0005), with keys and spend rows, upgraded to
    head: every key, its spend and its rows are there, the new columns are empty, and spend
    written after the upgrade still adds up."""
    await asyncio.to_thread(command.upgrade, migrate._config(fresh_url), "0005")
    assert await migrate.current_revision(fresh_url) == "0005"
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    keys_0005 = [{"token": f"{n:064x}", "key_name": f"sk-...{n:04d}", "models": "[]",
                  "spend_nanos": 300 * n, "period_base_nanos": n, "metadata": "{}",
                  "blocked": False, "created_at": t0, "updated_at": t0,
                  "model_rpm_limit": "{}", "model_tpm_limit": "{}", "aliases": "{}"}
                 for n in range(1, 6)]
    rows_0005 = [{"request_id": f"r{n}-{i}", "api_key": f"{n:064x}", "key_alias": None,
                  "model": "m", "upstream": "u", "call_type": "chat_completion",
                  "prompt_tokens": 1, "completion_tokens": 1, "spend_nanos": 100 * n,
                  "start_time": t0, "end_time": t0, "status": "success"}
                 for n in range(1, 6) for i in range(3)]

    def write_0005(conn: Connection) -> None:
        meta = MetaData()
        conn.execute(Table("faregate_keys", meta, autoload_with=conn).insert(), keys_0005)
        conn.execute(Table("faregate_spend_logs", meta, autoload_with=conn).insert(), rows_0005)
        conn.commit()

    await on(fresh_url, write_0005)
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    assert await migrate.current_revision(fresh_url) == migrate.head_revision()

    storage = SqlStorage.from_url(fresh_url)
    try:
        listed, total = await storage.list_keys(1, 100)
        assert total == 5
        for n, record in enumerate(listed, 1):
            assert record.token == f"{n:064x}"
            assert (record.spend_nanos, record.period_base_nanos) == (300 * n, n)
            assert (record.user_id, record.team_id, record.organization_id,
                    record.budget_id) == (None, None, None, None)
        logs = await storage.spend_logs(SpendQuery(api_key=f"{2:064x}", page_size=100))
        assert sorted(r["request_id"] for r in logs) == ["r2-0", "r2-1", "r2-2"]
        assert all(r["user_id"] is None and r["end_user"] is None for r in logs)
        # the ledger goes on adding to the upgraded keys, and a retried old row adds nothing
        new = SpendRow("r2-new", f"{2:064x}", None, "m", "u", "chat_completion", 1, 1, 50,
                       t0, t0, "success")
        old = SpendRow("r2-0", f"{2:064x}", None, "m", "u", "chat_completion", 1, 1, 200,
                       t0, t0, "success")
        assert await storage.write_spend([new, old]) == 1
        after = await storage.get_key(f"{2:064x}")
        assert after is not None and after.spend_nanos == 650
    finally:
        await storage.close()



async def test_upgrade_with_duplicate_emails_keeps_the_oldest_holder(fresh_url: str) -> None:
    """0009's unique index on lower(user_email) meets users sharing an email (possible before
    it, case aside): the upgrade does not fail; the oldest keeps the email, the others' goes
    to their metadata; afterwards a second holder of an email, in any case, is refused."""
    await asyncio.to_thread(command.upgrade, migrate._config(fresh_url), "0008")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def user(user_id: str, email: str | None, day: int, meta: str = "{}") -> dict[str, Any]:
        at = t0.replace(day=day)
        return {"user_id": user_id, "user_email": email, "user_role": "internal_user",
                "models": "[]", "metadata": meta, "spend_nanos": 7, "period_base_nanos": 0,
                "created_at": at, "updated_at": at}

    before = [user("u-new", "a@x.io", 2), user("u-old", "A@x.io", 1),
              user("u-third", "a@X.IO", 3, '{"team": "red"}'), user("u-other", "b@x.io", 1),
              user("u-none", None, 1), user("u-none-2", None, 2)]

    def write_0008(conn: Connection) -> None:
        conn.execute(Table("faregate_users", MetaData(), autoload_with=conn).insert(), before)
        conn.commit()

    await on(fresh_url, write_0008)
    await asyncio.to_thread(migrate.upgrade, fresh_url)

    def read(conn: Connection) -> dict[str, tuple[Any, ...]]:
        rows = conn.exec_driver_sql("SELECT user_id, user_email, metadata, spend_nanos "
                                    "FROM faregate_users").all()
        return {r[0]: tuple(r[1:]) for r in rows}

    after = await on(fresh_url, read)
    assert after == {
        "u-old": ("A@x.io", "{}", 7), "u-other": ("b@x.io", "{}", 7),
        "u-new": (None, '{"faregate_duplicate_user_email":"a@x.io"}', 7),
        "u-third": (None, '{"team":"red","faregate_duplicate_user_email":"a@X.IO"}', 7),
        "u-none": (None, "{}", 7), "u-none-2": (None, "{}", 7)}

    def insert_twin(conn: Connection) -> None:
        users = Table("faregate_users", MetaData(), autoload_with=conn)
        conn.execute(users.insert(), [user("u-twin", "B@X.io", 4)])

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression")
        with pytest.raises(IntegrityError):
            await on(fresh_url, insert_twin)


async def test_hour_rollup_downgrades_and_upgrades_again(fresh_url: str) -> None:
    """0010 goes down to 0009 (table, triggers and function gone: a row still writes) and up
    again, its backfill then equal to the 15-minute rollup's hours."""
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    store = SqlStorage.from_url(fresh_url)
    at = datetime(2026, 1, 1, 10, 40, tzinfo=UTC)
    row = SpendRow("r1", "k" * 64, None, "m", "u", "chat_completion", 1, 2, 30, at, at,
                   "success")
    try:
        await store.write_spend([row])
    finally:
        await store.close()
    await asyncio.to_thread(command.downgrade, migrate._config(fresh_url), "0009")
    assert "faregate_spend_rollup_hour" not in await on(fresh_url, reflect)
    # at 0009 a row still writes (as that release's ledger wrote it: no attempts or error)
    await on(fresh_url, lambda conn: insert_rows(conn, [replace(row, request_id="r2")]))
    await asyncio.to_thread(migrate.upgrade, fresh_url)

    def hours(conn: Connection) -> list[Any]:
        return conn.exec_driver_sql(
            "SELECT level, id, spend_nanos, requests FROM faregate_spend_rollup_hour "
            "ORDER BY level, id").all()

    assert [tuple(r) for r in await on(fresh_url, hours)] == [("all", "", 60, 2),
                                                              ("model", "m", 60, 2)]


def insert_rows(conn: Connection, rows: list[SpendRow]) -> None:
    """Ledger rows as an older release wrote them: the columns its table has."""
    table = Table("faregate_spend_logs", MetaData(), autoload_with=conn)
    conn.execute(table.insert(), [{c.name: getattr(r, c.name) for c in table.columns}
                                  for r in rows])
    conn.commit()


async def test_row_attempts_and_error_downgrade_and_upgrade_again(fresh_url: str) -> None:
    """0011 adds attempts and error to the ledger: rows written before it read as not
    recorded (NULL, not a guessed 1), rows after it keep theirs; down to 0010 the columns go
    (the other rows, their rollups and triggers stay), and up again they are back, empty."""
    await asyncio.to_thread(command.upgrade, migrate._config(fresh_url), "0010")
    at = datetime(2026, 1, 1, 10, 40, tzinfo=UTC)
    before = SpendRow("r-old", "k" * 64, None, "m", "u", "chat_completion", 1, 2, 30, at, at,
                      "failure")
    await on(fresh_url, lambda conn: insert_rows(conn, [before]))
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    assert await migrate.current_revision(fresh_url) == migrate.head_revision()
    store = SqlStorage.from_url(fresh_url)
    after = replace(before, request_id="r-new", attempts=3,
                    error="upstream_error: The upstream failed with HTTP 503")
    try:
        await store.write_spend([after])
        old, new = await store.report_log("r-old"), await store.report_log("r-new")
        assert old is not None and (old.attempts, old.error) == (None, None)
        assert new is not None and (new.attempts, new.error) == (3, after.error)
    finally:
        await store.close()
    await asyncio.to_thread(command.downgrade, migrate._config(fresh_url), "0010")
    columns = (await on(fresh_url, reflect))["faregate_spend_logs"]["columns"]
    assert "attempts" not in columns and "error" not in columns

    def sums(conn: Connection) -> list[Any]:
        return conn.exec_driver_sql(
            "SELECT level, spend_nanos, requests, failures FROM faregate_spend_rollup_hour "
            "WHERE level = 'all'").all()

    await on(fresh_url, lambda conn: insert_rows(conn, [replace(before, request_id="r-3")]))
    assert [tuple(r) for r in await on(fresh_url, sums)] == [("all", 90, 3, 3)]
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    assert (await on(fresh_url, reflect))["faregate_spend_logs"] == \
        reference()["faregate_spend_logs"]
    store = SqlStorage.from_url(fresh_url)
    try:
        again = await store.report_log("r-new")
        assert again is not None and (again.attempts, again.error) == (None, None)
    finally:
        await store.close()

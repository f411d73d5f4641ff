"""Migrations produce exactly the reference schema, on SQLite and Postgres, from empty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import UniqueConstraint, inspect
from sqlalchemy.engine import Connection
from support import fresh_pg_database

from faregate.errors import ConfigError
from faregate.storage import migrate
from faregate.storage.database import create_engine
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


def reflect(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in insp.get_table_names():
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": {c["name"]: c["nullable"] for c in insp.get_columns(table)},
            "order": [c["name"] for c in insp.get_columns(table)],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "indexes": {i["name"]: (tuple(i["column_names"]), bool(i["unique"]))
                        for i in insp.get_indexes(table) if not i.get("duplicates_constraint")},
            "unique": sorted(tuple(u["column_names"])
                             for u in insp.get_unique_constraints(table)),
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
            "indexes": {i.name: (tuple(c.name for c in i.columns), bool(i.unique))
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
    assert set(got) == set(want) == {"faregate_keys", "faregate_spend_logs", "faregate_models",
                                     "faregate_replicas"}
    for table in want:
        assert got[table] == want[table], table
    # the reference is not trivially empty: the checks above compare something
    assert want["faregate_keys"]["unique"] == [("key_alias",)]
    assert set(want["faregate_spend_logs"]["indexes"]) == {"ix_spend_logs_api_key_start",
                                                           "ix_spend_logs_start"}
    assert want["faregate_keys"]["columns"]["key_alias"] is True
    assert want["faregate_keys"]["columns"]["spend_nanos"] is False


async def test_autogenerate_finds_no_difference(fresh_url: str) -> None:
    """Alembic's own comparison (types included) sees nothing left to migrate."""
    await asyncio.to_thread(migrate.upgrade, fresh_url)

    def diff(conn: Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
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

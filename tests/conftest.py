"""Shared fixtures: a fresh Postgres database per test run, SQLite files, the mock upstream."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from support import free_port, fresh_pg_database, in_thread, stop, wait_for_port

from faregate.storage import migrate


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A database created for this test run and dropped after it."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_migrated_url(pg_server_url: str) -> str:
    in_thread(migrate.upgrade, pg_server_url)
    return pg_server_url


async def truncate_pg(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE faregate_keys, faregate_spend_logs, faregate_models")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'faregate.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        return url
    url = request.getfixturevalue("pg_migrated_url")
    await truncate_pg(url)
    return url


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[str]:
    """The project's mock OpenAI-compatible server, as a real process. Yields its /v1 URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "faregate", "mock-upstream", "--port",
                             str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)

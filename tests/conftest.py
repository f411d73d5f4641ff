"""Shared fixtures: a fresh Postgres database per test run, SQLite files, the mock upstream."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from faults.harness import FaultTable
from support import (
    FAULT_TABLE_ENV,
    fresh_pg_database,
    in_thread,
    mock_upstream_process,
)

from faregate.storage import migrate


def pytest_configure(config: pytest.Config) -> None:
    """The fault suite's table (tests/faults) goes to one file for the whole run, whichever
    process (xdist worker) ran the scenario; the run prints it at its end."""
    if not hasattr(config, "workerinput"):        # the controller, or a run without xdist
        fd, path = tempfile.mkstemp(prefix="faregate-fault-table-", suffix=".jsonl")
        os.close(fd)
        os.environ[FAULT_TABLE_ENV] = path


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = os.environ.get(FAULT_TABLE_ENV)
    if hasattr(config, "workerinput") or not path:
        return
    table = FaultTable(Path(path))
    if table.lines:
        terminalreporter.section("fault injection: no spend row lost or doubled")
        terminalreporter.write_line(table.render())
    Path(path).unlink(missing_ok=True)


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
        await conn.execute(
            "TRUNCATE faregate_keys, faregate_spend_logs, faregate_models, faregate_budgets, "
            "faregate_users, faregate_teams, faregate_team_members, faregate_organizations, "
            "faregate_organization_members, faregate_end_users, faregate_spend_rollup, "
            "faregate_spend_rollup_hour")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite file migrated once per test run (per xdist worker), for `db_url` to
    copy: a copy is the same bytes, where migrating each test's file cost ~0.3 s of its time."""
    path = tmp_path_factory.mktemp("sqlite-migrated") / "faregate.db"
    in_thread(migrate.upgrade, f"sqlite:///{path}")
    assert [p.name for p in path.parent.iterdir()] == [path.name], "not all in the one file"
    return path


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "faregate.db"
        shutil.copyfile(request.getfixturevalue("sqlite_migrated"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_migrated_url")
    await truncate_pg(url)
    return url


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[str]:
    """The project's mock OpenAI-compatible server, as a real process. Yields its /v1 URL."""
    with mock_upstream_process() as url:
        yield url

"""Fault injection with real processes: a Postgres of the run's own (stopped and started by the
tests), a mock upstream of its own (faults switched at run time), `faregate serve` processes
signalled and killed. Every scenario adds a line to a table printed at the end of the run."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from e2e.conftest import ServedGateway, start_gateway
from faults.harness import FaultTable
from faults.private_postgres import PrivatePostgres
from support import (
    FAULT_TABLE_ENV,
    MASTER_KEY,
    PRICE_IN,
    PRICE_OUT,
    in_thread,
    mock_upstream_process,
)


@pytest.fixture(scope="session")
def fault_table() -> FaultTable:
    # The file is named by tests/conftest.py, which prints the table at the end of the run.
    return FaultTable(Path(os.environ[FAULT_TABLE_ENV]))


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture(scope="module")
def fault_mock() -> Iterator[str]:
    """A mock upstream of this module's own: faults switched on it affect no other test."""
    with mock_upstream_process() as url:
        yield url


def new_database(pg: PrivatePostgres) -> str:
    name = f"faults_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    in_thread(asyncio.run, create())
    return pg.url.rsplit("/", 1)[0] + "/" + name


def model(name: str, api_base: str, upstream_model: str | None = None,
          **params: Any) -> dict[str, Any]:
    return {"model_name": name,
            "litellm_params": {"model": f"openai/{upstream_model or name}", "api_base": api_base,
                               "input_cost_per_token": PRICE_IN,
                               "output_cost_per_token": PRICE_OUT, **params}}


def start(tmp_path: Path, database_url: str, models: list[dict[str, Any]],
          general: dict[str, Any] | None = None,
          router_settings: dict[str, Any] | None = None,
          args: tuple[str, ...] = ()) -> ServedGateway:
    cfg: dict[str, Any] = {"model_list": models,
                           "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY",
                                                **(general or {})}}
    if router_settings:
        cfg["router_settings"] = router_settings
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FAREGATE_MASTER_KEY": MASTER_KEY, "DATABASE_URL": database_url,
           "FAREGATE_DATA_DIR": str(tmp_path / "data")}
    return start_gateway(tmp_path, env, ["--config", str(path), *args])


def new_key(base_url: str, **fields: Any) -> str:
    resp = httpx.post(f"{base_url}/key/generate", json=fields,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])

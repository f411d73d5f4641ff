"""An in-process gateway served by a real uvicorn server on a free port, per test.

The gateway runs in the test's event loop, so tests can reach its internals (flush the ledger)
while clients talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from support import MASTER_KEY, env_for, free_port, write_config

from faregate import config
from faregate.app import Faregate


@dataclass
class RunningGateway:
    app: Faregate
    base_url: str
    http: httpx.AsyncClient
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        """The official openai SDK, pointed at this gateway; closed with the fixture."""
        client = openai.AsyncOpenAI(api_key=key, base_url=self.base_url + "/v1", max_retries=0)
        self.clients.append(client)
        return client

    async def new_key(self, **fields: object) -> str:
        resp = await self.http.post("/key/generate", json={"models": ["qwen-local"], **fields},
                                    headers={"Authorization": f"Bearer {MASTER_KEY}"})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["key"])

    async def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return await self.http.request(method, path, headers={
            "Authorization": f"Bearer {MASTER_KEY}"}, **kwargs)  # type: ignore[arg-type]


class Clock:
    """Wall time that tests move forward instead of sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _model(name: str, upstream_model: str, api_base: str) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"openai/{upstream_model}", "api_base": api_base,
        "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}


def faulty_models(upstream: str) -> list[dict[str, Any]]:
    """Deployments the mock answers badly (see its fault-<status> and slow-<ms> models)."""
    return [_model("broken-model", "fault-500", upstream),
            _model("limited-model", "fault-429", upstream),
            _model("slow-model", "slow-20", upstream),
            _model("unreachable-model", "x", "http://127.0.0.1:9/v1")]


@pytest.fixture
async def gateway(db_url: str, mock_upstream: str, tmp_path: Path, clock: Clock
                  ) -> AsyncIterator[RunningGateway]:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream,
                       extra_models=faulty_models(mock_upstream))
    settings = config.load({**os.environ, **env_for(db_url, tmp_path)}, cfg)
    async with serve(Faregate.from_settings(settings, now=clock.now)) as running:
        yield running


@contextlib.asynccontextmanager
async def serve(app: Faregate) -> AsyncIterator[RunningGateway]:
    """`app` on a real uvicorn server on a free port, in this event loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="none",
                                           lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            running = RunningGateway(app, base, http)
            yield running
            for client in running.clients:
                await client.close()
    finally:
        server.should_exit = True
        await task

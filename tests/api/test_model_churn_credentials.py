"""Stored models deleted and re-added many times, each pointed at an upstream with its own key:
every upstream must receive only its own key.

`ModelCatalog.refresh` builds new `Deployment` objects on every change, and CPython hands a
freed object's address (its `id()`) to the next object of the same size. A provider cache
keyed by `id(deployment)` could therefore send a new deployment the credentials of a deleted
one, to the new one's api_base. Each mock here answers 401 to any other key (the gateway's
502 upstream_auth_error), and counts only the requests that carried its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from api.conftest import RunningGateway, serve
from support import env_for, free_port, write_config

from faregate import config
from faregate.app import Faregate
from faregate.mocks.openai_server import MockUpstream, build_app

SALT_KEY = "salt-key-for-tests-0123456789abcdef"
KEYS = ("upstream-key-one-1a2b3c", "upstream-key-two-4d5e6f", "upstream-key-three-7a8b9c")
ROUNDS = 30
SLOTS = 3           # stored models alive at once; every change rebuilds all their Deployments


@contextlib.asynccontextmanager
async def keyed_mock(api_key: str) -> AsyncIterator[tuple[str, MockUpstream]]:
    """The project's mock upstream, answering only `Bearer api_key`, in this event loop."""
    mock = build_app(api_key=api_key)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(mock, host="127.0.0.1", port=port, loop="none",
                                           lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}/v1", mock
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def upstreams() -> AsyncIterator[list[tuple[str, MockUpstream]]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(keyed_mock(k)) for k in KEYS]


@pytest.fixture
async def gw(db_url: str, mock_upstream: str, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    settings = config.load({**os.environ, **env_for(db_url, tmp_path),
                            "FAREGATE_SALT_KEY": SALT_KEY}, cfg)
    async with serve(Faregate.from_settings(settings)) as running:
        yield running


def _stored(name: str, api_base: str, api_key: str) -> dict[str, Any]:
    return {"model_name": name, "model_info": {},
            "litellm_params": {"model": "openai/churn", "api_base": api_base,
                               "api_key": api_key, "input_cost_per_token": 0.000001,
                               "output_cost_per_token": 0.000002}}


async def test_every_upstream_gets_only_its_own_key_while_models_churn(
        gw: RunningGateway, upstreams: list[tuple[str, MockUpstream]]) -> None:
    key = await gw.new_key(models=[])
    auth = {"Authorization": f"Bearer {key}"}
    ids: list[str | None] = [None] * SLOTS
    serving = [0] * SLOTS                     # slot -> index of the upstream it points at
    expected = [0] * len(upstreams)           # requests each upstream should have counted
    for round_ in range(ROUNDS):
        for slot in range(SLOTS):
            if ids[slot] is not None:
                resp = await gw.admin("POST", "/model/delete", json={"id": ids[slot]})
                assert resp.status_code == 200, resp.text
            target = (round_ + slot) % len(upstreams)
            url, _ = upstreams[target]
            resp = await gw.admin("POST", "/model/new",
                                  json=_stored(f"churn-{slot}", url, KEYS[target]))
            assert resp.status_code == 200, resp.text
            ids[slot], serving[slot] = resp.json()["model_id"], target
            for each in range(SLOTS):
                if ids[each] is None:
                    continue
                resp = await gw.http.post("/v1/chat/completions", headers=auth, json={
                    "model": f"churn-{each}", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "ping"}]})
                assert resp.status_code == 200, (round_, slot, each, resp.text)
                expected[serving[each]] += 1
    assert [mock.stats.requests for _, mock in upstreams] == expected

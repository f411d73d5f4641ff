"""Routing with real processes: two `faregate mock-upstream` processes serve `qwen-local` as two
deployments of one `faregate serve`. Load shared by weight, one upstream SIGKILLed mid-run with
no failed client request, a fallback to another model, and a cooldown that ends.

Each mock's GET /mock/stats counts the requests that reached it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from e2e.conftest import ServedGateway, start_gateway
from support import (
    MASTER_KEY,
    PRICE_IN,
    PRICE_OUT,
    env_for,
    free_port,
    in_thread,
    stop,
    wait_for_port,
)

from faregate.storage import migrate

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = {"model": "qwen-local", "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 4}


@dataclass
class Mock:
    proc: subprocess.Popen[bytes]
    url: str                                # its /v1 base

    def control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        resp = httpx.request(method, self.url.removesuffix("/v1") + path, json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def requests(self) -> int:
        return int(self.control("GET", "/mock/stats")["requests"])


def start_mocks(count: int) -> list[Mock]:
    """`count` mock processes, started side by side (each takes seconds on a busy machine)."""
    ports = [free_port() for _ in range(count)]
    mocks = [Mock(subprocess.Popen([sys.executable, "-m", "faregate", "mock-upstream",
                                    "--port", str(port)], stdout=subprocess.DEVNULL),
                  f"http://127.0.0.1:{port}/v1") for port in ports]
    try:
        for port, mock in zip(ports, mocks, strict=True):
            wait_for_port(port, proc=mock.proc)
    except Exception:
        for mock in mocks:
            stop(mock.proc)
        raise
    return mocks


def qwen(api_base: str, weight: float, name: str = "qwen-local") -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": "openai/qwen-local", "api_base": api_base, "weight": weight,
        "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}}


def serve_gateway(tmp: Path, models: list[dict[str, Any]],
                  router_settings: dict[str, Any]) -> ServedGateway:
    db = f"sqlite:///{tmp / 'faregate.db'}"
    in_thread(migrate.upgrade, db)          # it runs its own event loop
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": models, "router_settings": router_settings,
        "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY"}}))
    return start_gateway(tmp, {**os.environ, **env_for(db, tmp)}, ["--config", str(cfg)])


def new_key(gw: ServedGateway, models: list[str]) -> str:
    resp = httpx.post(f"{gw.base_url}/key/generate", json={"models": models, "max_budget": 1},
                      headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def health(gw: ServedGateway) -> dict[str, dict[str, Any]]:
    """/health/deployments, by api_base."""
    resp = httpx.get(f"{gw.base_url}/health/deployments", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return {d["api_base"]: d for d in resp.json()}


async def fire(gw: ServedGateway, key: str, count: int, parallel: int = 8,
               on_done: Any = None, model: str = "qwen-local") -> list[httpx.Response]:
    """`count` chat requests, `parallel` at a time; `on_done(n)` after each answer."""
    gate = asyncio.Semaphore(parallel)
    done = 0

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        nonlocal done
        async with gate:
            resp = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
            done += 1
            if on_done is not None:
                on_done(done)
            return resp

    async with httpx.AsyncClient(base_url=gw.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        return list(await asyncio.gather(*(one(client) for _ in range(count))))


@dataclass
class Stack:
    heavy: Mock
    light: Mock
    doomed: Mock
    gw: ServedGateway
    key: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gateway: qwen-local on two mocks, weights 3:1; `primary` on a closed port, falling
    back to qwen-local; `sturdy` on the heavy mock and on one that a test kills."""
    heavy, light, doomed = start_mocks(3)
    gw = None
    try:
        gw = serve_gateway(tmp_path_factory.mktemp("routing"), [
            qwen(heavy.url, 3), qwen(light.url, 1),
            qwen(heavy.url, 1, "sturdy"), qwen(doomed.url, 1, "sturdy"),
            {"model_name": "primary", "litellm_params": {
                "model": "openai/qwen-local", "api_base": f"http://127.0.0.1:{free_port()}/v1",
                "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}}],
            {"num_retries": 2, "retry_backoff": 0.01, "allowed_fails": 0, "cooldown_time": 1,
             "fallbacks": [{"primary": ["qwen-local"]}]})
        yield Stack(heavy, light, doomed, gw, new_key(gw, ["qwen-local", "primary", "sturdy"]))
    finally:
        if gw is not None:
            stop(gw.proc)
        for mock in (heavy, light, doomed):
            stop(mock.proc)


def healthy_and_reset(s: Stack) -> None:
    """Every mock answering, counters at 0, no deployment cooling down (a cooldown is 1 s)."""
    for mock in (s.heavy, s.light, s.doomed):
        mock.control("POST", "/mock/reset")
    deadline = time.monotonic() + 5
    while any(d["state"] == "cooling_down" for d in health(s.gw).values()):
        assert time.monotonic() < deadline
        time.sleep(0.1)


async def test_two_deployments_share_the_load_by_weight(stack: Stack) -> None:
    healthy_and_reset(stack)
    answers = await fire(stack.gw, stack.key, 200)
    assert [r.status_code for r in answers] == [200] * 200
    heavy, light = stack.heavy.requests(), stack.light.requests()
    assert heavy + light == 200
    assert 0.6 <= heavy / 200 <= 0.9, (heavy, light)        # weights 3:1 -> about 75%


def test_a_failing_model_falls_back_to_another_and_the_ledger_names_it(stack: Stack) -> None:
    healthy_and_reset(stack)
    sdk = openai.OpenAI(api_key=stack.key, base_url=stack.gw.base_url + "/v1", max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "ping"}], max_tokens=4)
    assert raw.parse().choices[0].message.content == "mock mock mock mock"
    assert raw.headers["x-faregate-model-group"] == "qwen-local"
    assert raw.headers["x-faregate-attempts"] == "4"         # 1 + 2 retries on primary, then 1
    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not (rows := httpx.get(f"{stack.gw.base_url}/spend/logs", headers=ADMIN,
                                 params={"request_id": request_id}).json()):
        assert time.monotonic() < deadline, "no spend row"
        time.sleep(0.05)
    [row] = rows
    assert (row["model"], row["status"]) == ("qwen-local", "success")
    assert row["spend"] > 0
    primary = [d for d in health(stack.gw).values() if d["model_name"] == "primary"]
    assert primary[0]["fails_last_minute"] == 3 and primary[0]["last_error"]


async def test_a_cooldown_ends_and_the_fixed_deployment_gets_traffic_again(
        stack: Stack) -> None:
    healthy_and_reset(stack)
    stack.light.control("POST", "/mock/faults", {"mode": "error", "status": 503})
    for _ in range(60):                     # until the light one has been picked (1 in 4)
        asked_at = time.monotonic()
        [answer] = await fire(stack.gw, stack.key, 1)
        assert answer.status_code == 200   # its failure was retried on the heavy one
        if stack.light.requests():
            break
    light = health(stack.gw)[stack.light.url]
    assert light["fails_last_minute"] == 1 and "503" in light["last_error"]
    if time.monotonic() - asked_at < 0.9:  # its 1 s cooldown cannot be over yet
        assert light["state"] == "cooling_down" and light["cooldown_left_s"] > 0
    hit = stack.light.requests()
    stack.light.control("POST", "/mock/faults", {"mode": "ok"})
    deadline = time.monotonic() + 5
    while health(stack.gw)[stack.light.url]["state"] == "cooling_down":
        assert time.monotonic() < deadline, "the cooldown never ended"
        await asyncio.sleep(0.1)
    more = await fire(stack.gw, stack.key, 60, parallel=1)
    assert [r.status_code for r in more] == [200] * len(more)
    assert stack.light.requests() > hit + 2                # a quarter of 60, loosely
    light = health(stack.gw)[stack.light.url]
    assert light["state"] in ("healthy", "failing") and light["latency_s"] is not None


async def test_an_upstream_killed_mid_run_fails_no_client_request(stack: Stack) -> None:
    """Last in this module: it kills the `sturdy` model's second mock for good."""
    healthy_and_reset(stack)
    doomed = stack.doomed

    def kill_after_a_third(done: int) -> None:
        if done == 40:
            os.kill(doomed.proc.pid, signal.SIGKILL)

    answers = await fire(stack.gw, stack.key, 120, on_done=kill_after_a_third, model="sturdy")
    assert doomed.proc.wait(5) == -signal.SIGKILL
    assert [r.status_code for r in answers] == [200] * 120
    assert any("x-faregate-attempts" in r.headers for r in answers)   # some were retried
    dead = health(stack.gw)[doomed.url]
    assert dead["fails_last_minute"] >= 1 and doomed.url in dead["last_error"]

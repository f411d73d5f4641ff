"""The mock upstream's fault modes, driven over HTTP as another process would drive them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from support import mock_upstream_process

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """A mock of this module's own: run-time faults apply to every request it serves."""
    with mock_upstream_process() as url:
        yield url.removesuffix("/v1")


@pytest.fixture
async def mock(mock_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock_url, timeout=10) as client:
        assert (await client.post("/mock/reset")).status_code == 200
        yield client


async def stats(client: httpx.AsyncClient) -> dict[str, int]:
    return dict((await client.get("/mock/stats")).json())


async def set_fault(client: httpx.AsyncClient, **fault: Any) -> None:
    resp = await client.post("/mock/faults", json=fault)
    assert resp.status_code == 200, resp.text


async def stats_until(client: httpx.AsyncClient, **wanted: int) -> dict[str, int]:
    """The counters once they show `wanted` (the mock updates them as it notices events)."""
    for _ in range(200):
        now = await stats(client)
        if all(now[k] == v for k, v in wanted.items()):
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"mock stats never reached {wanted}: {now}")


@pytest.mark.parametrize(("body", "message"), [
    ({"mode": "explode"}, "'mode' one of"),
    ({"status": 503}, "'mode' one of"),
    ({"mode": "error", "status": 200}, "'status' must be an HTTP error status"),
    ({"mode": "error", "rate": 2}, "'rate' must be a number in [0, 1]"),
    ({"mode": "slow", "ms": "lots"}, "'ms' must be a number"),
    ({"mode": "break", "after": -1}, "'after' must be an int"),
    ([], "'mode' one of"),
])
async def test_bad_fault_bodies_are_400_saying_what_is_expected(
        mock: httpx.AsyncClient, body: Any, message: str) -> None:
    resp = await mock.post("/mock/faults", json=body)
    assert resp.status_code == 400
    assert message in resp.json()["error"]["message"]
    assert (await mock.get("/mock/faults")).json()["mode"] == "ok"


async def test_not_json_is_400(mock: httpx.AsyncClient) -> None:
    resp = await mock.post("/mock/faults", content=b"{nope")
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"]["message"]


async def test_error_mode_answers_the_status_for_every_model(mock: httpx.AsyncClient) -> None:
    await set_fault(mock, mode="error", status=503)
    for model in ("a", "b"):
        resp = await mock.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert resp.status_code == 503
        assert resp.json()["error"]["type"] == "server_error"
    assert (await mock.post("/v1/embeddings", json={"model": "e", "input": "x"})).status_code \
        == 503
    assert (await mock.get("/health")).status_code == 200       # never faulted
    await set_fault(mock, mode="ok")
    assert (await mock.post("/v1/chat/completions", json=CHAT)).status_code == 200
    now = await stats(mock)
    assert (now["requests"], now["faults_injected"]) == (4, 3)


async def test_a_rate_makes_it_flap_reproducibly(mock: httpx.AsyncClient) -> None:
    async def statuses() -> list[int]:
        await set_fault(mock, mode="error", status=500, rate=0.5, seed=3)
        return [(await mock.post("/v1/chat/completions", json=CHAT)).status_code
                for _ in range(40)]

    first = await statuses()
    assert set(first) == {200, 500}
    assert 10 < first.count(500) < 30
    assert await statuses() == first                 # the same seed, the same flaps


async def test_slow_mode_still_answers(mock: httpx.AsyncClient) -> None:
    await set_fault(mock, mode="slow", ms=30)
    assert (await mock.get("/mock/faults")).json()["ms"] == 30
    resp = await mock.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4


async def test_down_mode_drops_the_connection(mock: httpx.AsyncClient) -> None:
    await set_fault(mock, mode="down")
    for stream in (False, True):
        with pytest.raises(httpx.RemoteProtocolError):
            await mock.post("/v1/chat/completions", json={**CHAT, "stream": stream})


@pytest.mark.parametrize("how", ["run-time", "model"])
async def test_hang_never_answers(mock: httpx.AsyncClient, how: str) -> None:
    body = CHAT
    if how == "run-time":
        await set_fault(mock, mode="hang")
    else:
        body = {**CHAT, "model": "hang"}
    with pytest.raises(httpx.ReadTimeout):
        await mock.post("/v1/chat/completions", json=body, timeout=0.3)


@pytest.mark.parametrize("how", ["run-time", "model"])
async def test_malformed_answers_200_with_a_body_that_is_not_json(mock: httpx.AsyncClient,
                                                                  how: str) -> None:
    body = CHAT
    if how == "run-time":
        await set_fault(mock, mode="malformed")
    else:
        body = {**CHAT, "model": "malformed"}
    resp = await mock.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(resp.content)


async def read_events(resp: httpx.Response, events: list[bytes]) -> None:
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            events.append(line.encode())


@pytest.mark.parametrize("how", ["run-time", "model"])
async def test_break_sends_n_events_then_drops(mock: httpx.AsyncClient, how: str) -> None:
    body = {**CHAT, "stream": True}
    if how == "run-time":
        await set_fault(mock, mode="break", after=3)
    else:
        body["model"] = "break-3"
    events: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with mock.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            await read_events(resp, events)
    assert len(events) == 3 and b"[DONE]" not in b"".join(events)
    assert await stats_until(mock, streams_broken=1, active_streams=0)


async def test_a_client_that_leaves_mid_stream_stops_the_generation(
        mock: httpx.AsyncClient) -> None:
    body = {**CHAT, "model": "slow-50", "max_tokens": 200, "stream": True}   # ~10 s
    async with mock.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = resp.aiter_lines()
        seen = 0
        while seen < 3:
            seen += (await anext(lines)).startswith("data: ")
        now = await stats(mock)
        assert (now["streams_started"], now["active_streams"]) == (1, 1)
    # closed before the end: the mock notices and stops
    final = await stats_until(mock, streams_cancelled=1, active_streams=0)
    assert final["streams_completed"] == 0


async def test_a_slow_stream_read_to_the_end_completes(mock: httpx.AsyncClient) -> None:
    body = {**CHAT, "model": "slow-1", "stream": True}
    events: list[bytes] = []
    async with mock.stream("POST", "/v1/chat/completions", json=body) as resp:
        await read_events(resp, events)
    assert events[-1] == b"data: [DONE]"
    assert await stats_until(mock, streams_completed=1, streams_cancelled=0, active_streams=0)


async def test_reset_clears_fault_and_counters(mock: httpx.AsyncClient) -> None:
    await set_fault(mock, mode="error", status=500)
    await mock.post("/v1/chat/completions", json=CHAT)
    reset = (await mock.post("/mock/reset")).json()
    assert reset["requests"] == 0
    assert (await mock.get("/mock/faults")).json()["mode"] == "ok"
    assert (await mock.get("/mock/nothing")).status_code == 404

"""Upstream faults through the real openai SDK: retries on another deployment, fallbacks,
cooldowns, breaks and disconnects mid-stream — with one ledger row per request and budgets
that hold.

Faults come from the project's mock: its fault models (`fault-<status>`, `hang`, `malformed`,
`break-<n>`, `slow-<ms>`) on the session's mock, and run-time faults (POST /mock/faults) on a
mock of this module's own (`flaky`), whose counters show what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from api.conftest import Clock, RunningGateway, serve
from prometheus_client.parser import text_string_to_metric_families
from support import (
    MASTER_KEY,
    PRICE_IN,
    PRICE_OUT,
    env_for,
    free_port,
    mock_upstream_process,
)

from faregate import config
from faregate.app import Faregate
from faregate.records import SpendRow
from faregate.spend.row_error import ERROR_CHARS, MESSAGE_CHARS
from faregate.storage import migrate
from faregate.storage.reports import LogRow

MESSAGES = [{"role": "user", "content": "ping"}]
SHARED_REDIS = os.environ.get("FAREGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
PROMPT_TOKENS = 1 + 4 + 3           # the mock's rule for MESSAGES

Start = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture(scope="module")
def flaky_url() -> Iterator[str]:
    """A mock of this module's own: run-time faults hit every request it serves."""
    with mock_upstream_process() as url:
        yield url.removesuffix("/v1")


@pytest.fixture
async def flaky(flaky_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The flaky mock's control client; the mock starts each test healthy, counters at 0."""
    async with httpx.AsyncClient(base_url=flaky_url, timeout=10) as client:
        assert (await client.post("/mock/reset")).status_code == 200
        yield client


async def set_fault(flaky: httpx.AsyncClient, **fault: Any) -> None:
    assert (await flaky.post("/mock/faults", json=fault)).status_code == 200


async def mock_stats(flaky: httpx.AsyncClient, **wanted: int) -> dict[str, int]:
    """The flaky mock's counters, once they show `wanted`."""
    for _ in range(200):
        now = dict((await flaky.get("/mock/stats")).json())
        if all(now[k] == v for k, v in wanted.items()):
            return now
        await asyncio.sleep(0.05)
    raise AssertionError(f"the mock's stats never reached {wanted}: {now}")


def deployment(name: str, upstream_model: str, api_base: str, *, price: float = 1,
               **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"openai/{upstream_model}", "api_base": api_base,
        "input_cost_per_token": PRICE_IN * price, "output_cost_per_token": PRICE_OUT * price,
        **params}}


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"        # nothing listens: connection refused


@pytest.fixture
async def start(tmp_path: Path, clock: Clock) -> AsyncIterator[Start]:
    """Start a gateway with these models and router_settings (SQLite unless a URL is given;
    admission in process, or in the shared Redis)."""
    async with contextlib.AsyncExitStack() as stack:
        async def _start(models: list[dict[str, Any]], router_settings: dict[str, Any]
                         | None = None, database_url: str | None = None,
                         admission: str = "local") -> RunningGateway:
            if database_url is None:
                database_url = f"sqlite:///{tmp_path / 'faregate.db'}"
                await asyncio.to_thread(migrate.upgrade, database_url)
            path = tmp_path / "config.yaml"
            path.write_text(yaml.safe_dump({
                "model_list": models,
                "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY"},
                "router_settings": {"retry_backoff": 0.01, **(router_settings or {})}}))
            env = {**os.environ, **env_for(database_url, tmp_path)}
            env.pop("REDIS_URL", None)
            if admission == "redis":
                env["REDIS_URL"] = SHARED_REDIS      # keys are per virtual key: no clashes
            settings = config.load(env, path)
            gw = await stack.enter_async_context(
                serve(Faregate.from_settings(settings, now=clock.now, rng=random.Random(7))))
            spy_on_ledger(gw)
            return gw
        yield _start


def spy_on_ledger(gw: RunningGateway) -> None:
    """Count what the gateway hands the ledger: the database dedupes by request id, so only
    this shows a request recorded twice."""
    ledger = gw.app.ledger
    real = ledger.record
    recorded: list[str] = []

    def record(row: SpendRow) -> None:
        recorded.append(row.request_id)
        real(row)

    ledger.record = record  # type: ignore[method-assign]
    gw.recorded = recorded  # type: ignore[attr-defined]


async def ledger_rows(gw: RunningGateway, key: str) -> list[dict[str, Any]]:
    """The key's spend rows, checked: one handed over per request, and they sum to the key's
    spend."""
    recorded = Counter(gw.recorded)  # type: ignore[attr-defined]
    for _ in range(200):            # the ledger writes in the background, every 0.2 s
        rows: list[dict[str, Any]] = (await gw.admin("GET", "/spend/logs",
                                                     params={"api_key": key})).json()
        if len(rows) >= len(recorded):
            break
        await asyncio.sleep(0.05)
    assert all(n == 1 for n in recorded.values()), recorded
    assert {r["request_id"] for r in rows} <= set(recorded)
    info = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
    assert sum(r["spend_nanos"] for r in rows) == pytest.approx(info["total_spend"] * 1e9,
                                                                abs=1)
    return rows


async def stored(gw: RunningGateway, request_id: str) -> LogRow:
    """The request's ledger row as the UI reads it (attempts and error are not in
    /spend/logs: LiteLLM's SpendLogs shape has no such fields)."""
    row = await gw.app.storage.report_log(request_id)
    assert row is not None, request_id
    return row


def price(prompt: int, completion: int, times: float = 1) -> float:
    return (prompt * PRICE_IN + completion * PRICE_OUT) * times


async def ask(sdk: openai.AsyncOpenAI, model: str, stream: bool, max_tokens: int = 4
              ) -> tuple[str, httpx.Headers]:
    """One request; the answer's text and the response headers."""
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=max_tokens,  # type: ignore[arg-type]
        stream=stream)
    if not stream:
        return raw.parse().choices[0].message.content or "", raw.headers  # type: ignore[union-attr]
    text = "".join([chunk.choices[0].delta.content or ""
                    async for chunk in raw.parse() if chunk.choices])  # type: ignore[union-attr]
    return text, raw.headers


FAILURES = {
    "http 500": {"mode": "error", "status": 500},
    "connection dropped": {"mode": "down"},
    "malformed JSON": {"mode": "malformed"},
    "hang past the timeout": {"mode": "hang"},
    "connection refused": None,
}


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_a_failing_deployment_is_retried_on_another_and_cools_down(
        start: Start, flaky: httpx.AsyncClient, flaky_url: str, mock_upstream: str,
        failure: str) -> None:
    fault = FAILURES[failure]
    if fault is not None:
        await set_fault(flaky, **fault)
    bad_base = flaky_url + "/v1" if fault is not None else closed_port_url()
    # The failing deployment carries nearly all the weight: the first request goes there.
    gw = await start([deployment("duo", "qwen-local", bad_base, weight=100, timeout=0.5),
                      deployment("duo", "qwen-local", mock_upstream, weight=1)],
                     {"allowed_fails": 0, "cooldown_time": 600})
    key = await gw.new_key(models=["duo"], max_budget=1)
    sdk = gw.sdk(key)
    answers = [await ask(sdk, "duo", stream) for stream in [False] * 3 + [True] * 3]
    assert [text for text, _ in answers] == ["mock mock mock mock"] * 6
    attempts = [h.get("x-faregate-attempts", "1") for _, h in answers]
    assert attempts == ["2", "1", "1", "1", "1", "1"]      # then the bad one cooled down
    assert answers[0][1]["x-faregate-model-group"] == "duo"

    bad, good = gw.app.router.health()
    assert bad.cooling_down and bad.fails_last_minute == 1 and bad.last_error
    assert not good.cooling_down
    scrape = await gw.http.get("/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    states = {s.labels["model_id"]: s.value for f in text_string_to_metric_families(
        scrape.text) if f.name == "faregate_deployment_state"
        for s in f.samples}
    assert states == {bad.deployment_id: 2, good.deployment_id: 0}
    rows = await ledger_rows(gw, key)
    assert sorted(r["request_id"] for r in rows) == sorted(h["x-request-id"] for _, h in answers)
    assert {r["status"] for r in rows} == {"success"}
    assert {r["api_base"] for r in rows} == {f"{mock_upstream}#qwen-local"}
    assert sum(r["spend"] for r in rows) == pytest.approx(6 * price(PROMPT_TOKENS, 4))
    kept = [await stored(gw, h["x-request-id"]) for _, h in answers]
    assert [(r.attempts, r.error) for r in kept] == [(2, None)] + [(1, None)] * 5
    if fault is not None:
        await mock_stats(flaky, requests=1)


@pytest.mark.parametrize("admission", ["local", "redis"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallback_model_answers_after_the_primarys_retries_at_its_own_price(
        start: Start, mock_upstream: str, stream: bool, admission: str) -> None:
    gw = await start([deployment("primary", "fault-503", mock_upstream),
                      deployment("backup", "qwen-local", mock_upstream, price=3)],
                     {"num_retries": 2, "fallbacks": [{"primary": ["backup"]}]},
                     admission=admission)
    key = await gw.new_key(models=["primary", "backup"], max_budget=1)
    text, headers = await ask(gw.sdk(key), "primary", stream)
    assert text == "mock mock mock mock"
    assert headers["x-faregate-attempts"] == "4"           # 1 + 2 retries, then the fallback
    assert headers["x-faregate-model-group"] == "backup"
    [row] = await ledger_rows(gw, key)
    assert (row["model"], row["status"], row["request_id"]) == \
        ("backup", "success", headers["x-request-id"])
    assert row["spend"] == pytest.approx(price(PROMPT_TOKENS, 4, times=3))
    kept = await stored(gw, headers["x-request-id"])
    assert (kept.attempts, kept.error) == (4, None)


async def test_a_fallback_the_key_may_not_use_is_skipped(start: Start,
                                                         mock_upstream: str) -> None:
    gw = await start([deployment("primary", "fault-503", mock_upstream),
                      deployment("backup", "qwen-local", mock_upstream)],
                     {"num_retries": 2, "fallbacks": [{"primary": ["backup"]}]})
    key = await gw.new_key(models=["primary"], max_budget=1)
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(gw.sdk(key), "primary", False)
    error = caught.value
    assert error.status_code == 502
    assert error.body["type"] == "upstream_error"  # type: ignore[index]
    assert "HTTP 503" in error.body["message"]  # type: ignore[index]
    assert error.response.headers["x-faregate-attempts"] == "3"
    [row] = await ledger_rows(gw, key)
    assert (row["model"], row["status"], row["spend"]) == ("primary", "failure", 0)
    assert row["request_id"] == error.response.headers["x-request-id"]
    # the row keeps what the caller got: its type/code, the start of its message
    kept = await stored(gw, row["request_id"])
    assert kept.attempts == 3
    assert kept.error == f"upstream_error: {error.body['message']}"[:ERROR_CHARS]  # type: ignore[index]


@pytest.mark.parametrize("admission", ["local", "redis"])
async def test_a_fallback_the_budget_cannot_cover_is_skipped(start: Start, mock_upstream: str,
                                                             admission: str) -> None:
    gw = await start([deployment("primary", "fault-503", mock_upstream),
                      deployment("backup", "qwen-local", mock_upstream, price=10_000),
                      deployment("cheap", "qwen-local", mock_upstream)],
                     {"num_retries": 0, "fallbacks": [{"primary": ["backup"]}]},
                     admission=admission)
    # Room for one reservation of these requests (~0.00008 each), not two.
    key = await gw.new_key(models=["primary", "backup", "cheap"], max_budget=0.00015)
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(gw.sdk(key), "primary", False)
    # one upstream call: the fallback it could not afford was never called
    assert caught.value.response.headers["x-faregate-attempts"] == "1"
    # Nothing stays reserved by the failed request: the next one is admitted (a leak would
    # keep it waiting, then refuse it).
    text, _ = await ask(gw.sdk(key), "cheap", False)
    assert text == "mock mock mock mock"
    rows = await ledger_rows(gw, key)
    assert sorted((r["model"], r["status"]) for r in rows) == [("cheap", "success"),
                                                               ("primary", "failure")]
    assert [r["spend"] for r in rows if r["model"] == "primary"] == [0]
    assert (await stored(gw, caught.value.response.headers["x-request-id"])).attempts == 1


async def test_a_429_from_the_upstream_is_retried_then_reaches_the_caller(
        start: Start, mock_upstream: str) -> None:
    gw = await start([deployment("limited", "fault-429", mock_upstream)])
    key = await gw.new_key(models=["limited"], max_budget=1)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(gw.sdk(key), "limited", stream)
        assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]
        assert caught.value.body["code"] == "upstream_rate_limited"  # type: ignore[index]
        assert caught.value.response.headers["x-faregate-attempts"] == "3"
    [health] = gw.app.router.health()
    assert health.cooling_down                  # a 429 cools a deployment down at once
    rows = await ledger_rows(gw, key)
    assert [(r["status"], r["spend"]) for r in rows] == [("failure", 0)] * 2
    for r in rows:
        kept = await stored(gw, r["request_id"])
        assert kept.attempts == 3
        assert kept.error is not None and kept.error.startswith(
            "rate_limit_error/upstream_rate_limited: The upstream for model 'limited' is "
            "rate limiting")


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_the_clients_own_mistake_is_not_retried(start: Start, flaky: httpx.AsyncClient,
                                                      flaky_url: str, mock_upstream: str,
                                                      status: int) -> None:
    await set_fault(flaky, mode="error", status=status)
    gw = await start([deployment("duo", "qwen-local", flaky_url + "/v1", weight=100),
                      deployment("duo", "qwen-local", mock_upstream, weight=1)],
                     {"allowed_fails": 0})     # a failure that counted would cool it down
    key = await gw.new_key(models=["duo"], max_budget=1)
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(gw.sdk(key), "duo", False)
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-faregate-attempts"] == "1"
    await mock_stats(flaky, requests=1)
    assert not any(h.cooling_down for h in gw.app.router.health())
    [row] = await ledger_rows(gw, key)
    assert (row["status"], row["spend"]) == ("failure", 0)


async def test_rejected_upstream_credentials_are_not_retried_but_cool_the_deployment_down(
        start: Start, flaky: httpx.AsyncClient, flaky_url: str, mock_upstream: str) -> None:
    await set_fault(flaky, mode="error", status=401)
    gw = await start([deployment("duo", "qwen-local", flaky_url + "/v1", weight=100),
                      deployment("duo", "qwen-local", mock_upstream, weight=1)],
                     {"allowed_fails": 0})
    key = await gw.new_key(models=["duo"], max_budget=1)
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(gw.sdk(key), "duo", False)
    assert caught.value.body["code"] == "upstream_auth_error"  # type: ignore[index]
    assert "litellm_params.api_key" in caught.value.message
    assert caught.value.response.headers["x-faregate-attempts"] == "1"
    await mock_stats(flaky, requests=1)
    assert gw.app.router.health()[0].cooling_down
    # the next request goes to the deployment that is not cooling down
    text, _ = await ask(gw.sdk(key), "duo", False)
    assert text == "mock mock mock mock"
    await mock_stats(flaky, requests=1)


async def test_stream_timeout_bounds_the_wait_for_a_streams_first_bytes(
        start: Start, mock_upstream: str) -> None:
    gw = await start([deployment("stalls", "hang", mock_upstream, timeout=60,
                                 stream_timeout=0.2)], {"num_retries": 0})
    key = await gw.new_key(models=["stalls"], max_budget=1)
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(gw.sdk(key), "stalls", True)
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"  # type: ignore[index]
    assert "stream_timeout" in caught.value.message
    [row] = await ledger_rows(gw, key)
    assert (row["status"], row["spend"]) == ("failure", 0)


@pytest.mark.parametrize(("upstream_model", "stream", "status", "code"), [
    ("hang", False, 504, "upstream_timeout"),
    ("hang", True, 504, "upstream_timeout"),
    ("malformed", False, 502, "upstream_malformed_reply"),
    ("malformed", True, 502, "upstream_bad_stream"),
])
async def test_a_single_deployment_that_keeps_failing_gives_a_fitting_status(
        start: Start, mock_upstream: str, upstream_model: str, stream: bool, status: int,
        code: str) -> None:
    gw = await start([deployment("only", upstream_model, mock_upstream, timeout=0.3)],
                     {"num_retries": 1})
    key = await gw.new_key(models=["only"], max_budget=1)
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(gw.sdk(key), "only", stream)
    assert caught.value.status_code == status
    assert caught.value.body["code"] == code  # type: ignore[index]
    assert caught.value.response.headers["x-faregate-attempts"] == "2"
    [row] = await ledger_rows(gw, key)
    assert (row["status"], row["spend"]) == ("failure", 0)


@pytest.mark.parametrize("admission", ["local", "redis"])
async def test_the_budget_holds_with_retries_on_a_flapping_deployment(
        start: Start, flaky: httpx.AsyncClient, flaky_url: str, mock_upstream: str,
        db_url: str, admission: str) -> None:
    await set_fault(flaky, mode="error", status=503, rate=0.5, seed=11)
    # The flapping deployment has its own prices: a retry on the other one is re-admitted.
    gw = await start([deployment("duo", "qwen-local", flaky_url + "/v1", price=2),
                      deployment("duo", "qwen-local", mock_upstream)],
                     {"allowed_fails": 1000}, database_url=db_url, admission=admission)
    budget = 0.0006                 # room for about five of these requests
    key = await gw.new_key(models=["duo"], max_budget=budget)
    sdk = gw.sdk(key)

    async def one(i: int) -> str:
        try:
            _, headers = await ask(sdk, "duo", stream=i % 2 == 1, max_tokens=50)
        except openai.RateLimitError as exc:
            assert exc.body["type"] == "budget_exceeded"  # type: ignore[index]
            return "refused"
        except openai.InternalServerError as exc:
            # Its retry on the other deployment could not be afforded: the upstream's error.
            assert exc.body["code"] == "upstream_error"  # type: ignore[index]
            return "failed"
        return headers.get("x-faregate-attempts", "1")

    outcomes = Counter(await asyncio.gather(*(one(i) for i in range(20))))
    served = sum(n for outcome, n in outcomes.items() if outcome not in ("refused", "failed"))
    assert outcomes["refused"] > 0 and served > 0, outcomes
    assert (await mock_stats(flaky))["faults_injected"] > 0
    rows = await ledger_rows(gw, key)
    assert Counter(r["status"] for r in rows) == Counter(
        {"success": served, "failure": outcomes["failed"]} if outcomes["failed"] else
        {"success": served})
    assert all(r["spend"] == 0 for r in rows if r["status"] == "failure")
    # In nano-dollars: the rows can add up to exactly the budget, which float dollars summed
    # may overshoot by a rounding error (0.0006000000000000001).
    assert sum(round(r["spend"] * 1e9) for r in rows) <= round(budget * 1e9)


async def test_a_stream_that_breaks_midway_is_charged_for_what_it_produced(
        start: Start, mock_upstream: str) -> None:
    gw = await start([deployment("breaking", "break-3", mock_upstream)])
    key = await gw.new_key(models=["breaking"], max_budget=1)
    raw = await gw.sdk(key).chat.completions.with_raw_response.create(
        model="breaking", messages=MESSAGES, max_tokens=10, stream=True)  # type: ignore[arg-type]
    assert "x-faregate-attempts" not in raw.headers        # it started: no retry
    texts = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in raw.parse():
            texts.append(chunk.choices[0].delta.content or "")
    assert "dropped the connection" in caught.value.message
    assert "".join(texts) == "mock mock"
    [row] = await ledger_rows(gw, key)
    assert (row["status"], row["completion_tokens"]) == ("partial", 3)
    assert row["spend"] == pytest.approx(price(row["prompt_tokens"], 3))
    assert row["spend"] < price(row["prompt_tokens"], 10)
    kept = await stored(gw, row["request_id"])
    assert kept.attempts == 1
    assert kept.error is not None and "dropped the connection" in kept.error


async def test_a_client_that_leaves_mid_stream_frees_the_upstream_and_pays_for_what_it_got(
        start: Start, flaky: httpx.AsyncClient, flaky_url: str) -> None:
    gw = await start([deployment("slowpoke", "slow-50", flaky_url + "/v1")])
    key = await gw.new_key(models=["slowpoke"], max_budget=1)
    stream = await gw.sdk(key).chat.completions.create(
        model="slowpoke", messages=MESSAGES, max_tokens=200, stream=True)  # type: ignore[arg-type]
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.close()
    # The mock saw the gateway hang up on it and stopped generating (its GPU slot is free).
    await mock_stats(flaky, streams_started=1, streams_cancelled=1, active_streams=0,
                     streams_completed=0)
    [row] = await ledger_rows(gw, key)
    assert row["status"] == "partial"
    assert 3 <= row["completion_tokens"] < 200
    assert row["spend"] == pytest.approx(price(row["prompt_tokens"], row["completion_tokens"]))
    assert MASTER_KEY not in str(row)


async def test_an_upstream_retry_after_cools_the_deployment_that_long_and_reaches_the_caller(
        start: Start, flaky: httpx.AsyncClient, flaky_url: str) -> None:
    await set_fault(flaky, mode="error", status=429, retry_after=42)
    gw = await start([deployment("limited", "qwen-local", flaky_url + "/v1")],
                     {"num_retries": 0, "cooldown_time": 1})
    key = await gw.new_key(models=["limited"], max_budget=1)
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(gw.sdk(key).with_options(max_retries=0), "limited", stream)
        assert caught.value.response.headers["retry-after"] == "42"
    [health] = gw.app.router.health()
    assert health.cooling_down and 40 < health.cooldown_left_s <= 42   # not cooldown_time's 1 s


@contextlib.asynccontextmanager
async def raw_upstream(status: int, body: bytes) -> AsyncIterator[str]:
    """An upstream at 127.0.0.1 that answers every request with `status` and `body` (its
    /v1 URL): bytes no mock would send."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 %d Oops\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, len(body)) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_upstream_error_body_is_kept_short_storable_and_without_secrets(
        start: Start, db_url: str) -> None:
    """An upstream's error message with NUL, line breaks, the deployment's own api_key, a
    bearer token and 100,000 more characters: the request's row keeps a bounded, storable
    text without either secret (Postgres would refuse the NUL: the row would be a dead
    letter), and its attempts (one retry)."""
    api_key = "sk-upstream-" + "k" * 24
    other = "tok_" + "b" * 30
    message = (f"overloaded\u0000 for key {api_key}\nAuthorization: Bearer {other}\n"
               + "x" * 100_000)
    body = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
    async with raw_upstream(500, body) as url:
        gw = await start([deployment("raw", "raw-model", url, api_key=api_key)],
                         {"num_retries": 1}, database_url=db_url)
        key = await gw.new_key(models=["raw"], max_budget=1)
        with pytest.raises(openai.InternalServerError) as caught:
            await ask(gw.sdk(key), "raw", False)
    assert caught.value.response.headers["x-faregate-attempts"] == "2"
    [row] = await ledger_rows(gw, key)
    assert row["status"] == "failure"               # stored as is: no dead letter
    kept = await stored(gw, row["request_id"])
    assert kept.attempts == 2
    assert kept.error is not None
    assert kept.error.startswith("upstream_error: The upstream for model 'raw' failed with "
                                 "HTTP 500: overloaded\ufffd for key [redacted] "
                                 "Authorization: [redacted] xxx")
    assert len(kept.error) == len("upstream_error: ") + MESSAGE_CHARS <= ERROR_CHARS
    assert api_key not in kept.error and other not in kept.error
    assert "\x00" not in kept.error and kept.error.isprintable()
    assert gw.app.ledger.dead_lettered == 0

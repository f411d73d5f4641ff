"""The headers clients read off every answer (issue 14 part 11): OpenAI's x-ratelimit-* and
LiteLLM's x-litellm-* (cost, key spend, key budget), on JSON answers, streams, the Anthropic
route and refusals; read with the openai SDK's raw responses and with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from api.conftest import RunningGateway, serve
from support import (
    PRICE_IN,
    PRICE_OUT,
    chat,
    env_for,
    free_port,
    stop,
    wait_for_port,
    write_config,
)

from faregate import config
from faregate.app import Faregate

ANTHROPIC_KEY = "ak-test-anthropic-headers"


@pytest.fixture(scope="module")
def mock_anthropic() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "faregate", "mock-anthropic", "--port",
                             str(port), "--api-key", ANTHROPIC_KEY], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture
async def with_claude(db_url: str, mock_upstream: str, mock_anthropic: str, tmp_path: Path
                      ) -> AsyncIterator[RunningGateway]:
    """A gateway with an Anthropic model, whose /v1/messages answers pass through as sent."""
    cfg = write_config(tmp_path / "config.yaml", mock_upstream, extra_models=[
        {"model_name": "claude-haiku", "litellm_params": {
            "model": "anthropic/claude-3-5-haiku-20241022", "api_base": mock_anthropic,
            "api_key": ANTHROPIC_KEY, "input_cost_per_token": PRICE_IN,
            "output_cost_per_token": PRICE_OUT}}])
    settings = config.load({**os.environ, **env_for(db_url, tmp_path)}, cfg)
    async with serve(Faregate.from_settings(settings)) as running:
        yield running


def dollars(prompt: int, completion: int) -> str:
    """A cost as LiteLLM writes it: str() of a float of dollars."""
    return str((round(prompt * PRICE_IN * 1e9) + round(completion * PRICE_OUT * 1e9)) / 1e9)


async def test_json_answer_carries_cost_spend_and_budget(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=2.5)
    sdk = gateway.sdk(key)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="qwen-local", messages=[{"role": "user", "content": "hello there"}], max_tokens=5)
    reply = raw.parse()
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, 5)
    headers = raw.headers
    assert headers["x-litellm-response-cost"] == dollars(9, 5)
    assert headers["x-litellm-key-spend"] == dollars(9, 5)      # the spend includes this call
    assert headers["x-litellm-key-max-budget"] == "2.5"
    assert headers["x-litellm-call-id"] == headers["x-request-id"]
    assert headers["x-litellm-model-group"] == "qwen-local"

    again = await sdk.chat.completions.with_raw_response.create(
        model="qwen-local", messages=[{"role": "user", "content": "hello there"}], max_tokens=5)
    assert float(again.headers["x-litellm-key-spend"]) == pytest.approx(
        2 * float(dollars(9, 5)))
    assert again.headers["x-litellm-call-id"] != headers["x-litellm-call-id"]
    info = (await gateway.admin("GET", "/key/info", params={"key": key})).json()["info"]
    assert info["spend"] == pytest.approx(float(again.headers["x-litellm-key-spend"]))


async def test_rate_limit_headers_count_down(gateway: RunningGateway) -> None:
    key = await gateway.new_key(rpm_limit=5, tpm_limit=10_000)
    sdk = gateway.sdk(key)
    seen = []
    for _ in range(2):
        raw = await sdk.chat.completions.with_raw_response.create(
            model="qwen-local", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        seen.append(raw.headers)
    assert [h["x-ratelimit-limit-requests"] for h in seen] == ["5", "5"]
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["4", "3"]
    assert all(h["x-ratelimit-reset-requests"].endswith("s") for h in seen)
    assert [h["x-ratelimit-limit-tokens"] for h in seen] == ["10000", "10000"]
    # Each answer counts itself at what admission booked for it (its bound: the prompt bound
    # is exact once the upstream has counted that prompt) and the calls before at their usage.
    first, second = (int(h["x-ratelimit-remaining-tokens"]) for h in seen)
    assert first <= 10_000 - (8 + 4)
    assert second == 10_000 - 2 * (8 + 4)
    assert seen[0]["x-litellm-key-rpm-limit"] == "5"
    assert seen[0]["x-litellm-key-tpm-limit"] == "10000"
    assert "x-litellm-key-max-budget" not in seen[0]          # no budget: left out, not "None"


async def test_stream_headers_leave_before_the_cost_is_known(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1.0, rpm_limit=3)
    async with gateway.http.stream("POST", "/v1/chat/completions",
                                   json=chat("hi", max_tokens=3, stream=True),
                                   headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status_code == 200
        headers = resp.headers
        body = b"".join([chunk async for chunk in resp.aiter_bytes()])
    assert body.endswith(b"data: [DONE]\n\n")
    assert "x-litellm-response-cost" not in headers            # as LiteLLM: not known yet
    assert headers["x-litellm-key-spend"] == "0.0"             # the spend before this stream
    assert headers["x-litellm-key-max-budget"] == "1.0"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-litellm-call-id"] == headers["x-request-id"]

    # The next answer's spend includes the stream.
    raw = await gateway.sdk(key).chat.completions.with_raw_response.create(
        model="qwen-local", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert float(raw.headers["x-litellm-key-spend"]) == pytest.approx(
        float(dollars(8, 3)) * 2)


async def test_anthropic_route_carries_the_same_headers(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1.0, rpm_limit=9)
    resp = await gateway.http.post("/v1/messages", headers={"x-api-key": key}, json={
        "model": "qwen-local", "max_tokens": 5, "messages": [{"role": "user", "content": "ping"}]})
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    cost = dollars(usage["input_tokens"], usage["output_tokens"])
    assert resp.headers["x-litellm-response-cost"] == cost
    assert resp.headers["x-litellm-key-spend"] == cost
    assert resp.headers["x-litellm-key-max-budget"] == "1.0"
    assert resp.headers["x-ratelimit-remaining-requests"] == "8"


async def test_refusals_after_authentication_carry_the_key_state(
        gateway: RunningGateway) -> None:
    broke = await gateway.new_key(max_budget=0)
    resp = await gateway.http.post("/v1/chat/completions", json=chat("hi"),
                                   headers={"Authorization": f"Bearer {broke}"})
    assert resp.status_code == 429 and resp.json()["error"]["type"] == "budget_exceeded"
    assert resp.headers["x-litellm-key-spend"] == "0.0"
    assert resp.headers["x-litellm-key-max-budget"] == "0.0"
    assert "x-litellm-response-cost" not in resp.headers

    limited = await gateway.new_key(rpm_limit=1)
    ok = await gateway.http.post("/v1/chat/completions", json=chat("hi", max_tokens=2),
                                 headers={"Authorization": f"Bearer {limited}"})
    assert ok.status_code == 200
    refused = await gateway.http.post("/v1/chat/completions", json=chat("hi", max_tokens=2),
                                      headers={"Authorization": f"Bearer {limited}"})
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert refused.headers["x-litellm-key-rpm-limit"] == "1"
    assert float(refused.headers["x-litellm-key-spend"]) == pytest.approx(
        float(ok.headers["x-litellm-key-spend"]))


async def test_unknown_caller_learns_nothing_of_any_key(gateway: RunningGateway) -> None:
    resp = await gateway.http.post("/v1/chat/completions", json=chat("hi"),
                                   headers={"Authorization": "Bearer sk-nobody-0123456789"})
    assert resp.status_code == 401
    assert not [name for name in resp.headers if name.startswith("x-litellm-key")]


async def test_headers_read_by_a_plain_httpx_client(gateway: RunningGateway) -> None:
    """What LiteLLM users' budget brakes do: float() the spend and budget off each answer."""
    key = await gateway.new_key(max_budget=0.001)
    async with httpx.AsyncClient(base_url=gateway.base_url) as client:
        resp = await client.post("/v1/chat/completions", json=chat("hi", max_tokens=2),
                                 headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200
    spend = float(resp.headers["x-litellm-key-spend"])
    budget = float(resp.headers["x-litellm-key-max-budget"])
    assert 0 < spend < budget == 0.001


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_model_passed_through_carries_the_headers(
        with_claude: RunningGateway, stream: bool) -> None:
    key = await with_claude.new_key(models=["claude-haiku"], max_budget=1.0)
    body = {"model": "claude-haiku", "max_tokens": 5, "stream": stream,
            "messages": [{"role": "user", "content": "ping"}]}
    async with with_claude.http.stream("POST", "/v1/messages", json=body,
                                       headers={"x-api-key": key}) as resp:
        assert resp.status_code == 200
        content = b"".join([chunk async for chunk in resp.aiter_bytes()])
    assert resp.headers["x-litellm-key-max-budget"] == "1.0"
    assert resp.headers["x-litellm-model-group"] == "claude-haiku"
    if stream:
        assert b"message_stop" in content
        assert "x-litellm-response-cost" not in resp.headers
        assert resp.headers["x-litellm-key-spend"] == "0.0"
    else:
        usage = orjson.loads(content)["usage"]
        cost = dollars(usage["input_tokens"], usage["output_tokens"])
        assert resp.headers["x-litellm-response-cost"] == cost
        assert resp.headers["x-litellm-key-spend"] == cost


async def call(gw: RunningGateway, key: str, **body: object) -> httpx.Response:
    return await gw.http.post("/v1/chat/completions", json={**chat("hi", max_tokens=2), **body},
                              headers={"Authorization": f"Bearer {key}"})


async def test_a_rate_refusal_carries_the_windows(gateway: RunningGateway) -> None:
    """A 429 for a limit says which window refused and when it frees (OpenAI's names), with
    the other kind's window as it stands; nothing of the refused call is counted in them."""
    key = await gateway.new_key(rpm_limit=1, tpm_limit=10_000)
    ok = await call(gateway, key)
    assert ok.status_code == 200
    used = 10_000 - int(ok.headers["x-ratelimit-remaining-tokens"])
    refused = await call(gateway, key)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rpm_limit"
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    reset = refused.headers["x-ratelimit-reset-requests"]
    assert reset.endswith("s") and 1 <= int(reset[:-1]) <= 60
    assert refused.headers["Retry-After"] == reset[:-1]
    assert refused.headers["x-ratelimit-limit-tokens"] == "10000"
    # the first call's tokens stand (at its real usage); the refused one booked nothing
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) >= 10_000 - used
    assert refused.headers["x-litellm-key-spend"] == ok.headers["x-litellm-key-spend"]


async def test_a_token_refusal_says_what_is_left(gateway: RunningGateway) -> None:
    key = await gateway.new_key(tpm_limit=200)
    ok = await call(gateway, key)                # "hi": 8 prompt + 2 completion tokens
    assert ok.status_code == 200
    refused = await call(gateway, key, max_tokens=195)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "tpm_limit"
    assert refused.headers["x-ratelimit-limit-tokens"] == "200"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "190"    # 200 - (8 + 2)
    assert refused.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert "x-ratelimit-limit-requests" not in refused.headers      # no such limit


async def test_a_budget_refusal_carries_the_windows_where_limits_exist(
        gateway: RunningGateway) -> None:
    broke = await gateway.new_key(max_budget=0, rpm_limit=5, tpm_limit=1000)
    refused = await call(gateway, broke)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "5"   # nothing booked
    assert refused.headers["x-ratelimit-limit-tokens"] == "1000"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "1000"
    assert refused.headers["x-litellm-key-spend"] == "0.0"
    assert refused.headers["x-should-retry"] == "false"

    unlimited = await gateway.new_key(max_budget=0)
    refused = await call(gateway, unlimited)
    assert refused.status_code == 429
    assert not [name for name in refused.headers if name.startswith("x-ratelimit")]
    assert refused.headers["x-litellm-key-spend"] == "0.0"


async def test_a_team_limit_refusal_names_the_teams_window(gateway: RunningGateway) -> None:
    made = await gateway.admin("POST", "/team/new", json={"team_id": "hdr-team",
                                                          "rpm_limit": 1})
    assert made.status_code == 200, made.text
    key = await gateway.new_key(team_id="hdr-team", rpm_limit=100)
    assert (await call(gateway, key)).status_code == 200
    refused = await call(gateway, key)
    assert refused.status_code == 429, refused.text
    assert "hdr-team" in refused.json()["error"]["message"]
    # the team's window refused, not the key's (99 left there)
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_an_anthropic_clients_429_carries_the_window(gateway: RunningGateway) -> None:
    key = await gateway.new_key(rpm_limit=1)
    body = {"model": "qwen-local", "max_tokens": 2,
            "messages": [{"role": "user", "content": "ping"}]}
    first = await gateway.http.post("/v1/messages", headers={"x-api-key": key}, json=body)
    assert first.status_code == 200, first.text
    refused = await gateway.http.post("/v1/messages", headers={"x-api-key": key}, json=body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["type"] == "error"                       # Anthropic's shape
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-litellm-key-spend"] == first.headers["x-litellm-key-spend"]

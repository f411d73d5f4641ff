"""POST /v1/messages in process: the real anthropic SDK against the gateway and the mock
OpenAI-compatible upstream; every error in Anthropic's shape, nothing charged."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
import yaml
from api.conftest import Clock, RunningGateway, faulty_models, serve
from api.test_budgets import key_state
from support import PRICE_IN, PRICE_OUT, env_for, write_config

from faregate import config
from faregate.app import Faregate
from faregate.wire.json_limits import MAX_JSON_DEPTH

# The mock counts words: "ping" is 1 word + 4 per message + 3 = 8 prompt tokens.
# The dialect's edge does not touch storage: one backend is enough here.
pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}


@pytest.fixture
async def gateway(db_url: str, mock_upstream: str, tmp_path: Path, clock: Clock
                  ) -> AsyncIterator[RunningGateway]:
    """The API tests' gateway, plus a model whose streams break after 3 events and two
    Anthropic models (unreachable): one alone, one that falls back to qwen-local."""
    prices = {"input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}
    claude = {"model": "anthropic/claude-x", "api_base": "http://127.0.0.1:9",
              "api_key": "ak-unused", **prices}
    cfg = write_config(tmp_path / "config.yaml", mock_upstream, extra_models=[
        *faulty_models(mock_upstream),
        {"model_name": "breaking-model", "litellm_params": {
            "model": "openai/break-3", "api_base": mock_upstream, **prices}},
        {"model_name": "claude-alone", "litellm_params": claude},
        {"model_name": "claude-falls-back", "litellm_params": claude}])
    with_fallback = yaml.safe_load(cfg.read_text())
    with_fallback["router_settings"] = {"fallbacks": [{"claude-falls-back": ["qwen-local"]}]}
    cfg.write_text(yaml.safe_dump(with_fallback))
    settings = config.load({**os.environ, **env_for(db_url, tmp_path)}, cfg)
    async with serve(Faregate.from_settings(settings, now=clock.now)) as running:
        yield running


def sdk(gw: RunningGateway, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=gw.base_url, max_retries=0)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "qwen-local", "max_tokens": 5,
            "messages": [{"role": "user", "content": "ping"}], **extra}


async def test_message_and_stream_through_the_sdk_charge_like_chat(
        gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    client = sdk(gateway, key)
    message = await client.messages.create(**body(system="be brief"))
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "qwen-local"
    assert message.content[0].type == "text"
    assert message.content[0].text == "mock mock mock mock mock"
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8 + 6, 5)

    async with client.messages.stream(**body()) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "mock mock mock mock mock"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (8, 5)
    await client.close()

    spend, rows, ledger_sum = await key_state(gateway, key)
    assert rows == 2
    assert spend == pytest.approx((14 + 8) * 1e-6 + 10 * 2e-6)
    assert ledger_sum == pytest.approx(spend)


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_round_trip(gateway: RunningGateway, stream: bool) -> None:
    client = sdk(gateway, await gateway.new_key())
    ask = body(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"},
               messages=[{"role": "user", "content": "weather in Paris?"}])
    if stream:
        async with client.messages.stream(**ask) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**ask)
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("call_mock_1", "get_weather", {"city": "mock"})

    follow_up = await client.messages.create(**body(tools=[WEATHER], messages=[
        *ask["messages"],
        {"role": "assistant", "content": [c.model_dump() for c in message.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
            {"type": "text", "text": "thanks"}]}]))
    assert follow_up.stop_reason == "max_tokens"
    assert follow_up.content[0].type == "text"
    await client.close()


async def post(gw: RunningGateway, payload: Any, headers: dict[str, str]) -> httpx.Response:
    content = payload if isinstance(payload, bytes) else None
    return await gw.http.post("/v1/messages", content=content,
                              json=None if content is not None else payload, headers=headers)


def assert_anthropic_error(resp: httpx.Response, status: int, type_: str) -> str:
    assert resp.status_code == status, resp.text
    data = resp.json()
    assert data["type"] == "error"
    assert set(data["error"]) == {"type", "message"}
    assert data["error"]["type"] == type_
    return str(data["error"]["message"])


DEEP: Any = []
for _ in range(MAX_JSON_DEPTH):
    DEEP = [DEEP]

BAD_REQUESTS = [
    ("missing max_tokens", {"model": "qwen-local", "messages": [
        {"role": "user", "content": "ping"}]}, 400, "invalid_request_error", "max_tokens"),
    ("not JSON", b'{"model": ', 400, "invalid_request_error", "not valid JSON"),
    ("not an object", b"[1]", 400, "invalid_request_error", "JSON object"),
    ("empty messages", body(messages=[]), 400, "invalid_request_error", "messages"),
    ("bad role", body(messages=[{"role": "system", "content": "x"}]), 400,
     "invalid_request_error", "role"),
    ("top_k", body(top_k=5), 400, "invalid_request_error", "top_k"),
    ("thinking", body(thinking={"type": "enabled", "budget_tokens": 1024}), 400,
     "invalid_request_error", "thinking"),
    ("document block", body(messages=[{"role": "user", "content": [
        {"type": "document", "source": {}}]}]), 400, "invalid_request_error", "document"),
    ("server tool", body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), 400,
     "invalid_request_error", "client tools"),
    ("unknown model", body(model="no-such-model"), 404, "not_found_error", "no-such-model"),
    ("model not on the key", body(model="other-model"), 403, "permission_error",
     "other-model"),
    ("invalid UTF-8", b'{"model": "qwen-local", "max_tokens": 5, "messages": [{"role": "user", '
     b'"content": "\xff"}]}', 400, "invalid_request_error", "UTF-8"),
    ("tool input too deep to write", body(messages=[{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": DEEP}}]}]), 400,
     "invalid_request_error", "levels deep"),
    ("too large", b" " * (8 * 1024 * 1024 + 1), 413, "request_too_large", "larger than"),
    ("upstream 500", body(model="broken-model"), 502, "api_error", "HTTP 500"),
]


async def test_bad_requests_are_anthropic_errors_and_cost_nothing(
        gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=["qwen-local", "broken-model"], max_budget=1)
    for case, payload, status, type_, says in BAD_REQUESTS:
        resp = await post(gateway, payload, {"x-api-key": key})
        assert says in assert_anthropic_error(resp, status, type_), case
    spend, rows, _ = await key_state(gateway, key)
    assert spend == 0
    assert rows == 1        # the upstream failure's row, at 0


async def test_bad_credentials_are_401_before_the_body_is_read(
        gateway: RunningGateway) -> None:
    for headers in ({}, {"x-api-key": "sk-not-a-key"},
                    {"Authorization": "Bearer sk-not-a-key"}):
        resp = await post(gateway, b"not json", headers)
        assert_anthropic_error(resp, 401, "authentication_error")


async def test_bearer_authorization_works_too(gateway: RunningGateway) -> None:
    key = await gateway.new_key()
    resp = await post(gateway, body(), {"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "msg_" + resp.headers["x-request-id"]


async def test_exhausted_budget_is_429_rate_limit_error_not_to_retry(
        gateway: RunningGateway) -> None:
    # Each call costs 8e-6 + 10e-6; the budget runs out after a few.
    budget = 0.0001
    key = await gateway.new_key(max_budget=budget)
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 20:
        resp = await post(gateway, body(), {"x-api-key": key})
        statuses.append(resp.status_code)
    assert statuses[0] == 200
    assert statuses[-1] == 429
    message = assert_anthropic_error(resp, 429, "rate_limit_error")
    assert message.startswith("Budget has been exceeded")
    assert resp.headers["x-should-retry"] == "false"
    spend, rows, ledger_sum = await key_state(gateway, key)
    assert spend <= budget
    assert rows == statuses.count(200)
    assert ledger_sum == pytest.approx(spend)


async def test_other_methods_are_405_in_anthropic_shape(gateway: RunningGateway) -> None:
    resp = await gateway.http.get("/v1/messages")
    assert_anthropic_error(resp, 405, "invalid_request_error")
    assert resp.headers["allow"] == "POST"


async def test_a_broken_stream_ends_with_an_error_event(gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=["breaking-model"])
    resp = await post(gateway, body(model="breaking-model", stream=True, max_tokens=50),
                      {"x-api-key": key})
    assert resp.status_code == 200
    events = [line for line in resp.text.split("\n") if line.startswith("event: ")]
    assert events[:3] == ["event: message_start", "event: content_block_start",
                          "event: content_block_delta"]
    assert events[-1] == "event: error"
    assert "message_stop" not in resp.text
    _, rows, _ = await key_state(gateway, key)
    assert rows == 1


async def test_count_tokens_is_the_budgets_upper_bound_and_costs_nothing(
        gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    client = sdk(gateway, key)
    ask = {"model": "qwen-local", "system": "be brief",
           "messages": [{"role": "user", "content": "how many tokens is this?"}]}
    counted = await client.messages.count_tokens(**ask)
    message = await client.messages.create(max_tokens=1, **ask)
    assert counted.input_tokens >= message.usage.input_tokens > 0
    await client.close()
    resp = await gateway.http.post("/v1/messages/count_tokens",
                                   json={"model": "no-such-model", "messages": ask["messages"]},
                                   headers={"x-api-key": key})
    assert_anthropic_error(resp, 404, "not_found_error")
    resp = await gateway.http.post("/v1/messages/count_tokens", json=ask)
    assert_anthropic_error(resp, 401, "authentication_error")
    _, rows, _ = await key_state(gateway, key)
    assert rows == 1        # the message only


async def test_only_a_model_no_other_provider_can_answer_is_passed_through(
        gateway: RunningGateway) -> None:
    """top_k goes on to a model only Anthropic serves (here: unreachable, so a 502 after
    admission); a model that may fall back to an OpenAI-compatible one is translated, and
    the translation refuses it."""
    key = await gateway.new_key(models=["claude-alone", "claude-falls-back", "qwen-local"])
    resp = await post(gateway, body(model="claude-alone", top_k=3), {"x-api-key": key})
    assert "Cannot reach" in assert_anthropic_error(resp, 502, "api_error")
    resp = await post(gateway, body(model="claude-falls-back", top_k=3), {"x-api-key": key})
    assert "top_k" in assert_anthropic_error(resp, 400, "invalid_request_error")

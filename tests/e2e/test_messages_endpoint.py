"""Issue #6, done means: the `anthropic` SDK calls `POST /v1/messages` on `faregate serve`
(real processes) with a virtual key; the project's mock OpenAI-compatible upstream answers
the translated request; the same budgets and ledger hold. An Anthropic deployment (the mock
Anthropic server, which checks every request against the wire format) answers too."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from e2e.conftest import ServedGateway, start_gateway
from support import (
    MASTER_KEY,
    PRICE_IN,
    PRICE_OUT,
    env_for,
    free_port,
    stop,
    wait_for_port,
    write_config,
)

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
PING = [{"role": "user", "content": "ping"}]
# The mock's usage rule: "ping" is 1 word + 4 per message + 3; completion = max_tokens.
PING_PROMPT_TOKENS = 8


ANTHROPIC_KEY = "ak-test-anthropic-0123"
HAIKU_PRICES = {"input_cost_per_token": 0.0000008, "output_cost_per_token": 0.000004,
                "cache_read_input_token_cost": 0.00000008,
                "cache_creation_input_token_cost": 0.000001}


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


@pytest.fixture(scope="module")
def gateway(mock_upstream: str, mock_anthropic: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("messages")
    cfg = write_config(tmp / "config.yaml", mock_upstream, extra_models=[
        {"model_name": "claude-haiku", "litellm_params": {
            "model": "anthropic/claude-3-5-haiku-20241022", "api_base": mock_anthropic,
            "api_key": "os.environ/ANTHROPIC_API_KEY", **HAIKU_PRICES}},
        *({"model_name": f"claude-{fault}", "litellm_params": {   # the mock's fault models
            "model": f"anthropic/{fault}", "api_base": mock_anthropic,
            "api_key": "os.environ/ANTHROPIC_API_KEY", **HAIKU_PRICES}}
          for fault in ("overloaded-stream", "overloaded-mid-stream"))])
    env = {**os.environ, **env_for(f"sqlite:///{tmp / 'faregate.db'}", Path(tmp)),
           "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    gw = start_gateway(tmp, env, ["--config", str(cfg)])
    yield gw
    stop(gw.proc)


def new_key(gw: ServedGateway, **fields: Any) -> str:
    resp = httpx.post(f"{gw.base_url}/key/generate", headers=ADMIN,
                      json={"models": ["qwen-local"], **fields})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def client(gw: ServedGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base_url, api_key=key)


def spend_rows(gw: ServedGateway, key: str, count: int) -> list[dict[str, Any]]:
    """The key's ledger rows, once `count` of them reached the database (in batches)."""
    deadline = time.monotonic() + 10
    while True:
        rows = httpx.get(f"{gw.base_url}/spend/logs", params={"api_key": key},
                         headers=ADMIN).json()
        if len(rows) >= count or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.05)


def key_spend(gw: ServedGateway, key: str) -> float:
    info = httpx.get(f"{gw.base_url}/key/info", params={"key": key}, headers=ADMIN).json()
    return float(info["info"]["spend"])


def test_message_is_answered_and_charged_once(gateway: ServedGateway) -> None:
    key = new_key(gateway, max_budget=1.0)
    with client(gateway, key) as sdk:
        message = sdk.messages.create(
            model="qwen-local", max_tokens=5, system="Be brief.", messages=PING,
            stop_sequences=["END"], metadata={"user_id": "agent-7"},
            extra_body={"temperature": 0.5, "top_p": 0.9})
    assert message.type == "message" and message.model == "qwen-local"
    assert message.content[0].type == "text"
    assert message.content[0].text == "mock mock mock mock mock"
    assert message.stop_reason == "max_tokens"
    # The system prompt is a message upstream: 2 words + 4.
    assert message.usage.input_tokens == PING_PROMPT_TOKENS + 6
    assert message.usage.output_tokens == 5
    [row] = spend_rows(gateway, key, 1)
    assert row["request_id"] == message.id.removeprefix("msg_")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (14, 5)
    assert row["spend"] == pytest.approx(14 * PRICE_IN + 5 * PRICE_OUT)
    assert key_spend(gateway, key) == pytest.approx(row["spend"])


def test_stream_is_relayed_as_anthropic_events(gateway: ServedGateway) -> None:
    key = new_key(gateway, max_budget=1.0)
    with client(gateway, key) as sdk, sdk.messages.stream(
            model="qwen-local", max_tokens=6, messages=PING) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "mock mock mock mock mock mock"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PING_PROMPT_TOKENS, 6)
    [row] = spend_rows(gateway, key, 1)
    assert row["status"] == "success" and row["completion_tokens"] == 6
    assert key_spend(gateway, key) == pytest.approx(8 * PRICE_IN + 6 * PRICE_OUT)


def test_tool_use_then_tool_result(gateway: ServedGateway) -> None:
    key = new_key(gateway, max_budget=1.0)
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    with client(gateway, key) as sdk:
        with sdk.messages.stream(model="qwen-local", max_tokens=20, tools=[WEATHER],
                                 tool_choice={"type": "any"}, messages=ask) as stream:
            message = stream.get_final_message()
        assert message.stop_reason == "tool_use"
        [call] = message.content
        assert call.type == "tool_use" and call.name == "get_weather"
        assert call.input == {"city": "mock"}

        answer = sdk.messages.create(model="qwen-local", max_tokens=3, tools=[WEATHER],
                                     messages=[*ask, {"role": "assistant",
                                                      "content": message.content},
                                               {"role": "user", "content": [
                                                   {"type": "tool_result",
                                                    "tool_use_id": call.id,
                                                    "content": "sunny, 21 C"}]}])
    assert answer.stop_reason == "max_tokens"
    assert answer.content[0].type == "text"
    rows = spend_rows(gateway, key, 2)
    assert len(rows) == 2
    assert key_spend(gateway, key) == pytest.approx(sum(r["spend"] for r in rows))


def test_budget_is_enforced_and_never_passed(gateway: ServedGateway) -> None:
    budget = 0.0001         # a handful of 5-token answers (8e-6 + 10e-6 each)
    key = new_key(gateway, max_budget=budget)
    answered = 0
    with client(gateway, key) as sdk, pytest.raises(anthropic.RateLimitError) as refused:
        for _ in range(30):
            sdk.messages.create(model="qwen-local", max_tokens=5, messages=PING)
            answered += 1
    assert answered >= 1
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "error"
    assert error["error"]["type"] == "rate_limit_error"
    assert error["error"]["message"].startswith("Budget has been exceeded")
    assert refused.value.response.headers["x-should-retry"] == "false"
    rows = spend_rows(gateway, key, answered)
    assert len(rows) == answered            # refused requests leave no row
    spend = key_spend(gateway, key)
    assert spend <= budget
    assert spend == pytest.approx(sum(r["spend"] for r in rows))


def test_errors_come_in_anthropics_shape(gateway: ServedGateway) -> None:
    with client(gateway, "sk-no-such-key") as stranger, \
            pytest.raises(anthropic.AuthenticationError) as bad_key:
        stranger.messages.create(model="qwen-local", max_tokens=5, messages=PING)
    assert bad_key.value.status_code == 401
    key = new_key(gateway)
    with client(gateway, key) as sdk:
        with pytest.raises(anthropic.NotFoundError) as unknown:
            sdk.messages.create(model="claude-nope", max_tokens=5, messages=PING)
        assert isinstance(unknown.value.body, dict)
        assert unknown.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as unsupported:
            sdk.messages.create(model="qwen-local", max_tokens=5, messages=PING,
                                extra_body={"top_k": 5})
    assert "top_k" in str(unsupported.value)
    assert spend_rows(gateway, key, 0) == []


def priced(usage: Any) -> float:
    """What Anthropic `usage` costs at claude-haiku's prices."""
    return (usage.input_tokens * HAIKU_PRICES["input_cost_per_token"]
            + (usage.cache_read_input_tokens or 0) * HAIKU_PRICES["cache_read_input_token_cost"]
            + (usage.cache_creation_input_tokens or 0)
            * HAIKU_PRICES["cache_creation_input_token_cost"]
            + usage.output_tokens * HAIKU_PRICES["output_cost_per_token"])


def test_an_anthropic_model_gets_the_clients_body_as_it_is(gateway: ServedGateway,
                                                           mock_anthropic: str) -> None:
    """Passed through: fields a translation could not carry (top_k, cache breakpoints,
    metadata) reach Anthropic unchanged but for the model; its Message comes back as sent."""
    key = new_key(gateway, models=["claude-haiku"], max_budget=1.0)
    body = {"model": "claude-haiku", "max_tokens": 5, "top_k": 3,
            "metadata": {"user_id": "agent-7"},
            "system": [{"type": "text", "text": "You are careful.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]}
    resp = httpx.post(f"{gateway.base_url}/v1/messages", json=body,
                      headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    assert resp.status_code == 200, resp.text
    assert httpx.get(f"{mock_anthropic}/mock/last").json() == {
        **body, "model": "claude-3-5-haiku-20241022"}
    message = anthropic.types.Message.model_validate(resp.json())
    assert message.model == "claude-3-5-haiku-20241022"       # Anthropic's answer, untouched
    assert message.usage.cache_creation_input_tokens
    [row] = spend_rows(gateway, key, 1)
    assert row["request_id"] == resp.headers["x-request-id"]
    assert row["call_type"] == "anthropic_messages"
    assert row["spend"] == pytest.approx(priced(message.usage))

    # What Anthropic refuses comes back refused, in its shape, and costs nothing.
    resp = httpx.post(f"{gateway.base_url}/v1/messages", json={**body, "temperature": 5},
                      headers={"x-api-key": key})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "temperature" in resp.json()["error"]["message"]
    assert key_spend(gateway, key) == pytest.approx(row["spend"])


def test_an_overloaded_anthropic_stream_is_retried_then_an_overloaded_error(
        gateway: ServedGateway) -> None:
    """An error as the first event: an error answer (retried, then refused, nothing
    charged); an error after content: Anthropic's error event, the content charged."""
    key = new_key(gateway, models=["claude-overloaded-stream", "claude-overloaded-mid-stream"],
                  max_budget=1.0)
    with client(gateway, key) as sdk, pytest.raises(anthropic.APIStatusError) as failed:
        sdk.with_options(max_retries=0).messages.create(
            model="claude-overloaded-stream", max_tokens=5, stream=True, messages=PING)
    assert failed.value.status_code == 503
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["error"]["type"] == "overloaded_error"
    [row] = spend_rows(gateway, key, 1)
    assert (row["status"], row["spend"]) == ("failure", 0)

    resp = httpx.post(f"{gateway.base_url}/v1/messages", headers={"x-api-key": key},
                      json={"model": "claude-overloaded-mid-stream", "max_tokens": 5,
                            "stream": True, "messages": PING})
    assert resp.status_code == 200
    events = [line for line in resp.text.split("\n") if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[-1] == "event: error"
    assert '"overloaded_error"' in resp.text and "data: [DONE]" not in resp.text
    rows = spend_rows(gateway, key, 2)
    partial = next(r for r in rows if r["request_id"] == resp.headers["x-request-id"])
    assert partial["status"] == "partial" and partial["spend"] > 0


def test_an_anthropic_model_streams_tool_use_and_caches(gateway: ServedGateway,
                                                        mock_anthropic: str) -> None:
    """The anthropic SDK against an Anthropic model: a streamed tool call, its result, and a
    prompt cache read on the second turn; every row priced from Anthropic's usage."""
    key = new_key(gateway, models=["claude-haiku"], max_budget=1.0)
    system = [{"type": "text", "text": "You are a careful agent. " * 20,
               "cache_control": {"type": "ephemeral"}}]
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    invalid = httpx.get(f"{mock_anthropic}/mock/stats").json()["invalid"]
    with client(gateway, key) as sdk:
        with sdk.messages.stream(model="claude-haiku", max_tokens=50, system=system,
                                 tools=[WEATHER], tool_choice={"type": "any"},
                                 messages=ask) as stream:
            events = [event.type for event in stream]
            message = stream.get_final_message()
        assert events[0] == "message_start" and events[-1] == "message_stop"
        assert message.stop_reason == "tool_use"
        [call] = [c for c in message.content if c.type == "tool_use"]
        assert call.name == "get_weather" and set(call.input) == {"city"}
        raw = sdk.messages.with_raw_response.create(
            model="claude-haiku", max_tokens=5, system=system, tools=[WEATHER], messages=[
                *ask, {"role": "assistant", "content": message.content},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                    {"type": "text", "text": "Thanks!"}]}])
        answer = raw.parse()
    assert answer.content[0].type == "text" and answer.stop_reason == "max_tokens"
    assert answer.usage.cache_read_input_tokens
    assert httpx.get(f"{mock_anthropic}/mock/stats").json()["invalid"] == invalid
    rows = spend_rows(gateway, key, 2)
    assert len(rows) == 2
    row = next(r for r in rows if r["request_id"] == raw.headers["x-request-id"])
    assert row["spend"] == pytest.approx(priced(answer.usage))
    assert key_spend(gateway, key) == pytest.approx(sum(r["spend"] for r in rows))

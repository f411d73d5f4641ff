"""Issue #6, done means: the `openai` SDK calls `claude-haiku` through `faregate serve` (real
processes) and the project's mock Anthropic server answers, checking every request against
Anthropic's wire format (a translation mistake is a 400 there, so a test here fails)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml
from e2e.conftest import ServedGateway, start_gateway
from support import MASTER_KEY, free_port, stop, wait_for_port

ANTHROPIC_KEY = "ak-test-anthropic-0123"
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
# Claude 3.5 Haiku's list prices, dollars per token
PRICES = {"input_cost_per_token": 0.0000008, "output_cost_per_token": 0.000004,
          "cache_read_input_token_cost": 0.00000008,
          "cache_creation_input_token_cost": 0.000001}
NANOS = {k: round(v * 1e9 * 1000) for k, v in PRICES.items()}     # nano-dollars per 1000 tokens
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


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
def gateway(mock_anthropic: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ServedGateway]:
    tmp = tmp_path_factory.mktemp("anthropic")
    entry: dict[str, Any] = {"model": "anthropic/claude-3-5-haiku-20241022",
                             "api_key": "os.environ/ANTHROPIC_API_KEY",
                             "api_base": mock_anthropic, **PRICES}
    config = {
        "model_list": [
            {"model_name": "claude-haiku", "litellm_params": entry,
             "model_info": {"max_output_tokens": 256}},
            {"model_name": "claude-overloaded",
             "litellm_params": {**entry, "model": "anthropic/overloaded"}},
            {"model_name": "claude-overloaded-stream",
             "litellm_params": {**entry, "model": "anthropic/overloaded-stream"}},
            {"model_name": "claude-overloaded-mid-stream",
             "litellm_params": {**entry, "model": "anthropic/overloaded-mid-stream"}}],
        "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY"},
        "router_settings": {"num_retries": 1, "retry_backoff": 0}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "FAREGATE_MASTER_KEY": MASTER_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
           "DATABASE_URL": f"sqlite:///{tmp / 'faregate.db'}", "FAREGATE_DATA_DIR": str(tmp)}
    gw = start_gateway(tmp, env, ["--config", str(tmp / "config.yaml")])
    yield gw
    stop(gw.proc)


def new_key(gw: ServedGateway, **fields: Any) -> str:
    resp = httpx.post(f"{gw.base_url}/key/generate", headers=ADMIN,
                      json={"models": ["claude-haiku", "claude-overloaded",
                                       "claude-overloaded-stream",
                                       "claude-overloaded-mid-stream"], **fields})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def client(gw: ServedGateway, key: str) -> openai.OpenAI:
    # max_retries=0: the gateway's retries are under test, not the SDK's
    return openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def llm(gateway: ServedGateway) -> Iterator[openai.OpenAI]:
    """The SDK with a virtual key that has a roomy budget."""
    with client(gateway, new_key(gateway, max_budget=10.0)) as sdk:
        yield sdk


def mock(gw_mock: str, what: str) -> Any:
    return httpx.get(f"{gw_mock}/mock/{what}").json()


def spend_row(gw: ServedGateway, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:          # rows reach the database in batches
        rows = httpx.get(f"{gw.base_url}/spend/logs", params={"request_id": request_id},
                         headers=ADMIN).json()
        if rows:
            return dict(rows[0])
        time.sleep(0.05)
    raise AssertionError(f"no spend row for {request_id}")


def test_chat_is_translated_and_answered(llm: openai.OpenAI, mock_anthropic: str) -> None:
    reply = llm.chat.completions.create(
        model="claude-haiku", max_tokens=5, temperature=0.5, stop=["END"],
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Say something"}])
    assert reply.choices[0].message.content == "mock mock mock mock mock"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    sent = mock(mock_anthropic, "last")
    assert sent == {"model": "claude-3-5-haiku-20241022", "max_tokens": 5, "temperature": 0.5,
                    "stop_sequences": ["END"],
                    "system": [{"type": "text", "text": "Be brief."}],
                    "messages": [{"role": "user",
                                  "content": [{"type": "text", "text": "Say something"}]}]}


def test_streaming_relays_chunks_and_usage(llm: openai.OpenAI) -> None:
    stream = llm.chat.completions.create(
        model="claude-haiku", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Stream please"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(["mock"] * 8)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens > 0


def test_a_tool_call_and_its_result_turn(llm: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Use get_weather for Paris"}]
    first = llm.chat.completions.create(model="claude-haiku", messages=messages,
                                        tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city":"mock"}'
    streamed = list(llm.chat.completions.create(model="claude-haiku", messages=messages,
                                                tools=[WEATHER], stream=True))
    arguments = "".join(tc.function.arguments or "" for c in streamed if c.choices
                        for tc in c.choices[0].delta.tool_calls or [])
    assert arguments == '{"city":"mock"}'
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    second = llm.chat.completions.create(model="claude-haiku", messages=messages,
                                         tools=[WEATHER], max_tokens=3)
    assert second.choices[0].message.content == "mock mock mock"
    assert second.choices[0].finish_reason == "length"


def test_the_spend_row_prices_cache_reads_and_writes(gateway: ServedGateway,
                                                     llm: openai.OpenAI) -> None:
    system = {"type": "text", "text": "You answer questions about a long document. " * 20,
              "cache_control": {"type": "ephemeral"}}
    for expect_write in (True, False):      # the first call writes the cache, the second reads
        raw = llm.chat.completions.with_raw_response.create(
            model="claude-haiku", max_tokens=4,
            messages=[{"role": "system", "content": [system]},        # type: ignore[list-item]
                      {"role": "user", "content": "Summarise it"}])
        usage = raw.parse().model_dump()["usage"]
        written, read = usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]
        assert (written > 0, read > 0) == (expect_write, not expect_write)
        assert usage["prompt_tokens_details"]["cached_tokens"] == read
        fresh = usage["prompt_tokens"] - written - read
        expected = -(-(fresh * NANOS["input_cost_per_token"]
                       + read * NANOS["cache_read_input_token_cost"]
                       + written * NANOS["cache_creation_input_token_cost"]
                       + usage["completion_tokens"] * NANOS["output_cost_per_token"]) // 1000)
        row = spend_row(gateway, raw.headers["x-request-id"])
        assert row["spend_nanos"] == expected
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], 4)


def test_overloaded_is_retried_then_an_openai_shaped_error(
        llm: openai.OpenAI, mock_anthropic: str) -> None:
    before = mock(mock_anthropic, "stats")["models"].get("overloaded", 0)
    with pytest.raises(openai.APIStatusError) as caught:
        llm.chat.completions.create(
            model="claude-overloaded", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-faregate-attempts"] == "2"
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "upstream_overloaded" and "overloaded" in error["message"].lower()
    assert mock(mock_anthropic, "stats")["models"]["overloaded"] == before + 2
    # an overloaded error as a stream's first event: retried too, and a real HTTP status
    with pytest.raises(openai.APIStatusError) as streamed:
        list(llm.chat.completions.create(model="claude-overloaded-stream", stream=True,
                                         messages=[{"role": "user", "content": "hi"}]))
    assert streamed.value.status_code == 503
    assert streamed.value.response.headers["x-faregate-attempts"] == "2"


def test_an_error_after_the_first_chunk_ends_the_stream_and_charges_what_came(
        gateway: ServedGateway, llm: openai.OpenAI) -> None:
    raw = llm.chat.completions.with_raw_response.create(
        model="claude-overloaded-mid-stream", stream=True,
        messages=[{"role": "user", "content": "hi"}])
    received = []
    with pytest.raises(openai.APIError, match="overloaded"):
        for chunk in raw.parse():
            received += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    assert "".join(received) == " ".join(["mock"] * 8)
    row = spend_row(gateway, raw.headers["x-request-id"])
    assert row["status"] == "partial" and row["spend_nanos"] > 0


def test_budget_and_bad_parameters_are_refused_before_anthropic(
        gateway: ServedGateway, llm: openai.OpenAI, mock_anthropic: str) -> None:
    poor = new_key(gateway, max_budget=0.000001)
    before = mock(mock_anthropic, "stats")["requests"]
    with client(gateway, poor) as sdk, pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(
            model="claude-haiku", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.json()["error"]["type"] == "budget_exceeded"
    with pytest.raises(openai.BadRequestError) as bad:
        llm.chat.completions.create(
            model="claude-haiku", n=2, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.response.json()["error"]["param"] == "n"
    assert mock(mock_anthropic, "stats")["requests"] == before
    # Refused before admission: no row. A later request's row being there shows the ledger has
    # caught up past it (rows reach the database in the order they were recorded).
    later = llm.chat.completions.with_raw_response.create(
        model="claude-haiku", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    spend_row(gateway, later.headers["x-request-id"])
    refused = httpx.get(f"{gateway.base_url}/spend/logs", headers=ADMIN,
                        params={"request_id": bad.value.response.headers["x-request-id"]})
    assert refused.json() == []

"""OpenAI chat <-> Anthropic Messages translation (faregate.providers.anthropic_translate), with
every translated request checked by the mock Anthropic server's wire-format validator."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from faregate.config import Deployment
from faregate.errors import InvalidRequest, UpstreamError
from faregate.mocks.anthropic_server import Invalid, validate
from faregate.providers.anthropic import anthropic_failure
from faregate.providers.anthropic_passthrough import read_message
from faregate.providers.anthropic_translate import (
    AnthropicStreamError,
    StreamTranslator,
    from_message,
    openai_usage,
    sse_events,
    to_messages_request,
)

HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01",
           "content-type": "application/json"}
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def translated(**body: Any) -> dict[str, Any]:
    out = to_messages_request({"model": "claude-haiku", **body}, "claude-3-5-haiku", 512)
    validate(HEADERS, orjson.loads(orjson.dumps(out)), None)     # Anthropic would accept it
    return out


def test_a_full_conversation_maps_to_the_messages_api() -> None:
    out = translated(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is here, and the weather in Paris?",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": PNG}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
            {"role": "user", "content": "Thanks"},
        ],
        max_completion_tokens=100, temperature=0.2, top_p=0.9, stop="END",
        tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False, user="u-1",
        presence_penalty=0.5, seed=7)
    assert out == {
        "model": "claude-3-5-haiku", "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is here, and the weather in Paris?",
                 "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url",
                                             "url": "https://example.com/a.jpg"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            # the tool result and the next user message make one user turn (alternation)
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
                {"type": "text", "text": "Thanks"}]}],
        "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
        "tools": [{"name": "get_weather", "description": "Weather in a city",
                   "input_schema": WEATHER["function"]["parameters"]}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-1"}}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"})])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    out = translated(messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
                     tool_choice=choice, stream=True)
    assert out["tool_choice"] == expected
    assert out["stream"] is True and out["max_tokens"] == 512     # the model's default


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ({"temperature": 1.5}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
    ({"functions": [{"name": "f"}]}, "functions"), ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA=="}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
])
def test_what_anthropic_cannot_honour_is_a_400_naming_the_parameter(
        body: dict[str, Any], param: str) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(InvalidRequest) as caught:
        to_messages_request(request, "claude", 512)
    assert caught.value.param == param and caught.value.status == 400


def test_a_message_with_text_and_tool_use_becomes_content_and_tool_calls() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
               "content": [{"type": "text", "text": "Calling."},
                           {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                            "input": {"city": "Paris"}}],
               "stop_reason": "tool_use", "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 5,
                         "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}}
    out = from_message(message, created=1700000000)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "Calling.", "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert out["usage"] == {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                            "prompt_tokens_details": {"cached_tokens": 100},
                            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
    assert (out["id"], out["object"], out["created"]) == ("msg_1", "chat.completion",
                                                          1700000000)


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter")])
def test_stop_reasons(stop: str, finish: str) -> None:
    message = {"id": "m", "content": [], "stop_reason": stop, "usage": {}}
    assert from_message(message, 0)["choices"][0]["finish_reason"] == finish
    assert from_message(message, 0)["choices"][0]["message"]["content"] is None


STREAM = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                  for e in [
    {"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant",
                                          "model": "claude", "content": [],
                                          "usage": {"input_tokens": 7, "output_tokens": 1,
                                                    "cache_read_input_tokens": 3}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop"}])


def test_a_stream_of_events_becomes_openai_chunks_ending_with_usage() -> None:
    translator = StreamTranslator(created=5, include_usage=True)
    chunks = [c for e in sse_events(STREAM) for c in translator.feed(e)]
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""}, {"content": "Hi"},
        {"tool_calls": [{"index": 0, "id": "toolu_9", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {}, None]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == openai_usage({"input_tokens": 7, "output_tokens": 15,
                                                "cache_read_input_tokens": 3})
    assert translator.done and {c["id"] for c in chunks} == {"msg_s"}


def test_an_error_event_raises_and_maps_like_the_same_http_error() -> None:
    translator = StreamTranslator(created=5, include_usage=False)
    with pytest.raises(AnthropicStreamError) as caught:
        translator.feed({"type": "error",
                         "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert caught.value.error_type == "overloaded_error"


D = Deployment(model_name="claude-haiku", provider="anthropic", upstream_model="claude",
               api_base="http://a", api_key=None, input_femtos=1, output_femtos=1,
               max_output_tokens=10, prompt_overhead_tokens=0, per_message_overhead_tokens=0,
               timeout_s=1)


@pytest.mark.parametrize(("status", "error_type", "seen", "retryable"), [
    (529, "overloaded_error", 503, True), (429, "rate_limit_error", 429, True),
    (500, "api_error", 502, True), (400, "invalid_request_error", 400, False),
    (401, "authentication_error", 502, False)])
def test_anthropic_errors_become_openai_shaped_upstream_errors(
        status: int, error_type: str, seen: int, retryable: bool) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": error_type, "message": "boom"}})
    error = anthropic_failure(D, status, body)
    assert (error.status, error.retryable, error.upstream_status) == (seen, retryable, status)
    rendered = orjson.loads(error.body())["error"]
    assert set(rendered) == {"message", "type", "param", "code"} and "boom" in rendered["message"]


@pytest.mark.parametrize(("change", "problem"), [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "alternate"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "x", "content": "r"}]}]}, "tool_use_id"),
    ({"n": 1}, "Extra inputs"), ({"max_tokens": None}, "max_tokens"),
    ({"temperature": 2}, "temperature"),
    ({"tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
])
def test_the_mock_refuses_what_anthropic_refuses(change: dict[str, Any], problem: str) -> None:
    body = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}],
            **change}
    with pytest.raises(Invalid, match=problem):
        validate(HEADERS, body, None)
    with pytest.raises(Invalid, match="anthropic-version"):
        validate({**HEADERS, "anthropic-version": ""}, {}, None)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"type": "error"}', b'{"id": "x"}'])
def test_a_2xx_that_is_not_a_message_is_a_retryable_malformed_reply(body: bytes) -> None:
    with pytest.raises(UpstreamError) as caught:
        read_message(D, 200, body)
    assert caught.value.status == 502 and caught.value.retryable
    assert caught.value.code == "upstream_malformed_reply"


def test_a_message_is_read() -> None:
    assert read_message(D, 200, b'{"type": "message", "usage": {}}')["type"] == "message"

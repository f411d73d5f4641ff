"""The Anthropic Messages dialect: requests to OpenAI chat, answers and streams back, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from faregate.errors import (
    AuthError,
    BodyTooLarge,
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    ModelAccessDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
)
from faregate.wire.anthropic_dialect import (
    StreamTranslator,
    anthropic_usage,
    error_body,
    passthrough_request,
    read_request,
    translate_reply,
    translate_request,
)
from faregate.wire.json_limits import MAX_JSON_DEPTH
from faregate.wire.openai_request import CallType, ParsedRequest, parse


def openai_of(**body: Any) -> dict[str, Any]:
    request = {"model": "m", "max_tokens": 10, **body}
    result: dict[str, Any] = orjson.loads(translate_request(orjson.dumps(request)).openai_body)
    return result


def test_system_messages_and_sampling_map_to_openai_fields() -> None:
    out = openai_of(system=[{"type": "text", "text": "a", "cache_control": {"type": "x"}},
                            {"type": "text", "text": "b"}],
                    messages=[{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "hello"},
                              {"role": "user", "content": [{"type": "text", "text": "more"}]}],
                    temperature=0.5, top_p=0.9, stop_sequences=["END"],
                    metadata={"user_id": "u1"})
    assert out == {"model": "m", "max_tokens": 10, "temperature": 0.5, "top_p": 0.9,
                   "stop": ["END"], "user": "u1", "messages": [
                       {"role": "system", "content": "a\nb"},
                       {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "hello"},
                       {"role": "user", "content": [{"type": "text", "text": "more"}]}]}


def test_stream_asks_the_upstream_for_usage() -> None:
    translated = translate_request(orjson.dumps(
        {"model": "m", "max_tokens": 1, "stream": True,
         "messages": [{"role": "user", "content": "x"}]}))
    assert translated.stream and translated.model == "m"
    assert orjson.loads(translated.openai_body)["stream_options"] == {"include_usage": True}


def test_images_tools_and_tool_results() -> None:
    out = openai_of(
        tools=[{"name": "f", "description": "d", "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "AAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1",
                 "content": [{"type": "text", "text": "r1"}, {"type": "text", "text": "r2"}]},
                {"type": "text", "text": "next"}]}])
    assert out["tools"] == [{"type": "function", "function": {
        "name": "f", "description": "d", "parameters": {"type": "object"}}}]
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    assert out["messages"] == [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "text", "text": "what?"}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "r1\nr2"},
        {"role": "user", "content": [{"type": "text", "text": "next"}]}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"), ({"type": "any"}, "required"),
    ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}})])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    out = openai_of(messages=[{"role": "user", "content": "x"}], tool_choice=choice,
                    tools=[{"name": "f", "input_schema": {}}])
    assert out["tool_choice"] == expected


def test_the_prompt_bound_reads_the_translation() -> None:
    """Budgets bound what the model reads: system, texts, tool calls, results and schemas."""
    translated = translate_request(orjson.dumps({
        "model": "m", "max_tokens": 7, "system": "sys!",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}))
    parsed = parse(translated.openai_body, CallType.CHAT)
    assert (parsed.max_tokens, parsed.text_bytes, parsed.messages) == (7, 9, 2)


BAD = [
    ({"max_tokens": None}, "max_tokens: Field required"),
    ({"max_tokens": 0}, "max_tokens: must be an integer >= 1"),
    ({"max_tokens": True}, "max_tokens"),
    ({"model": ""}, "model: Field required"),
    ({"messages": "x"}, "messages: must be a non-empty array"),
    ({"stream": "yes"}, "stream: must be a boolean"),
    ({"top_k": 3}, "top_k: not supported"),
    ({"container": "c", "mcp_servers": []}, "container, mcp_servers: not supported"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
    ({"temperature": "hot"}, "temperature: must be a number"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"metadata": {"user_id": 5}}, "metadata.user_id"),
    ({"system": 5}, "system"),
    ({"system": [{"type": "image"}]}, "system.0"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "document"}]}]},
     "messages.0.content.0.type: 'document'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "file", "file_id": "f"}}]}]}, "messages.0.content.0.source"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
     "tool_use_id"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image"}]}]}]},
     "messages.0.content.0.content.0"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]}]},
     "tool_use block needs"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image"}]}]}, "'image' blocks"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "only client tools"),
    ({"tools": [{"name": "f"}]}, "input_schema"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice"),
]


@pytest.mark.parametrize(("fields", "says"), BAD)
def test_bad_requests_are_400_naming_the_field(fields: dict[str, Any], says: str) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            **fields}
    with pytest.raises(InvalidRequest) as caught:
        translate_request(orjson.dumps(body))
    assert says in caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"'])
def test_bodies_that_are_not_json_objects(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        translate_request(raw)


def test_thinking_switched_off_and_service_tier_are_tolerated() -> None:
    out = openai_of(messages=[{"role": "user", "content": "x"}],
                    thinking={"type": "disabled"}, service_tier="auto")
    assert "thinking" not in out and "service_tier" not in out


def test_a_schema_too_deep_to_write_is_a_400() -> None:
    deep = b'{"a":' * (MAX_JSON_DEPTH + 5) + b"{}" + b"}" * (MAX_JSON_DEPTH + 5)
    raw = (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], '
           b'"tools": [{"name": "f", "input_schema": ' + deep + b"}]}")
    with pytest.raises(InvalidRequest) as caught:
        translate_request(raw)
    assert caught.value.code == "json_too_deep"


def test_a_tool_input_too_deep_to_write_is_a_400() -> None:
    deep = b"[" * (MAX_JSON_DEPTH + 5) + b"]" * (MAX_JSON_DEPTH + 5)
    raw = (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": '
           b'[{"type": "tool_use", "id": "t", "name": "f", "input": {"a": ' + deep + b"}}]}]}")
    with pytest.raises(InvalidRequest) as caught:
        translate_request(raw)
    assert caught.value.code == "json_too_deep"


@pytest.mark.parametrize("odd", [b"[]", b'{"choices": {}}', b'{"choices": [null]}',
                                 b'{"choices": [{"message": "x"}]}',
                                 b'{"choices": [{"message": {"content": 5, "tool_calls": [7]}}]}'])
def test_an_odd_upstream_answer_is_an_empty_message_not_a_crash(odd: bytes) -> None:
    out = orjson.loads(translate_reply(odd, "m", "msg_1"))
    assert (out["content"], out["stop_reason"]) == ([], "end_turn")


def completion(message: dict[str, Any], finish: str | None) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}})


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"),
                                              ("content_filter", "refusal"), (None, "end_turn")])
def test_reply_text_and_stop_reasons(finish: str | None, stop: str) -> None:
    out = orjson.loads(translate_reply(completion({"role": "assistant", "content": "hi"},
                                                  finish), "qwen", "msg_1"))
    assert out == {"id": "msg_1", "type": "message", "role": "assistant", "model": "qwen",
                   "content": [{"type": "text", "text": "hi"}], "stop_reason": stop,
                   "stop_sequence": None, "usage": {
                       "input_tokens": 11, "output_tokens": 3, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0}}


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 100, "completion_tokens": 7,
      "prompt_tokens_details": {"cached_tokens": 60}}, (40, 7, 0, 60)),
    ({"prompt_tokens": 100, "completion_tokens": 7, "cache_read_input_tokens": 50,
      "cache_creation_input_tokens": 30, "prompt_tokens_details": {"cached_tokens": 50}},
     (20, 7, 30, 50)),
    (None, (0, 0, 0, 0)),
])
def test_usage_counts_cache_tokens_apart(usage: Any, expected: tuple[int, ...]) -> None:
    got = anthropic_usage(usage)
    assert (got["input_tokens"], got["output_tokens"], got["cache_creation_input_tokens"],
            got["cache_read_input_tokens"]) == expected


def test_reply_tool_calls_become_tool_use_blocks() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 2}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "oops"}}]}
    out = orjson.loads(translate_reply(completion(message, "tool_calls"), "m", "msg_1"))
    assert out["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}},
        {"type": "tool_use", "id": "c2", "name": "g", "input": {"_raw_arguments": "oops"}}]
    assert out["stop_reason"] == "tool_use"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
          usage: dict[str, int] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps({"id": "c", "choices": choices, "usage": usage}) + b"\n\n"


def events(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for event in out.split(b"\n\n"):
        if event:
            name, data = event.split(b"\n")
            assert name.startswith(b"event: ") and data.startswith(b"data: ")
            found.append((name[7:].decode(), orjson.loads(data[6:])))
            assert found[-1][1]["type"] == found[-1][0]
    return found


def test_stream_of_text_then_a_tool_call() -> None:
    t = StreamTranslator("qwen", "msg_9")
    out = t.start() + t.feed(
        chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hel"})
        + chunk({"content": "lo"}))
    out += t.feed(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "f", "arguments": '{"a"'}}]}))
    out += t.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    out += t.feed(chunk({}, "tool_calls") + chunk(usage={"prompt_tokens": 5,
                                                         "completion_tokens": 4})
                  + b"data: [DONE]\n\n")
    got = events(out)
    assert [name for name, _ in got] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert got[0][1]["message"] == {
        "id": "msg_9", "type": "message", "role": "assistant", "model": "qwen", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}
    assert got[1][1] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}
    assert got[3][1]["delta"] == {"type": "text_delta", "text": "lo"}
    assert got[5][1] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "f", "input": {}}}
    assert got[7][1] == {"type": "content_block_delta", "index": 1,
                         "delta": {"type": "input_json_delta", "partial_json": ": 1}"}}
    assert got[9][1] == {"type": "message_delta",
                         "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                         "usage": {"input_tokens": 5, "output_tokens": 4,
                                   "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 0}}
    assert t.ended


def test_stream_error_event_becomes_anthropics() -> None:
    t = StreamTranslator("m", "msg_1")
    err = UpstreamError("it broke", status=502)
    got = events(t.feed(chunk({"content": "a"}) + b"data: " + err.body() + b"\n\n"))
    assert got[-1] == ("error", {"type": "error", "error": {"type": "api_error",
                                                            "message": "it broke"}})
    assert t.ended


@pytest.mark.parametrize(("exc", "status", "type_"), [
    (InvalidRequest("x"), 400, "invalid_request_error"),
    (InvalidRequest("x", code="model_not_found"), 404, "not_found_error"),
    (BodyTooLarge("x"), 413, "request_too_large"),
    (AuthError("x"), 401, "authentication_error"),
    (ModelAccessDenied("x"), 403, "permission_error"),
    (BudgetExceeded("x"), 429, "rate_limit_error"),
    (RateLimited("x", headers={"Retry-After": "3"}), 429, "rate_limit_error"),
    (ServiceUnavailable("x"), 503, "overloaded_error"),
    (UpstreamError("x", status=502), 502, "api_error"),
    (UpstreamError("x", status=504), 504, "timeout_error"),
    (UpstreamError("x", status=422), 422, "invalid_request_error"),
    (GatewayError("x"), 500, "api_error"),
])
def test_error_mapping(exc: GatewayError, status: int, type_: str) -> None:
    got_status, body, headers = error_body(exc)
    assert got_status == status
    assert orjson.loads(body) == {"type": "error", "error": {"type": type_, "message": "x"}}
    assert ((b"x-should-retry", b"false") in headers) == isinstance(exc, BudgetExceeded)
    if isinstance(exc, RateLimited):
        assert (b"retry-after", b"3") in headers


CACHE = {"type": "ephemeral"}
AGENT_REQUEST: dict[str, Any] = {
    "model": "claude", "max_tokens": 100, "top_k": 5, "stream": True,
    "thinking": {"type": "enabled", "budget_tokens": 50},
    "system": [{"type": "text", "text": "Rules.", "cache_control": CACHE}],
    "tools": [{"name": "read", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Open a.txt"},
            {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "doc"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}}]},
        {"role": "user", "content": "ok"}]}


def test_an_anthropic_model_reads_only_what_the_gateway_needs() -> None:
    """Passed through: nothing Anthropic accepts is refused; the bound counts every block."""
    raw = orjson.dumps(AGENT_REQUEST)
    parsed = read_request(raw, anthropic_only=lambda model: model == "claude")
    assert isinstance(parsed, ParsedRequest)
    assert parsed.call_type is CallType.MESSAGES and parsed.body == AGENT_REQUEST
    assert (parsed.model, parsed.stream, parsed.max_tokens, parsed.max_tokens_field) == (
        "claude", True, 100, "max_tokens")
    assert parsed.usage_requested      # the gateway adds no stream_options to the body
    messages = AGENT_REQUEST["messages"]
    expected = (len(orjson.dumps(AGENT_REQUEST["system"]))
                + len(orjson.dumps(AGENT_REQUEST["tools"])) + len(b"Open a.txt")
                + len(orjson.dumps(messages[0]["content"][2]))
                + len(orjson.dumps(messages[1]["content"][0]))
                + len(orjson.dumps(messages[1]["content"][1])) + len(b"ok"))
    assert (parsed.text_bytes, parsed.messages, parsed.images) == (expected, 4, 1)
    with pytest.raises(InvalidRequest, match="top_k"):     # the same body, translated
        read_request(raw, anthropic_only=lambda model: False)


@pytest.mark.parametrize(("fields", "says"), [
    ({"max_tokens": None}, "max_tokens: Field required"), ({"max_tokens": 0}, "max_tokens"),
    ({"model": 5}, "model"), ({"stream": 1}, "stream"), ({"messages": []}, "messages"),
    ({"messages": ["x"]}, "messages.0")])
def test_a_passed_through_request_still_needs_what_the_gateway_reads(
        fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRequest, match=says):
        passthrough_request(orjson.dumps({**AGENT_REQUEST, **fields}))


def test_a_passed_through_body_must_be_writable_and_counting_needs_no_max_tokens() -> None:
    deep = b"[" * (MAX_JSON_DEPTH + 5) + b"]" * (MAX_JSON_DEPTH + 5)
    raw = (b'{"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": '
           b'[{"type": "tool_result", "tool_use_id": "t", "x": ' + deep + b"}]}]}")
    with pytest.raises(InvalidRequest) as caught:
        passthrough_request(raw)
    assert caught.value.code == "json_too_deep"
    body = {k: v for k, v in AGENT_REQUEST.items() if k != "max_tokens"}
    assert passthrough_request(orjson.dumps(body), counting=True).max_tokens == 1

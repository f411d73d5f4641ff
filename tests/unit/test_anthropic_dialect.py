"""The Anthropic Messages dialect: requests to OpenAI chat, answers and streams back, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from faregate.anthropic_dialect import (
    StreamTranslator,
    anthropic_usage,
    error_body,
    translate_reply,
    translate_request,
)
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
from faregate.json_limits import MAX_JSON_DEPTH
from faregate.openai_request import CallType, parse
from faregate.providers.anthropic_translate import to_messages_request


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
    "model": "claude", "max_tokens": 100, "top_k": 5,
    "system": [{"type": "text", "text": "You are an agent."},
               {"type": "text", "text": "Long rules.", "cache_control": CACHE}],
    "tools": [{"name": "read", "description": "Read a file", "cache_control": CACHE,
               "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Open a.txt",
                                      "cache_control": CACHE}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a.txt"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello",
             "cache_control": CACHE},
            {"type": "text", "text": "Summarise it."}]}]}


def test_anthropic_only_models_keep_cache_breakpoints_and_top_k_through_both_translations(
        ) -> None:
    """/v1/messages -> OpenAI chat -> the Anthropic provider's Messages request: what reaches
    Anthropic is what the client sent (the system blocks, breakpoints, tools, top_k)."""
    translated = translate_request(orjson.dumps(AGENT_REQUEST), anthropic_only=lambda m: True)
    upstream = to_messages_request(orjson.loads(translated.openai_body), "claude-3", 1024)
    assert upstream["system"] == AGENT_REQUEST["system"]
    assert upstream["tools"] == AGENT_REQUEST["tools"]
    assert upstream["top_k"] == 5
    assert upstream["messages"] == [
        AGENT_REQUEST["messages"][0], AGENT_REQUEST["messages"][1],
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "hello", "cache_control": CACHE}]},
            {"type": "text", "text": "Summarise it."}]}]


def test_top_level_cache_control_marks_the_last_block() -> None:
    body = {**AGENT_REQUEST, "cache_control": CACHE}
    out = orjson.loads(translate_request(orjson.dumps(body),
                                         anthropic_only=lambda m: True).openai_body)
    assert out["messages"][-1]["content"][-1] == {"type": "text", "text": "Summarise it.",
                                                  "cache_control": CACHE}


def test_other_models_never_see_anthropic_extras() -> None:
    body = {k: v for k, v in AGENT_REQUEST.items() if k != "top_k"}
    raw = translate_request(orjson.dumps({**body, "cache_control": CACHE})).openai_body
    assert b"cache_control" not in raw
    assert orjson.loads(raw)["messages"][0] == {"role": "system",
                                                "content": "You are an agent.\nLong rules."}
    with pytest.raises(InvalidRequest, match="top_k"):
        translate_request(orjson.dumps(AGENT_REQUEST), anthropic_only=lambda m: False)

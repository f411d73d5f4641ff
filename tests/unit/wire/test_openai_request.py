"""faregate.wire.openai_request.parse: the few fields the gateway reads, type-checked."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from faregate.errors import InvalidRequest
from faregate.wire.openai_request import CallType, parse

CHAT = CallType.CHAT


def body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def invalid(raw: bytes, call_type: CallType = CHAT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(raw, call_type)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


# errors, each with the param that is wrong


@pytest.mark.parametrize("raw", [b"", b"{", b"{'model': 'm'}", b"nope", b"\xff\xfe"])
def test_bad_json(raw: bytes) -> None:
    err = invalid(raw)
    assert "not valid JSON" in err.message
    assert err.param is None


@pytest.mark.parametrize("raw", [b"[]", b"[{\"model\": \"m\"}]", b"\"m\"", b"42", b"null"])
def test_body_must_be_an_object(raw: bytes) -> None:
    err = invalid(raw)
    assert "must be a JSON object" in err.message


@pytest.mark.parametrize("model", [..., None, "", 42, ["m"]])
def test_model_required(model: Any) -> None:
    assert invalid(body(model=model)).param == "model"


@pytest.mark.parametrize("stream", ["true", 1, 0, {}, []])
def test_bad_stream(stream: Any) -> None:
    assert invalid(body(stream=stream)).param == "stream"


@pytest.mark.parametrize("options", ["include_usage", True, [True], 1])
def test_bad_stream_options(options: Any) -> None:
    assert invalid(body(stream=True, stream_options=options)).param == "stream_options"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [-1, True, False, 1.5, "10", [10]])
def test_bad_max_tokens(field: str, value: Any) -> None:
    assert invalid(body(**{field: value})).param == field


@pytest.mark.parametrize("n", [0, -1, 129, True, 1.0, "2"])
def test_bad_n(n: Any) -> None:
    assert invalid(body(n=n)).param == "n"


@pytest.mark.parametrize("messages", [..., None, [], {}, "hi"])
def test_messages_must_be_non_empty_array(messages: Any) -> None:
    assert invalid(body(messages=messages)).param == "messages"


@pytest.mark.parametrize("message", [{"content": "hi"}, {"role": 1, "content": "hi"}, "hi",
                                     None])
def test_message_needs_a_role(message: Any) -> None:
    raw = body(messages=[{"role": "system", "content": "ok"}, message])
    assert invalid(raw).param == "messages[1]"


@pytest.mark.parametrize("content", [42, {"text": "hi"}, True])
def test_bad_content_type(content: Any) -> None:
    raw = body(messages=[{"role": "user", "content": content}])
    assert invalid(raw).param == "messages[0].content"


def test_content_parts_must_be_objects() -> None:
    raw = body(messages=[{"role": "user", "content": ["hi"]}])
    assert invalid(raw).param == "messages[0].content"


@pytest.mark.parametrize("prompt", [..., None, 42, [], [1, "a"], [True, False], {"a": 1},
                                    [["a"]]])
def test_bad_prompt(prompt: Any) -> None:
    raw = orjson.dumps({"model": "m", **({} if prompt is ... else {"prompt": prompt})})
    assert invalid(raw, CallType.COMPLETION).param == "prompt"


@pytest.mark.parametrize("value", [..., None, 42, [], [1.5]])
def test_bad_input(value: Any) -> None:
    raw = orjson.dumps({"model": "m", **({} if value is ... else {"input": value})})
    assert invalid(raw, CallType.EMBEDDING).param == "input"


# what is read


def test_minimal_chat() -> None:
    req = parse(body(), CHAT)
    assert req.call_type is CHAT
    assert req.model == "m"
    assert req.stream is False
    assert req.usage_requested is False
    assert req.max_tokens is None and req.max_tokens_field is None
    assert req.n == 1
    assert req.text_bytes == 2
    assert req.messages == 1
    assert req.images == 0
    assert req.body == orjson.loads(body())


def test_null_stream_and_n_mean_defaults() -> None:
    req = parse(body(stream=None, n=None), CHAT)
    assert req.stream is False and req.n == 1


def test_text_bytes_are_utf8_bytes() -> None:
    text = "héllo wörld 日本語 🙂"
    assert len(text) != len(text.encode())
    req = parse(body(messages=[{"role": "user", "content": text}]), CHAT)
    assert req.text_bytes == 28   # 6 + 1 + 6 + 1 + 9 + 1 + 4; len(text) is 17


def test_text_bytes_sum_messages_parts_names_and_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [
        {"role": "system", "content": "sé"},                                  # 3
        {"role": "user", "name": "ann", "content": [                          # 3 (name)
            {"type": "text", "text": "ab"},                                    # 2
            {"type": "image_url", "image_url": {"url": "http://x/a.png"}},     # image
            {"type": "input_audio", "input_audio": {"data": "AAAA"}}]},       # json bytes
        {"role": "assistant", "content": None, "tool_calls": calls},          # json bytes
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},              # 2 + 2
    ]
    req = parse(body(messages=messages, tools=tools), CHAT)
    audio = len(orjson.dumps(messages[1]["content"][2]))
    expected = 3 + 3 + 2 + audio + len(orjson.dumps(calls)) + 2 + 2 + len(orjson.dumps(tools))
    assert req.text_bytes == expected
    assert req.messages == 4
    assert req.images == 1


def test_images_counted() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}},
             {"type": "input_image", "image_url": "http://x"},
             {"type": "image", "source": {}},
             {"type": "text", "text": "what are these?"}]
    req = parse(body(messages=[{"role": "user", "content": parts}]), CHAT)
    assert req.images == 3
    assert req.text_bytes == len(b"what are these?")       # the image data is not text


def test_response_format_counts() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert parse(body(response_format=fmt), CHAT).text_bytes == 2 + len(orjson.dumps(fmt))


def test_max_completion_tokens_preferred() -> None:
    req = parse(body(max_tokens=100, max_completion_tokens=50), CHAT)
    assert (req.max_tokens_field, req.max_tokens) == ("max_completion_tokens", 50)
    req = parse(body(max_tokens=100), CHAT)
    assert (req.max_tokens_field, req.max_tokens) == ("max_tokens", 100)
    req = parse(body(max_completion_tokens=None, max_tokens=7), CHAT)
    assert (req.max_tokens_field, req.max_tokens) == ("max_tokens", 7)
    req = parse(body(max_tokens=0), CHAT)
    assert (req.max_tokens_field, req.max_tokens) == ("max_tokens", 0)


def test_usage_requested() -> None:
    assert parse(body(stream=True, stream_options={"include_usage": True}), CHAT).usage_requested
    assert not parse(body(stream=True, stream_options={"include_usage": False}),
                     CHAT).usage_requested
    assert not parse(body(stream=True, stream_options={"include_usage": "yes"}),
                     CHAT).usage_requested
    assert not parse(body(stream=True, stream_options={}), CHAT).usage_requested
    assert not parse(body(stream=True, stream_options=None), CHAT).usage_requested
    assert parse(body(stream=True), CHAT).stream is True


def test_n_is_read() -> None:
    assert parse(body(n=3), CHAT).n == 3
    assert parse(body(n=128), CHAT).n == 128


def test_completion_prompt_forms() -> None:
    def prompt_bytes(prompt: Any) -> int:
        req = parse(orjson.dumps({"model": "m", "prompt": prompt}), CallType.COMPLETION)
        assert req.call_type is CallType.COMPLETION and req.messages == 1
        return req.text_bytes

    assert prompt_bytes("naïve") == 6
    assert prompt_bytes(["ab", "ç"]) == 4
    assert prompt_bytes([1, 2, 3]) == 3                 # token ids: one per token
    assert prompt_bytes([[1, 2], [3]]) == 3


def test_embedding_input_forms() -> None:
    req = parse(orjson.dumps({"model": "e", "input": ["ü", "x"]}), CallType.EMBEDDING)
    assert req.call_type is CallType.EMBEDDING
    assert (req.text_bytes, req.messages, req.images) == (3, 0, 0)


def test_unknown_fields_pass_through() -> None:
    req = parse(body(temperature=0.2, seed=1, extra_body={"top_k": 5}), CHAT)
    assert req.body["extra_body"] == {"top_k": 5}
    assert req.body["temperature"] == 0.2

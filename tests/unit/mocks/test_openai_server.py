"""Tests for the mock OpenAI-compatible upstream (faregate.mocks.openai_server)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from faregate.mocks.openai_server import MockUpstream, build_app


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mock")


def _events(text: str) -> list[Any]:
    """Parse an SSE body into JSON objects, with "[DONE]" kept as a string."""
    assert text.endswith("\n\n")
    out: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def _assert_error(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/json"
    err = resp.json()["error"]
    assert err["type"] == type_
    assert isinstance(err["message"], str) and err["message"]
    return err


CHAT = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "be brief"},  # 2 words
        {"role": "user", "content": [{"type": "text", "text": "hello there world"},
                                     {"type": "image_url", "image_url": {"url": "x"}}]},  # 3
        {"role": "assistant", "content": None},  # 0
    ],
}  # fmt: skip
CHAT_PROMPT = (2 + 4) + (3 + 4) + (0 + 4) + 3


@pytest.mark.asyncio
async def test_chat_non_streaming_shape_and_usage() -> None:
    async with _client(build_app()) as c:
        before = int(time.time())
        r = await c.post("/v1/chat/completions", json=CHAT)
        r2 = await c.post("/chat/completions", json={**CHAT, "max_tokens": 5})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"] == "chatcmpl-mock-1"
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-test"
    assert body["created"] >= before
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == " ".join(["mock"] * 16)
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": CHAT_PROMPT,
        "completion_tokens": 16,
        "total_tokens": CHAT_PROMPT + 16,
    }
    body2 = r2.json()
    assert body2["id"] == "chatcmpl-mock-2"  # the counter lives on the app
    assert body2["choices"][0]["message"]["content"] == "mock mock mock mock mock"
    assert body2["choices"][0]["finish_reason"] == "length"
    assert body2["usage"]["completion_tokens"] == 5


@pytest.mark.asyncio
async def test_chat_max_completion_tokens_wins_and_zero_is_valid() -> None:
    async with _client(build_app()) as c:
        r = await c.post(
            "/v1/chat/completions", json={**CHAT, "max_completion_tokens": 0, "max_tokens": 9}
        )
    body = r.json()
    assert body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0


async def _stream(c: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> list[Any]:
    r = await c.post(path, json={**payload, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    return _events(r.text)


@pytest.mark.asyncio
async def test_chat_streaming_matches_non_streaming() -> None:
    async with _client(build_app()) as c:
        plain = (await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})).json()
        events = await _stream(c, "/v1/chat/completions", {**CHAT, "max_tokens": 7})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert all(ch["model"] == "gpt-test" for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    assert all("usage" not in ch for ch in chunks)  # no include_usage: no usage field at all
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:-1]
    assert len(tokens) == 7
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks[:-1])
    content = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert content == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.asyncio
async def test_chat_streaming_include_usage() -> None:
    payload = {**CHAT, "stream_options": {"include_usage": True}}
    async with _client(build_app()) as c:
        events = await _stream(c, "/v1/chat/completions", payload)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": CHAT_PROMPT,
        "completion_tokens": 16,
        "total_tokens": CHAT_PROMPT + 16,
    }
    others = events[:-2]
    assert len(others) == 1 + 16 + 1
    assert all(ch["usage"] is None for ch in others)
    assert others[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.asyncio
async def test_completions_plain_and_streaming() -> None:
    payload = {"model": "m", "prompt": ["one two", "three"], "max_tokens": 3}
    async with _client(build_app()) as c:
        r = await c.post("/v1/completions", json=payload)
        events = await _stream(
            c, "/completions", {**payload, "stream_options": {"include_usage": True}}
        )
    body = r.json()
    assert body["id"].startswith("cmpl-mock-")
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "mock mock mock"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"] == body["usage"]
    chunks = events[:-2]
    assert all(ch["object"] == "text_completion" for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == "mock mock mock"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.asyncio
async def test_embeddings() -> None:
    async with _client(build_app()) as c:
        one = (await c.post("/v1/embeddings", json={"model": "e", "input": "a b c"})).json()
        many = (await c.post("/embeddings", json={"model": "e", "input": ["x", "a b c"]})).json()
        ids = (await c.post("/v1/embeddings", json={"model": "e", "input": [[1, 2], [3]]})).json()
        flat = (await c.post("/v1/embeddings", json={"model": "e", "input": [5, 6, 7]})).json()
    assert one["object"] == "list" and one["model"] == "e"
    assert one["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vec = one["data"][0]["embedding"]
    assert one["data"][0]["object"] == "embedding" and one["data"][0]["index"] == 0
    assert len(vec) == 8 and all(isinstance(v, float) and -1 <= v <= 1 for v in vec)
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert many["data"][1]["embedding"] == vec  # deterministic per input
    assert many["data"][0]["embedding"] != vec
    assert many["usage"]["prompt_tokens"] == 4
    assert ids["usage"]["prompt_tokens"] == 3 and len(ids["data"]) == 2
    assert flat["usage"]["prompt_tokens"] == 3 and len(flat["data"]) == 1


@pytest.mark.asyncio
async def test_models_and_health() -> None:
    async with _client(build_app()) as c:
        models = await c.get("/v1/models")
        models2 = await c.get("/models")
        health = await c.get("/health")
    assert models.json() == {
        "object": "list",
        "data": [
            {"id": "mock-model", "object": "model", "created": 0, "owned_by": "faregate-mock"}
        ],
    }
    assert models2.json() == models.json()
    assert health.status_code == 200 and health.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_not_found() -> None:
    async with _client(build_app()) as c:
        _assert_error(await c.get("/v1/nope"), 404, "invalid_request_error")
        _assert_error(await c.get("/v1/chat/completions"), 404, "invalid_request_error")
        _assert_error(await c.post("/health"), 404, "invalid_request_error")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": "hi"}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": []}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{"content": 5}]}'),
        ("/v1/chat/completions", b'{"model": 3, "messages": [{"content": "x"}]}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{}], "max_tokens": -1}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{}], "max_tokens": "5"}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{}], "max_tokens": 1.5}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{}], "max_tokens": true}'),
        ("/v1/chat/completions", b'{"model": "m", "messages": [{}], "stream": "yes"}'),
        ("/v1/completions", b'{"model": "m"}'),
        ("/v1/completions", b'{"model": "m", "prompt": 7}'),
        ("/v1/embeddings", b'{"model": "m", "input": []}'),
        ("/v1/embeddings", b'{"model": "m", "input": [1, "a"]}'),
        ("/v1/embeddings", b'{"input": "a"}'),
    ],
)
async def test_bad_requests(path: str, content: bytes) -> None:
    async with _client(build_app()) as c:
        r = await c.post(path, content=content, headers={"content-type": "application/json"})
    _assert_error(r, 400, "invalid_request_error")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "type_"),
    [(500, "server_error"), (503, "server_error"), (429, "rate_limit_error"),
     (400, "invalid_request_error"), (404, "invalid_request_error")],
)  # fmt: skip
async def test_mock_status_fault_hook(code: int, type_: str) -> None:
    async with _client(build_app()) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"x-mock-status": str(code)})
    err = _assert_error(r, code, type_)
    assert err["message"] == f"mock fault {code}"


@pytest.mark.asyncio
async def test_mock_status_invalid_value() -> None:
    async with _client(build_app()) as c:
        r = await c.get("/v1/models", headers={"x-mock-status": "teapot"})
    _assert_error(r, 400, "invalid_request_error")


@pytest.mark.asyncio
async def test_api_key_enforced() -> None:
    app = build_app(api_key="sk-up")
    async with _client(app) as c:
        missing = await c.post("/v1/chat/completions", json=CHAT)
        wrong = await c.get("/v1/models", headers={"authorization": "Bearer nope"})
        ok = await c.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-up"}
        )
        health = await c.get("/health")
    for r in (missing, wrong):
        assert _assert_error(r, 401, "invalid_request_error")["code"] == "invalid_api_key"
    assert ok.status_code == 200
    assert health.status_code == 200  # health checks never need the key


@pytest.mark.asyncio
async def test_latency_is_applied() -> None:
    async with _client(MockUpstream(latency_ms=50)) as c:
        start = time.perf_counter()
        r = await c.post("/v1/chat/completions", json=CHAT)
        elapsed = time.perf_counter() - start
    assert r.status_code == 200
    assert elapsed >= 0.045


@pytest.mark.asyncio
async def test_openai_sdk_parses_responses() -> None:
    httpx2 = pytest.importorskip("httpx2")  # openai>=3 talks through httpx2
    openai = pytest.importorskip("openai")
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=build_app(api_key="k")))
    async with openai.AsyncOpenAI(
        api_key="k", base_url="http://mock/v1", http_client=http_client, max_retries=0
    ) as client:
        chat = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = [ch async for ch in stream]
        emb = await client.embeddings.create(model="e", input="a b")  # base64 by default
        plain = await client.embeddings.create(model="e", input="a b", encoding_format="float")
    assert chat.choices[0].message.content == "mock mock"
    assert chat.usage is not None and chat.usage.prompt_tokens == 1 + 4 + 3
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == " ".join(["mock"] * 16)
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == 16
    assert emb.data[0].embedding == pytest.approx(plain.data[0].embedding, abs=1e-6)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]


@pytest.mark.parametrize("stream", [False, True])
async def test_forced_tool_choice_answers_a_tool_call(stream: bool) -> None:
    body = {**CHAT, "tools": TOOLS, "tool_choice": "required", "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}
    async with _client(build_app()) as client:
        resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    if stream:
        chunks = _events(resp.text)
        calls = [c for chunk in chunks[:-1] for choice in chunk["choices"]
                 for c in choice["delta"].get("tool_calls") or []]
        assert calls[0]["id"] == "call_mock_1"
        assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"mock"}'
        assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
        assert chunks[-2]["usage"]["prompt_tokens"] == CHAT_PROMPT
    else:
        choice = resp.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["tool_calls"] == [{"id": "call_mock_1", "type": "function",
                                                    "function": {"name": "get_weather",
                                                                 "arguments": '{"city":"mock"}'}}]


async def test_tool_choice_naming_an_unknown_function_is_a_400() -> None:
    body = {**CHAT, "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    async with _client(build_app()) as client:
        resp = await client.post("/v1/chat/completions", json=body)
    _assert_error(resp, 400, "invalid_request_error")

"""The official openai SDK against the gateway over real HTTP, and what each call records."""

from __future__ import annotations

import httpx
import openai
import pytest
from api.conftest import RunningGateway
from support import PRICE_IN, PRICE_OUT


def client(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    return gw.sdk(key)


def cost_nanos(prompt: int, completion: int) -> int:
    return round(prompt * PRICE_IN * 1e9) + round(completion * PRICE_OUT * 1e9)


async def ledger(gw: RunningGateway, key: str) -> list[dict]:
    await gw.app.ledger.flush()
    resp = await gw.admin("GET", "/spend/logs", params={"api_key": key})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_chat_completion_is_charged_from_upstream_usage(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1.0)
    reply = await client(gateway, key).chat.completions.create(
        model="qwen-local", messages=[{"role": "user", "content": "hello there"}], max_tokens=5)
    assert reply.choices[0].message.content == "mock mock mock mock mock"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (9, 5)
    rows = await ledger(gateway, key)
    assert len(rows) == 1
    assert rows[0]["spend_nanos"] == cost_nanos(9, 5)
    assert rows[0]["status"] == "success"
    info = (await gateway.admin("GET", "/key/info", params={"key": key})).json()["info"]
    assert info["spend"] == pytest.approx(cost_nanos(9, 5) / 1e9)


async def test_stream_without_usage_request_hides_the_usage_chunk(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1.0)
    stream = await client(gateway, key).chat.completions.create(
        model="qwen-local", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock mock mock mock"
    assert all(c.choices for c in chunks), "a usage-only chunk leaked to a client that did not ask"
    assert all(c.usage is None for c in chunks)
    rows = await ledger(gateway, key)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [(8, 4)]


async def test_stream_with_usage_request_gets_the_usage_chunk(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1.0)
    stream = await client(gateway, key).chat.completions.create(
        model="qwen-local", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    rows = await ledger(gateway, key)
    assert rows[0]["spend_nanos"] == cost_nanos(8, 3)


async def test_completions_and_embeddings(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1.0)
    sdk = client(gateway, key)
    text = await sdk.completions.create(model="qwen-local", prompt="one two three", max_tokens=2)
    assert text.choices[0].text == "mock mock"
    emb = await sdk.embeddings.create(model="qwen-local", input=["a b", "c"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    rows = sorted(await ledger(gateway, key), key=lambda r: r["call_type"])
    assert [(r["call_type"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        ("embedding", 3, 0), ("text_completion", 3, 2)]
    assert sum(r["spend_nanos"] for r in rows) == cost_nanos(3, 2) + cost_nanos(3, 0)


async def test_models_lists_only_what_the_key_may_use(gateway: RunningGateway) -> None:
    limited = await gateway.new_key()
    everything = await gateway.new_key(models=[])
    assert [m.id async for m in client(gateway, limited).models.list()] == ["qwen-local"]
    listed = sorted([m.id async for m in client(gateway, everything).models.list()])
    assert listed == sorted(gateway.app.settings.models())
    assert {"qwen-local", "other-model"} <= set(listed)


async def test_paths_without_v1_prefix_work(gateway: RunningGateway) -> None:
    key = await gateway.new_key()
    resp = await gateway.http.post("/chat/completions", headers={
        "Authorization": f"Bearer {key}"}, json={
        "model": "qwen-local", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"]


async def test_sdk_raises_typed_errors(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=0.0000001)
    with pytest.raises(openai.RateLimitError) as caught:
        await client(gateway, key).chat.completions.create(
            model="qwen-local", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert caught.value.body["type"] == "budget_exceeded"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        await client(gateway, "sk-not-a-real-key-000").chat.completions.create(
            model="qwen-local", messages=[{"role": "user", "content": "hi"}])


def counting_sdk(gw: RunningGateway, key: str, sent: list[str],
                 max_retries: int) -> openai.AsyncOpenAI:
    """The SDK with retries on, counting every HTTP request it sends (retries included)."""
    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    client = openai.AsyncOpenAI(api_key=key, base_url=gw.base_url + "/v1",
                                max_retries=max_retries,
                                http_client=httpx.AsyncClient(event_hooks={"request": [count]}))
    gw.clients.append(client)
    return client


async def test_a_budget_refusal_is_sent_once_on_every_openai_route(gateway: RunningGateway
                                                                   ) -> None:
    """A spent budget cannot pass on a retry: the 429 says `x-should-retry: false`, which the
    SDK honours before its rule of retrying every 429."""
    key = await gateway.new_key(max_budget=0.0000001)
    sent: list[str] = []
    sdk = counting_sdk(gateway, key, sent, max_retries=3)
    calls = {
        "/v1/chat/completions": lambda: sdk.chat.completions.create(
            model="qwen-local", messages=[{"role": "user", "content": "hi"}], max_tokens=4),
        "/v1/completions": lambda: sdk.completions.create(model="qwen-local", prompt="hi",
                                                          max_tokens=4),
        "/v1/embeddings": lambda: sdk.embeddings.create(model="qwen-local", input="hi"),
    }
    for path, call in calls.items():
        sent.clear()
        with pytest.raises(openai.RateLimitError) as refused:
            await call()
        assert refused.value.body["type"] == "budget_exceeded"  # type: ignore[index]
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert sent == [path], f"the SDK sent {path} {len(sent)} times"
    assert (await ledger(gateway, key)) == []


async def test_a_rate_limit_429_stays_retryable(gateway: RunningGateway) -> None:
    """A limit that clears in seconds keeps the SDK's retries: no x-should-retry on it."""
    key = await gateway.new_key(models=["qwen-local", "slow-model"], max_parallel_requests=1,
                                max_budget=1.0)
    holder = await client(gateway, key).chat.completions.create(
        model="slow-model", messages=[{"role": "user", "content": "hold the slot"}],
        max_tokens=500, stream=True)     # one event every 20 ms: the slot stays taken
    try:
        await anext(aiter(holder))
        sent: list[str] = []
        with pytest.raises(openai.RateLimitError) as refused:
            await counting_sdk(gateway, key, sent, max_retries=1).chat.completions.create(
                model="qwen-local", messages=[{"role": "user", "content": "hi"}],
                max_tokens=4)
        assert refused.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
        assert "x-should-retry" not in refused.value.response.headers
        assert sent == ["/v1/chat/completions"] * 2, "the SDK did not retry a rate limit"
    finally:
        await holder.close()

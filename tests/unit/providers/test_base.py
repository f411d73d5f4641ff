"""faregate.providers.base: the SSE framer every provider streams through, the per-deployment
cache of prepared headers, and the one pooled session the provider clients share."""

from __future__ import annotations

import dataclasses
import gc
import gzip
from collections.abc import AsyncIterator, Iterable

import orjson
import pytest
from aiohttp import web

from faregate.config import Deployment
from faregate.providers.anthropic import AnthropicClient
from faregate.providers.base import PerDeployment, pooled_session, sse_blocks
from faregate.providers.clients import ProviderClients
from faregate.providers.openai_compat import OpenAICompatible
from faregate.secret import Secret


def deployment(api_base: str = "http://up/v1", api_key: str | None = "k1",
               deployment_id: str = "m#0") -> Deployment:
    return Deployment(model_name="m", provider="openai", upstream_model="m", api_base=api_base,
                      api_key=Secret(api_key) if api_key else None, input_femtos=1,
                      output_femtos=1, max_output_tokens=10, prompt_overhead_tokens=0,
                      per_message_overhead_tokens=0, timeout_s=5, deployment_id=deployment_id)


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def framed(parts: Iterable[bytes], tail: bool) -> list[bytes]:
    return [block async for block in sse_blocks(_chunks(parts), tail=tail)]


# sse_blocks


async def test_a_block_holds_every_event_completed_by_one_read() -> None:
    parts = [b"data: 1\n\ndata: 2\n\nda", b"ta: 3\n", b"\n", b"data: 4\n\n"]
    assert await framed(parts, tail=True) == [b"data: 1\n\ndata: 2\n\n", b"data: 3\n\n",
                                              b"data: 4\n\n"]


async def test_crlf_line_ends_are_normalised() -> None:
    assert await framed([b"data: 1\r\n\r\ndata: 2\r\n", b"\r\n"], tail=False) == [
        b"data: 1\n\n", b"data: 2\n\n"]


async def test_the_tail_is_one_more_event_only_when_asked() -> None:
    parts = [b"data: 1\n\ndata: [DONE]"]
    assert await framed(parts, tail=True) == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    assert await framed(parts, tail=False) == [b"data: 1\n\n"]
    assert await framed([b"data: 1\n\n", b" \n"], tail=True) == [b"data: 1\n\n"]
    assert await framed([], tail=True) == []


# PerDeployment


def test_built_once_per_deployment_object() -> None:
    built: list[Deployment] = []

    def build(d: Deployment) -> str:
        built.append(d)
        return d.api_base

    cache = PerDeployment(build)
    d = deployment()
    assert cache(d) == cache(d) == "http://up/v1"
    assert built == [d]


def test_a_new_deployment_with_the_same_id_gets_its_own_credentials() -> None:
    cache = PerDeployment(lambda d: d.api_key.reveal() if d.api_key else None)
    old = deployment(api_key="old-key")
    assert cache(old) == "old-key"
    new = dataclasses.replace(old, api_key=Secret("new-key"), api_base="http://other/v1")
    assert cache(new) == "new-key"
    assert cache(old) == "old-key"          # each object its own, however they alternate


def test_an_entry_goes_with_its_deployment() -> None:
    cache = PerDeployment(lambda d: d.api_base)
    d, other = deployment(), deployment(deployment_id="n#0")
    cache(d)
    cache(other)
    assert len(cache) == 2
    del d
    gc.collect()
    assert len(cache) == 1
    # an older object that dies after a newer one took its id leaves the newer entry alone
    old = deployment(deployment_id="x#0")
    cache(old)
    new = dataclasses.replace(old, api_base="http://new/v1")
    assert cache(new) == "http://new/v1"
    del old
    gc.collect()
    assert len(cache) == 2 and cache(new) == "http://new/v1"


def test_a_reused_object_id_never_gets_a_freed_deployments_headers() -> None:
    """CPython gives a freed object's address to the next one: an id() key would hand a new
    deployment the old one's credentials."""
    client = OpenAICompatible()
    first = deployment(api_base="http://a/v1", api_key="key-a", deployment_id="a#0")
    assert client._prepared(first)[0]["Authorization"] == "Bearer key-a"
    del first               # one of these likely takes its address (not promised)
    later = [deployment(api_base="http://b/v1", api_key="key-b", deployment_id=f"b#{i}")
             for i in range(50)]
    for d in later:
        assert client._prepared(d)[0]["Authorization"] == "Bearer key-b"


# the pooled session


async def test_every_client_sends_through_the_one_session_closed_once() -> None:
    openai, anthropic = OpenAICompatible(), AnthropicClient()
    clients = ProviderClients({"openai": openai, "anthropic": anthropic})
    session = pooled_session()
    clients.open(session)
    assert openai._http is session and anthropic._http is session
    await clients.close()
    assert session.closed
    await clients.close()                   # a second close is a no-op


@pytest.fixture
async def gzip_upstream() -> AsyncIterator[str]:
    """An upstream that compresses its answers (as it may: aiohttp asks for gzip)."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("stream"):
            payload = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'
            kind = "text/event-stream"
        else:
            payload = orjson.dumps({"object": "chat.completion", "usage": {"total_tokens": 3}})
            kind = "application/json"
        return web.Response(body=gzip.compress(payload), content_type=kind,
                            headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]     # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_a_compressed_answer_is_read_decompressed(gzip_upstream: str) -> None:
    client = OpenAICompatible()
    async with pooled_session() as session:
        client.use(session)
        d = deployment(api_base=gzip_upstream)
        reply = await client.send(d, "/chat/completions", b"{}")
        assert reply.usage == {"total_tokens": 3}
        blocks = [b async for b in client.stream(d, "/chat/completions", b'{"stream":true}')]
    assert b"".join(blocks) == b'data: {"choices":[]}\n\ndata: [DONE]\n\n'

"""faregate.providers.http1, the lean HTTP/1.1 client, against real servers on 127.0.0.1: the
project's mock upstream (a uvicorn process) for the ordinary path, and raw asyncio servers
scripted byte by byte for what upstreams get wrong (closing mid-body, chunk extensions, slow or
missing heads, idle closes, stray bytes)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
import uvloop
import yaml
from support import mock_upstream_process

from faregate import config
from faregate.config import Deployment
from faregate.errors import ConfigError, UpstreamError
from faregate.providers.base import UpstreamSession, pooled_session
from faregate.providers.http1 import (
    ConnectFailed,
    Disconnected,
    Exchange,
    Headers,
    Http1Pool,
    Target,
)
from faregate.providers.openai_compat import OpenAICompatible
from faregate.secret import Secret

CHAT = b'{"model":"m","messages":[{"role":"user","content":"ping"}],"max_tokens":4}'
STREAM = CHAT[:-1] + b',"stream":true}'
OK_JSON = b'{"object":"chat.completion","usage":{"total_tokens":3}}'


def deployment(api_base: str, timeout_s: float = 5, stream_timeout_s: float | None = None
               ) -> Deployment:
    return Deployment(model_name="m", provider="openai", upstream_model="m", api_base=api_base,
                      api_key=Secret("k1"), input_femtos=1, output_femtos=1,
                      max_output_tokens=10, prompt_overhead_tokens=0,
                      per_message_overhead_tokens=0, timeout_s=timeout_s,
                      deployment_id="m#0", stream_timeout_s=stream_timeout_s)


def answer(body: bytes = OK_JSON, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


@dataclass
class Request:
    head: bytes
    body: bytes
    connection: int         # which accepted connection (0, 1, ...) it came on
    number: int             # its place on that connection (0, 1, ...)


Script = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawServer:
    """A TCP server whose every answer `script` writes by hand; False from the script closes
    the connection. It records each request, and each connection's end as the client left it."""

    script: Script
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    client_closed: list[int] = field(default_factory=list)  # connections the client ended
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection, self.connections = self.connections, self.connections + 1
        self.writers.append(writer)
        number = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_closed.append(connection)
                    return
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = Request(head, await reader.readexactly(length), connection, number)
                self.requests.append(request)
                number += 1
                if not await self.script(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_closed.append(connection)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[RawServer]:
    server = RawServer(script)
    tasks: set[asyncio.Task[None]] = set()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await server.serve(reader, writer)
        finally:
            tasks.discard(task)

    listening = await asyncio.start_server(accepted, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        for writer in server.writers:       # ends each connection's handler, which sees EOF
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        await listening.wait_closed()


async def answer_ok(request: Request, writer: asyncio.StreamWriter) -> bool:
    writer.write(answer())
    return True


@contextlib.asynccontextmanager
async def lean(max_idle: int = 128, keepalive_s: float = 30.0
               ) -> AsyncIterator[tuple[UpstreamSession, OpenAICompatible]]:
    """An UpstreamSession with its own lean pool, and a client that sends through it."""
    session = UpstreamSession(aiohttp.ClientSession(),
                              Http1Pool(max_idle=max_idle, keepalive_s=keepalive_s))
    client = OpenAICompatible()
    client.use(session)
    try:
        yield session, client
    finally:
        await session.close()


def pool_of(session: UpstreamSession) -> Http1Pool:
    assert session.lean is not None
    return session.lean


async def until(check: Callable[[], bool]) -> None:
    """Wait (bounded) for the server side to see what the client did."""
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


# the ordinary path, against the project's mock upstream


@pytest.fixture(scope="module")
def mock_base() -> Iterator[str]:
    with mock_upstream_process() as url:
        yield url


async def test_chat_and_stream_through_the_mock_on_one_kept_connection(mock_base: str) -> None:
    async with lean() as (session, client):
        d = deployment(mock_base)
        for _ in range(3):
            reply = await client.send(d, "/chat/completions", CHAT)
            assert orjson.loads(reply.body)["object"] == "chat.completion"
            assert isinstance(reply.usage, dict) and reply.usage["completion_tokens"] == 4
        blocks = [b async for b in client.stream(d, "/chat/completions", STREAM)]
        events = b"".join(blocks)
        assert events.endswith(b"data: [DONE]\n\n") and events.count(b"data: {") >= 5
        pool = pool_of(session)
        assert pool.connects == 1 and pool.idle("127.0.0.1", int(mock_base.split(":")[2][:-3]))


async def test_concurrent_requests_open_connections_and_keep_at_most_max_idle(
        mock_base: str) -> None:
    async with lean(max_idle=2) as (session, client):
        d = deployment(mock_base)
        replies = await asyncio.gather(*(client.send(d, "/chat/completions", CHAT)
                                         for _ in range(6)))
        assert all(r.usage for r in replies)
        pool = pool_of(session)
        assert pool.connects == 6
        await until(lambda: pool.open_connections == 2)     # 4 closed, 2 kept idle


# framing


async def test_a_chunked_body_with_extensions_streams_chunk_by_chunk() -> None:
    second = asyncio.Event()

    async def chunked(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     b"f;name=value\r\ndata: {\"a\":1}\n\n\r\n")
        await second.wait()     # the client must have the first event before this is sent
        writer.write(b'e;x="y"\r\ndata: [DONE]\n\n\r\n0\r\n\r\n')
        return True

    async with raw_server(chunked) as server, lean() as (session, client):
        blocks = client.stream(deployment(server.base), "/chat/completions", STREAM)
        assert await anext(blocks) == b'data: {"a":1}\n\n'
        second.set()
        assert [b async for b in blocks] == [b"data: [DONE]\n\n"]
        assert pool_of(session).idle("127.0.0.1", server.port) == 1     # read to the end


async def test_a_body_ended_by_closing_is_read_whole_and_the_connection_not_kept() -> None:
    async def until_close(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_JSON)
        return False

    async with raw_server(until_close) as server, lean() as (session, client):
        reply = await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert reply.body == OK_JSON
        await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert server.connections == 2 and pool_of(session).idle("127.0.0.1", server.port) == 0


async def test_a_head_and_body_in_many_small_reads_are_put_together() -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> bool:
        data = answer(extra=b"X-Long: " + b"v" * 300 + b"\r\n")
        for i in range(0, len(data), 7):
            writer.write(data[i:i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        return True

    async with raw_server(trickle) as server, lean() as (session, client):
        d = deployment(server.base, stream_timeout_s=5)
        assert (await client.send(d, "/chat/completions", CHAT)).body == OK_JSON
        assert pool_of(session).idle("127.0.0.1", server.port) == 1


async def test_an_interim_100_continue_is_skipped() -> None:
    async def continued(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer())
        return True

    async with raw_server(continued) as server, lean() as (_, client):
        reply = await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert reply.body == OK_JSON


async def test_headers_are_read_in_any_case() -> None:
    async def limited(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"error":{"message":"slow down"}}', "429 Too Many Requests",
                            b"RETRY-AFTER: 7\r\n"))
        return True

    async with raw_server(limited) as server, lean() as (session, client):
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert caught.value.status == 429 and caught.value.retry_after_s == 7
        assert caught.value.headers["retry-after"] == "7"
        # an error answer read to the end leaves its connection reusable
        assert pool_of(session).idle("127.0.0.1", server.port) == 1
    headers = Headers({"content-type": "x"})
    assert headers["Content-Type"] == headers.get("CONTENT-TYPE") == "x"
    assert "Content-type" in headers


async def test_what_is_sent() -> None:
    async with raw_server(answer_ok) as server, lean() as (_, client):
        await client.send(deployment(server.base), "/chat/completions", CHAT)
    head = server.requests[0].head
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in head
    assert b"\r\nAuthorization: Bearer k1\r\n" in head
    assert b"\r\nContent-Length: %d\r\n" % len(CHAT) in head
    assert b"accept-encoding" not in head.lower()       # so upstreams answer uncompressed
    assert server.requests[0].body == CHAT


# failures


async def test_closing_mid_body_is_an_error_never_a_short_success() -> None:
    async def cut(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer()[:-10])
        return False

    async with raw_server(cut) as server, lean() as (session, client):
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert caught.value.code == "upstream_disconnected" and caught.value.retryable
        assert pool_of(session).idle("127.0.0.1", server.port) == 0


async def test_closing_mid_stream_raises_after_what_arrived() -> None:
    async def cut(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"a\r\ndata: {}\n\n\r\n")
        await writer.drain()
        return False            # no last chunk

    async with raw_server(cut) as server, lean() as (_, client):
        got: list[bytes] = []
        with pytest.raises(UpstreamError) as caught:
            async for block in client.stream(deployment(server.base), "/chat/completions",
                                             STREAM):
                got.append(block)
        assert got == [b"data: {}\n\n"] and caught.value.code == "upstream_disconnected"


async def test_a_broken_answer_is_a_disconnect() -> None:
    async def garbage(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
        return True

    async with raw_server(garbage) as server, lean() as (_, client):
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert caught.value.code == "upstream_disconnected"


async def test_a_refused_connection_is_unreachable() -> None:
    async with raw_server(answer_ok) as server:
        base = server.base              # closed once the block ends: nothing listens there
    async with lean() as (_, client):
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(base), "/chat/completions", CHAT)
        assert caught.value.code == "upstream_unreachable"


async def test_a_slow_head_times_out_by_stream_timeout_and_the_connection_closes() -> None:
    async def never(request: Request, writer: asyncio.StreamWriter) -> bool:
        return True             # no answer; the server reads on, so it sees the client go

    async with raw_server(never) as server, lean() as (session, client):
        d = deployment(server.base, timeout_s=30, stream_timeout_s=0.2)
        with pytest.raises(UpstreamError) as caught:
            await anext(client.stream(d, "/chat/completions", STREAM))
        assert caught.value.status == 504 and caught.value.code == "upstream_timeout"
        await until(lambda: server.client_closed == [0])
        assert pool_of(session).open_connections == 0


async def test_timeout_bounds_a_whole_answer() -> None:
    async def dribble(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b" ")
            await writer.drain()        # raises once the client has gone
            await asyncio.sleep(0.05)
        return True

    async with raw_server(dribble) as server, lean() as (_, client):
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(server.base, timeout_s=0.3), "/chat/completions",
                              CHAT)
        assert caught.value.code == "upstream_timeout"


async def test_timeout_bounds_a_whole_stream_whose_events_keep_coming() -> None:
    """Each wait for the next event is short, the stream as a whole is not: the deadline of
    the first wait still holds at the later ones."""
    async def events(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            writer.write(b"f\r\ndata: {\"a\":1}\n\n\r\n")
            await writer.drain()        # raises once the client has gone
            await asyncio.sleep(0.02)
        return True

    async with raw_server(events) as server, lean() as (session, client):
        blocks = []
        with pytest.raises(UpstreamError) as caught:
            async for block in client.stream(deployment(server.base, timeout_s=0.3),
                                             "/chat/completions", STREAM):
                blocks.append(block)
        assert caught.value.code == "upstream_timeout" and len(blocks) > 1
        await until(lambda: pool_of(session).open_connections == 0)


async def test_a_kept_connection_does_not_keep_the_last_answers_deadline() -> None:
    async def slow_second(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            await asyncio.sleep(0.4)    # past the first request's whole timeout
        writer.write(answer())
        return True

    async with raw_server(slow_second) as server, lean() as (_, client):
        await client.send(deployment(server.base, timeout_s=0.2), "/chat/completions", CHAT)
        reply = await client.send(deployment(server.base, timeout_s=30), "/chat/completions",
                                  CHAT)
        assert reply.body == OK_JSON and server.connections == 1


async def test_an_unknown_content_encoding_is_refused() -> None:
    async def brotli(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"xx", extra=b"Content-Encoding: br\r\n"))
        return True

    async with raw_server(brotli) as server, lean() as (session, client):
        with pytest.raises(UpstreamError):
            await client.send(deployment(server.base), "/chat/completions", CHAT)
        await until(lambda: server.client_closed == [0])
        assert pool_of(session).open_connections == 0


# the pool's rules


async def test_a_cancelled_stream_closes_its_connection() -> None:
    async def endless(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"a\r\ndata: {}\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with raw_server(endless) as server, lean() as (session, client):
        blocks = client.stream(deployment(server.base), "/chat/completions", STREAM)
        assert (await anext(blocks)).startswith(b"data: {}")
        await blocks.aclose()                   # the caller went away
        await until(lambda: server.client_closed == [0])
        assert pool_of(session).idle("127.0.0.1", server.port) == 0


async def test_a_read_cancelled_while_waiting_closes_its_connection() -> None:
    async def never(request: Request, writer: asyncio.StreamWriter) -> bool:
        return True             # no answer; the server reads on, so it sees the client go

    async with raw_server(never) as server, lean() as (session, client):
        task = asyncio.create_task(client.send(deployment(server.base), "/chat/completions",
                                               CHAT))
        await until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.client_closed == [0])
        assert pool_of(session).open_connections == 0


async def test_a_pooled_connection_closed_while_idle_is_retried_once_on_a_new_one() -> None:
    async def close_the_second(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            return False        # as if its keep-alive ran out as the request came
        writer.write(answer())
        return True

    async with raw_server(close_the_second) as server, lean() as (session, client):
        d = deployment(server.base)
        await client.send(d, "/chat/completions", CHAT)
        reply = await client.send(d, "/chat/completions", CHAT)
        assert reply.body == OK_JSON
        assert server.connections == 2 and pool_of(session).connects == 2
        assert [(r.connection, r.number) for r in server.requests] == [(0, 0), (0, 1), (1, 0)]


async def test_a_new_connection_that_closes_is_not_retried() -> None:
    async def close(request: Request, writer: asyncio.StreamWriter) -> bool:
        return False

    async with raw_server(close) as server, lean() as (_, client):
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert caught.value.code == "upstream_disconnected" and len(server.requests) == 1


async def test_a_pooled_connection_that_answered_a_byte_is_not_retried() -> None:
    async def half_the_second(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number == 1:
            writer.write(b"HTTP/1.1 200 OK\r\n")
            await writer.drain()
            return False
        writer.write(answer())
        return True

    async with raw_server(half_the_second) as server, lean() as (_, client):
        d = deployment(server.base)
        await client.send(d, "/chat/completions", CHAT)
        with pytest.raises(UpstreamError) as caught:
            await client.send(d, "/chat/completions", CHAT)
        assert caught.value.code == "upstream_disconnected" and len(server.requests) == 2


@pytest.mark.parametrize("extra", [b"HTTP/1.1 200 OK\r\n", b"x",
                                   answer(b"{}", "500 Internal Server Error")])
async def test_bytes_after_an_answer_spoil_its_connection_not_the_answer(extra: bytes) -> None:
    async def more(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer() + extra)
        return True

    async with raw_server(more) as server, lean() as (session, client):
        d = deployment(server.base)
        assert (await client.send(d, "/chat/completions", CHAT)).body == OK_JSON
        assert (await client.send(d, "/chat/completions", CHAT)).body == OK_JSON
        assert server.connections == 2 and pool_of(session).connects == 2


async def test_connection_close_is_honoured() -> None:
    async def closing(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(extra=b"Connection: close\r\n"))
        return True

    async with raw_server(closing) as server, lean() as (session, client):
        await client.send(deployment(server.base), "/chat/completions", CHAT)
        await until(lambda: server.client_closed == [0])
        assert pool_of(session).open_connections == 0


@pytest.mark.parametrize(("dns_ttl_s", "lookups"), [(60.0, 1), (0.0, 3)])
async def test_a_name_is_looked_up_once_per_ttl(dns_ttl_s: float, lookups: int) -> None:
    async def answer_and_close(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(extra=b"Connection: close\r\n"))
        return True

    async with raw_server(answer_and_close) as server:
        session = UpstreamSession(aiohttp.ClientSession(), Http1Pool(dns_ttl_s=dns_ttl_s))
        client = OpenAICompatible()
        client.use(session)
        async with session:
            # localhost may name ::1 first, where nothing listens: the next address is tried
            d = deployment(f"http://localhost:{server.port}/v1")
            for _ in range(3):
                assert (await client.send(d, "/chat/completions", CHAT)).body == OK_JSON
            assert pool_of(session).connects == 3 and pool_of(session).lookups == lookups


async def test_idle_connections_close_after_keepalive() -> None:
    async with raw_server(answer_ok) as server, lean(keepalive_s=0.1) as (session, client):
        await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert pool_of(session).idle("127.0.0.1", server.port) == 1
        await until(lambda: server.client_closed == [0])
        assert pool_of(session).open_connections == 0


async def test_a_closed_pool_refuses() -> None:
    pool = Http1Pool()
    await pool.close()
    exchange: Exchange = pool.post(Target("127.0.0.1", 9, b"POST / HTTP/1.1\r\n"),
                                   b"\r\n", b"", 1, None, None)
    with pytest.raises(ConnectFailed):
        async with exchange:
            pass


async def test_the_pool_on_its_own_raises_disconnected_for_a_cut_body() -> None:
    async def cut(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer()[:-10])
        return False

    async with raw_server(cut) as server:
        pool = Http1Pool()
        target = Target("127.0.0.1", server.port,
                        b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        head = target.head + b"Content-Length: 0\r\n\r\n"
        async with pool.post(target, head, b"", 5, None, None) as answered:
            assert answered.status == 200 and answered.headers["content-length"]
            with pytest.raises(Disconnected):
                await answered.read()
        await pool.close()
        assert server.requests[0].head.startswith(b"POST /v1 HTTP/1.1\r\n")


# which client carries a URL


@pytest.mark.parametrize(("url", "lean_client"), [
    ("http://127.0.0.1:8000/v1/chat/completions", True),
    ("http://vllm.svc/v1/chat/completions", True),
    ("https://api.openai.com/v1/chat/completions", False),
    ("http://user:pw@vllm.svc/v1/chat/completions", False),
    ("http://vllm.svc/v1/ch\u00e4t", False),
])
async def test_plain_http_goes_lean_and_the_rest_through_aiohttp(url: str,
                                                                 lean_client: bool) -> None:
    async with pooled_session() as session, pooled_session(lean=False) as plain:
        timeout = aiohttp.ClientTimeout(total=1)
        request = session.post(url, data=b"", headers={}, timeout=timeout)
        assert isinstance(request, Exchange) is lean_client
        if not lean_client:         # aiohttp's request, never entered: close its coroutine
            request.close()         # type: ignore[attr-defined]
        other = plain.post(url, data=b"", headers={}, timeout=timeout)
        assert not isinstance(other, Exchange)
        other.close()               # type: ignore[attr-defined]


async def test_a_line_break_in_a_header_is_refused() -> None:
    async with pooled_session() as session:
        with pytest.raises(ValueError):
            session.post("http://127.0.0.1:9/v1", data=b"", headers={"x": "a\r\nb: c"},
                         timeout=aiohttp.ClientTimeout(total=1))


# the switch back to aiohttp


async def test_the_aiohttp_switch_serves_the_same(mock_base: str) -> None:
    async def cut(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer()[:-10])
        return False

    client = OpenAICompatible()
    async with pooled_session(lean=False) as session, raw_server(cut) as server:
        client.use(session)
        d = deployment(mock_base)
        reply = await client.send(d, "/chat/completions", CHAT)
        assert isinstance(reply.usage, dict) and reply.usage["completion_tokens"] == 4
        events = b"".join([b async for b in client.stream(d, "/chat/completions", STREAM)])
        assert events.endswith(b"data: [DONE]\n\n")
        with pytest.raises(UpstreamError) as caught:
            await client.send(deployment(server.base), "/chat/completions", CHAT)
        assert caught.value.code == "upstream_disconnected"


@pytest.mark.parametrize(("environ", "general", "chosen"), [
    ({}, {}, "http1"),
    ({}, {"upstream_http_client": "aiohttp"}, "aiohttp"),
    ({"FAREGATE_UPSTREAM_HTTP_CLIENT": "aiohttp"}, {"upstream_http_client": "http1"}, "aiohttp"),
])
def test_the_switch_is_read_from_config_and_environment(
        tmp_path: Path, environ: dict[str, str], general: dict[str, str], chosen: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/m", "api_base": "http://127.0.0.1:9/v1", "input_cost_per_token": 0,
        "output_cost_per_token": 0}}], "general_settings": general}))
    env = {"FAREGATE_MASTER_KEY": "sk-" + "0" * 40, "FAREGATE_DATA_DIR": str(tmp_path),
           **environ}
    assert config.load(env, path).upstream_http_client == chosen
    with pytest.raises(ConfigError, match="FAREGATE_UPSTREAM_HTTP_CLIENT"):
        config.load({**env, "FAREGATE_UPSTREAM_HTTP_CLIENT": "httpx"}, path)


# the same on uvloop, which `faregate serve` runs on (its transports are not asyncio's classes)


UVLOOP_CASES = [f for name, f in list(globals().items()) if name.startswith("test_")
                and inspect.iscoroutinefunction(f) and not inspect.signature(f).parameters]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(case())      # type: ignore[arg-type]


def test_on_uvloop_through_the_mock(mock_base: str) -> None:
    uvloop.run(test_chat_and_stream_through_the_mock_on_one_kept_connection(mock_base))

"""A lean HTTP/1.1 client for plain-http upstreams (in-cluster vLLM, an inference gateway).

aiohttp's client cost 87-150 µs of CPU per request in the gateway (docs/performance.md), most
of it generality the gateway never uses. This client does one thing: POST a body of bytes to
`http://host:port/path` over a keep-alive connection and hand back the answer, whole or as it
arrives. It is built on asyncio's protocols and httptools (llhttp, the parser uvicorn uses).
TLS, proxies and anything unusual stay with aiohttp (base.UpstreamSession routes them).

The rules it keeps:
- a pool per (host, port): idle connections are reused newest first, at most `max_idle` are
  kept per host, and one idle for `keepalive_s` is closed; the number in use is not bounded
  (as the aiohttp pool it replaces, `limit=0`); a host's addresses are looked up at most once
  per `dns_ttl_s` (60 s, as aiohttp's `ttl_dns_cache`), and tried in order;
- a connection goes back to the pool only after its answer was read to the end and the
  upstream allowed keep-alive; every other way out (an error, a timeout, a cancelled or
  abandoned read, an answer framed by closing the connection) closes it;
- bodies framed by Content-Length, chunked (extensions ignored) or the connection's close;
  gzip and deflate are decoded although no Accept-Encoding is sent (an upstream that
  compresses anyway is read as aiohttp read it);
- timeouts as aiohttp's ClientTimeout applies them: `total` bounds the whole exchange
  (connecting, sending, the head and the body), `sock_read` each wait for more bytes (the
  first byte of the answer included), `sock_connect`/`connect` the connect;
- a pooled connection the upstream closed while it was idle: when it ends (EOF or reset)
  before a single byte of the answer, the request is sent once more on a new connection. Only
  a reused connection, only its first attempt: a new connection that fails the same way is an
  error.

Failures: `ConnectFailed` (nothing reached the upstream), `Disconnected` (the upstream closed
the connection or broke HTTP mid-answer; never a silent truncation), builtin `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import math
import socket
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools

HIGH_WATER = 256 * 1024     # unread answer bytes past which the socket stops being read


class Http1Error(Exception):
    """The lean client's failures (timeouts are builtin TimeoutError)."""


class ConnectFailed(Http1Error):
    """No connection could be made (refused, no route, name not resolved)."""


class Disconnected(Http1Error):
    """The upstream closed the connection, or broke HTTP, before its answer ended."""


class Headers(dict[str, str]):
    """An answer's headers, names lower-cased; `get`, `[]` and `in` take any case. A header
    sent more than once keeps its values joined with ", "."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's requests go: the pool key and the request line and Host header."""

    host: str
    port: int
    head: bytes         # b"POST /path HTTP/1.1\r\nHost: host:port\r\n"


class _Connection(asyncio.Protocol):
    """One keep-alive connection: its parser (reused for every answer on it) and the state of
    the answer being read."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 lost: Callable[[_Connection], None]) -> None:
        self._loop = loop
        self._lost = lost
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._active = False
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.headers = Headers()
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.received = False       # any byte of the answer
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: Http1Error | None = None
        self._interim = False
        self._until_eof = False
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have asyncio.Transport's methods without being its subclass.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self._active or self.complete:
            # Bytes nobody asked for: the next answer on this connection could not be told
            # from them.
            self.keep_alive = False
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.error = Disconnected(f"the upstream broke HTTP/1.1: {exc}")
            self.close()
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False        # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._active and not self.complete and self.error is None:
            if self.head_done and self._until_eof:
                self.complete = True        # a body framed by the connection's close
            else:
                what = "its answer's body" if self.head_done else "an answer"
                self.error = Disconnected(f"the upstream closed the connection before "
                                          f"{what} ended" + (f" ({exc})" if exc else ""))
        self.keep_alive = False
        self._wake()
        self._lost(self)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:       # a second answer to one request: never reuse this connection
            self.keep_alive = False

    # Past the answer's end (`complete`), a second answer is ignored: it spoils the connection
    # (above), never the answer already read.

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = dict.get(self.headers, key)
        dict.__setitem__(self.headers, key, text if old is None else f"{old}, {text}")

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self._parser.get_status_code()
        if status < 200:        # 100 Continue and the like: the answer is still to come
            self._interim = True
            self.headers = Headers()
            return
        self.status = status
        self.head_done = True
        headers = self.headers
        self._until_eof = "content-length" not in headers and "chunked" not in \
            dict.get(headers, "transfer-encoding", "").lower() and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self.complete:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive() and not self._until_eof

    # the exchange

    def send(self, head: bytes, body: bytes) -> None:
        """Start a request: write its head and body."""
        self._begin()
        self._active = True
        transport = self.transport
        if transport is None or transport.is_closing():
            self.error = Disconnected("the upstream had closed the connection")
            return
        try:
            if len(body) < 65536:
                transport.write(head + body)        # one send for the common small body
            else:
                transport.write(head)
                transport.write(body)
        except (OSError, RuntimeError) as exc:
            self.error = Disconnected(f"the request could not be sent: {exc}")

    def take(self) -> bytes:
        """The answer's bytes received so far (and reading resumed if it had paused)."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait(self, when: float) -> None:
        """Until the parser has more to show (or the connection ends); TimeoutError at `when`
        (the loop's clock). Waits with the same `when` (a stream's under a fixed deadline)
        share one timer, armed at the first and cancelled when the exchange ends."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        if when != self._timer_at or self._timer is None:
            self._disarm()
            if when < math.inf:
                self._timer = self._loop.call_at(when, self._expire)
                self._timer_at = when
        try:
            await waiter
        finally:
            self._waiter = None

    def _expire(self) -> None:
        # Between waits, nobody is failed here: the next wait re-arms at the passed `when`
        # and fails on the loop's next turn.
        self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and self.error is None and not self.closed

    def done(self) -> None:
        """The exchange is over: the connection idles in the pool (the caller's decision)."""
        self._active = False
        self.chunks = []
        self._disarm()

    def close(self) -> None:
        self._active = False
        self._disarm()
        if self.transport is not None and not self.closed:
            self.transport.close()


class Http1Pool:
    """Keep-alive connections per (host, port); see the module's docstring for the rules."""

    def __init__(self, *, max_idle: int = 128, keepalive_s: float = 30.0,
                 dns_ttl_s: float = 60.0) -> None:
        self.max_idle = max_idle
        self.keepalive_s = keepalive_s
        self.dns_ttl_s = dns_ttl_s
        self._resolved: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self.lookups = 0            # name lookups made, for tests and the curious
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False
        self.connects = 0           # connections made, for tests and the curious

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def idle(self, host: str, port: int) -> int:
        return len(self._idle.get((host, port), ()))

    def post(self, target: Target, head: bytes, body: bytes, total: float | None,
             sock_read: float | None, connect: float | None) -> Exchange:
        """Send `head` (the request line and headers, ended by a blank line) and `body` to
        `target`; use as `async with`."""
        return Exchange(self, target, head, body, total, sock_read, connect)

    def _acquire(self, target: Target, now: float) -> _Connection | None:
        idle = self._idle.get((target.host, target.port))
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self.keepalive_s:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, target: Target, when: float) -> _Connection:
        if self.closed:
            raise ConnectFailed("the client is closed")
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, self._forget)
        try:
            async with asyncio.timeout_at(when if when < math.inf else None):
                failure: OSError | None = None
                for address in await self._addresses(loop, target):
                    try:
                        await loop.create_connection(lambda: conn, address, target.port)
                        break
                    except OSError as exc:
                        failure = exc
                else:
                    self._resolved.pop((target.host, target.port), None)
                    raise failure or OSError(f"{target.host} has no address")
        except OSError as exc:
            conn.close()        # the deadline may pass after the connect: never leak its socket
            raise ConnectFailed(f"cannot connect to {target.host}:{target.port}: {exc}") \
                from exc
        except BaseException:
            conn.close()        # cancelled (the caller left) after the connect, likewise
            raise
        self._open.add(conn)
        self.connects += 1
        return conn

    async def _addresses(self, loop: asyncio.AbstractEventLoop, target: Target) -> list[str]:
        """`target.host`'s addresses, resolved at most once per `dns_ttl_s` (as aiohttp's
        ttl_dns_cache): a burst of new connections, or new ones after the upstream closed the
        idle ones, costs no lookup each."""
        key = (target.host, target.port)
        cached = self._resolved.get(key)
        now = loop.time()
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self.lookups += 1
        if len(self._resolved) >= 1024:
            self._resolved.clear()
        self._resolved[key] = (now + self.dns_ttl_s, addresses)
        return addresses

    def _release(self, conn: _Connection, target: Target) -> None:
        if not conn.reusable() or self.closed:
            conn.close()
            return
        idle = self._idle.setdefault((target.host, target.port), [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.done()
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self.keepalive_s, self._expire_idle)

    def _expire_idle(self) -> None:
        """Close connections idle for keepalive_s; look again while any stay idle."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for idle in self._idle.values():
            for conn in [c for c in idle if now - c.idle_since >= self.keepalive_s]:
                idle.remove(conn)
                conn.close()
        if any(self._idle.values()) and not self.closed:
            self._sweep = loop.call_later(self.keepalive_s / 2, self._expire_idle)

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        for idle in self._idle.values():
            if conn in idle:
                idle.remove(conn)

    async def close(self) -> None:
        """Close every connection, idle or in use; requests after this fail."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)      # let the transports finish closing


class Exchange:
    """One request and its answer: `async with pool.post(...) as answer:` sends the request
    and reads the head; `answer.read()` the whole body, `answer.content.iter_any()` the body
    as it arrives. Leaving the block returns the connection to the pool if the answer was read
    to the end, and closes it otherwise."""

    def __init__(self, pool: Http1Pool, target: Target, head: bytes, body: bytes,
                 total: float | None, sock_read: float | None, connect: float | None) -> None:
        self._pool = pool
        self._target = target
        self._head_bytes = head
        self._body = body
        self._total = total
        self._sock_read = sock_read
        self._connect = connect
        self._conn: _Connection | None = None
        self._deadline = math.inf
        self._decoder: Any = None
        self.status = 0                 # the answer's, once `async with` has entered
        self.headers = Headers()

    @property
    def content(self) -> Exchange:
        """aiohttp's spelling: `answer.content.iter_any()`."""
        return self

    async def __aenter__(self) -> Exchange:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._total is not None:
            self._deadline = now + self._total
        pool, target = self._pool, self._target
        conn = pool._acquire(target, now)
        reused = conn is not None
        if conn is None:
            conn = await pool._connect(target, self._connect_by(now))
        self._conn = conn
        try:
            conn.send(self._head_bytes, self._body)
            try:
                await self._head(conn)
            except Disconnected:
                # A pooled connection the upstream closed while it idled: not one byte of an
                # answer came, so nothing of the request was taken up. Once, on a new one.
                if not reused or conn.received:
                    raise
                conn.close()
                conn = self._conn = None
                conn = await pool._connect(target, self._connect_by(loop.time()))
                self._conn = conn
                conn.send(self._head_bytes, self._body)
                await self._head(conn)
            self.status, self.headers = conn.status, conn.headers
            self._decoder = _decoder(conn.headers.get("content-encoding"))
        except BaseException:
            if self._conn is not None:
                self._conn.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn, self._target)

    def _connect_by(self, now: float) -> float:
        if self._connect is None:
            return self._deadline
        return min(self._deadline, now + self._connect)

    def _read_by(self) -> float:
        if self._sock_read is None:
            return self._deadline
        return min(self._deadline, asyncio.get_running_loop().time() + self._sock_read)

    async def _head(self, conn: _Connection) -> None:
        while not conn.head_done:
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_by())

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        assert conn is not None
        while not conn.complete:
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_by())
        return self._decoded(conn.take(), final=True)

    def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything received by each wake-up, in one piece. (An
        iterator object, not an async generator: one left unfinished costs no finalizer
        task.)"""
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        assert conn is not None
        while True:
            if conn.chunks:
                data = self._decoded(conn.take(), final=False)
                if data:
                    return data
                continue
            if conn.complete:
                if self._decoder is not None:
                    tail = self._decoded(b"", final=True)
                    self._decoder = None
                    if tail:
                        return tail
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._read_by())

    def _decoded(self, data: bytes, final: bool) -> bytes:
        decoder = self._decoder
        if decoder is None:
            return data
        try:
            out: bytes = decoder.decompress(data)
            if final:
                out += decoder.flush()
        except zlib.error as exc:
            raise Disconnected(f"the upstream's compressed answer is corrupt: {exc}") from None
        return out


def _decoder(encoding: str | None) -> Any:
    """A decompressor for the answer's Content-Encoding (None: sent as is)."""
    if encoding is None or encoding.lower() in ("", "identity"):
        return None
    encoding = encoding.lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)     # zlib or gzip header, detected
    raise Disconnected(f"the upstream answered with Content-Encoding '{encoding}', which the "
                       "gateway does not ask for and cannot read")

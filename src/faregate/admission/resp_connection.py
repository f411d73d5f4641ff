"""One connection to Redis for the shared admission's pipelines: an asyncio protocol whose
replies hiredis (the C parser redis-py itself uses) reads as they arrive.

redis-py's asyncio connection costs ~80 µs of CPU per round trip (its pool's lock, a timeout
context per read, its stream reader); this costs ~11 (one `transport.write`, one future, the
replies parsed in C), measured on the same Redis by a loop of one-call pipelines. Admission
sends a pipeline per request at low load, so that difference was most of Redis mode's cost
at c=1.

Several callers may pipeline on the connection at once: Redis answers in order, so each
caller's replies are the next ones after those of the callers before it. A caller that is
not answered within the call timeout fails with redis-py's TimeoutError and the connection
is dropped (a late reply would be read as the next caller's); every caller waiting on it
fails the same way. A closed connection fails its callers with ConnectionError.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(slots=True)
class _Waiter:
    expected: int
    answer: asyncio.Future[list[Any]]
    deadline: float
    replies: list[Any] = field(default_factory=list)


def _packed(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


class RespConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @classmethod
    async def open(cls, address: Address, connect_timeout_s: float,
                   call_timeout_s: float) -> RespConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, conn = await loop.create_connection(cls, address.host, address.port)
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to server") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to {address.host}:{address.port}: "
                                       f"{exc}") from None
        hello: list[bytes] = []
        if address.password is not None:
            hello.append(_packed(b"AUTH", address.username.encode(), address.password.encode())
                         if address.username else _packed(b"AUTH", address.password.encode()))
        if address.db:
            hello.append(_packed(b"SELECT", b"%d" % address.db))
        if hello:
            try:
                replies = await conn.exchange(hello, call_timeout_s)
            except BaseException:
                conn.close()
                raise
            for reply in replies:
                if isinstance(reply, Exception):
                    conn.close()
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")
        return conn

    async def exchange(self, calls: list[bytes], timeout_s: float) -> list[Any]:
        """Send the calls; their replies in order (an error reply as its ResponseError)."""
        if self.closed or self._transport is None:
            raise RedisConnectionError("Connection closed.")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Any]] = loop.create_future()
        waiter = _Waiter(len(calls), answer, loop.time() + timeout_s)
        self._waiting.append(waiter)
        self._transport.write(b"".join(calls))
        if self._timer is None:
            self._timer = loop.call_at(waiter.deadline, self._expired)
        return await answer

    def close(self) -> None:
        self._fail(RedisConnectionError("Connection closed."))

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)   # uvloop's: not asyncio's class

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"Protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self._waiting:                 # a reply nobody asked for: out of step
                self._fail(RedisConnectionError("Redis sent a reply nobody waited for"))
                return
            if isinstance(reply, hiredis.ReplyError):    # as redis-py's: NOSCRIPT -> NoScriptError
                reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            head = self._waiting[0]
            head.replies.append(reply)
            if len(head.replies) == head.expected:
                self._waiting.popleft()
                if not head.answer.done():        # its caller may have been cancelled
                    head.answer.set_result(head.replies)
                self._watch_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError("Connection closed by server."))

    # --- internals

    def _watch_next(self) -> None:
        # One timer, on the oldest unanswered call's deadline (later calls' come after it).
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_at(self._waiting[0].deadline,
                                                             self._expired)

    def _expired(self) -> None:
        self._timer = None
        self._fail(RedisTimeoutError("Timeout reading from Redis"))

    def _fail(self, exc: RedisError) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.answer.done():
                waiter.answer.set_exception(type(exc)(*exc.args))
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

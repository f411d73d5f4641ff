"""The admission's own Redis connection (admission/resp_connection.py, through
redis_wire.Pipeline) against a private real redis-server: answers in order for concurrent
callers, error replies in place, a hang fails every waiting caller and the next call gets a
fresh connection, a connection Redis closed is replaced, AUTH and SELECT from the URL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from support import free_port, stop, wait_for_port

from faregate.admission.redis_wire import Pipeline, bulk


def call(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


def pipeline(url: str, timeout_s: float = 2.0) -> tuple[aioredis.Redis, Pipeline]:
    client = aioredis.Redis.from_url(url)
    return client, Pipeline(client.connection_pool, timeout_s, 0.5)


async def test_concurrent_callers_each_get_their_own_answers_in_order(private_redis) -> None:
    client, pipe = pipeline(private_redis[0])
    try:
        async def echo(i: int) -> list[object]:
            return await pipe.run([call(b"ECHO", b"a%d" % i), call(b"ECHO", b"b%d" % i)])

        answers = await asyncio.gather(*(echo(i) for i in range(200)))
        assert answers == [[b"a%d" % i, b"b%d" % i] for i in range(200)]
        assert await client.client_list() and len(await client.client_list()) == 2  # one own
    finally:
        await pipe.close()
        await client.aclose()


async def test_an_error_reply_is_that_calls_answer_and_the_rest_follow(private_redis) -> None:
    client, pipe = pipeline(private_redis[0])
    try:
        answers = await pipe.run([call(b"SET", b"k", b"v"), call(b"INCR", b"k"),
                                  call(b"EVALSHA", b"0" * 40, b"0"), call(b"GET", b"k")])
        assert answers[0] == b"OK"
        assert isinstance(answers[1], ResponseError)
        assert isinstance(answers[2], NoScriptError)        # as redis-py maps it
        assert answers[3] == b"v"
    finally:
        await pipe.close()
        await client.aclose()


async def test_a_hang_fails_every_waiting_caller_and_the_next_call_reconnects(
        private_redis) -> None:
    url, proc = private_redis
    client, pipe = pipeline(url, timeout_s=0.5)
    try:
        assert await pipe.run([call(b"PING")]) == [b"PONG"]
        os.kill(proc.pid, signal.SIGSTOP)
        outcomes = await asyncio.gather(*(pipe.run([call(b"PING")]) for _ in range(5)),
                                        return_exceptions=True)
        assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
        os.kill(proc.pid, signal.SIGCONT)
        # The PINGs sent before the hang are answered on the dropped connection, never read
        # as this call's.
        assert await pipe.run([call(b"ECHO", b"after")]) == [b"after"]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await pipe.close()
        await client.aclose()


async def test_a_connection_redis_closed_is_replaced_once(private_redis) -> None:
    client, pipe = pipeline(private_redis[0])
    try:
        assert await pipe.run([call(b"CLIENT", b"SETNAME", b"admission")]) == [b"OK"]
        assert await client.client_kill_filter(_type="normal", skipme=True) >= 1
        assert await pipe.run([call(b"ECHO", b"again")]) == [b"again"]
    finally:
        await pipe.close()
        await client.aclose()


async def test_redis_down_is_a_connection_error() -> None:
    port = free_port()                       # nothing listens there
    client, pipe = pipeline(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(RedisConnectionError):
            await pipe.run([call(b"PING")])
    finally:
        await pipe.close()
        await client.aclose()


@pytest.fixture
def redis_with_password() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--requirepass", "s3cret"],
                            stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        stop(proc)


async def test_auth_and_database_come_from_the_url(redis_with_password: int) -> None:
    port = redis_with_password
    client, pipe = pipeline(f"redis://:s3cret@127.0.0.1:{port}/3")
    try:
        assert await pipe.run([call(b"SET", b"where", b"db3")]) == [b"OK"]
        assert await client.get("where") == b"db3"                     # client: db 3 too
        other = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")
        assert await other.get("where") is None
        await other.aclose()
    finally:
        await pipe.close()
        await client.aclose()
    _, wrong = pipeline(f"redis://:nope@127.0.0.1:{port}/3")
    with pytest.raises(RedisConnectionError, match="refused"):
        await wrong.run([call(b"PING")])


# the same on uvloop, which `faregate serve` runs on (its transports are not asyncio's classes)
@pytest.mark.parametrize("case", [
    test_concurrent_callers_each_get_their_own_answers_in_order,
    test_an_error_reply_is_that_calls_answer_and_the_rest_follow,
    test_a_hang_fails_every_waiting_caller_and_the_next_call_reconnects,
    test_a_connection_redis_closed_is_replaced_once], ids=lambda f: f.__name__[5:40])
def test_on_uvloop(case, private_redis) -> None:
    uvloop.run(case(private_redis))

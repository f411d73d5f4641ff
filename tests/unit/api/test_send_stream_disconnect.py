"""The edge's stream relay and the client's departure: a watcher only once the relay waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from faregate.api.openai_routes import send_stream
from faregate.gateway import StreamReply

CHUNK = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


async def test_a_stream_relayed_without_waiting_never_asks_for_the_disconnect() -> None:
    asked: list[str] = []

    async def receive() -> dict[str, Any]:
        asked.append("receive")
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def relay() -> AsyncGenerator[bytes, None]:
        yield CHUNK
        yield CHUNK + DONE

    async def send(message: dict[str, Any]) -> None:
        pass

    await send_stream(StreamReply(CHUNK, relay(), []), receive, send)
    await asyncio.sleep(0)                          # what was scheduled has run
    await asyncio.sleep(0)
    assert asked == []


async def test_a_client_that_leaves_while_the_upstream_is_silent_ends_the_relay() -> None:
    """The upstream sends nothing more; the client hangs up: the relay is cancelled (which
    closes the upstream's answer and settles) and send_stream returns without an error."""
    gone = asyncio.Event()
    waiting = asyncio.Event()
    ended: list[str] = []

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def relay() -> AsyncGenerator[bytes, None]:
        try:
            yield CHUNK
            waiting.set()
            await asyncio.Event().wait()            # a silent upstream
            yield CHUNK
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        finally:
            ended.append("settled")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    task = asyncio.create_task(send_stream(StreamReply(CHUNK, relay(), []), receive, send))
    await waiting.wait()
    gone.set()
    await asyncio.wait_for(task, 5)
    assert ended == ["cancelled", "settled"]
    assert [m.get("body") for m in sent[1:]] == [CHUNK, CHUNK]
    assert not task.cancelled()


async def test_a_client_gone_before_the_relay_waits_is_seen_once_it_does() -> None:
    """The disconnect came before the watcher started: receive() reports it at once."""
    ended: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def relay() -> AsyncGenerator[bytes, None]:
        try:
            yield CHUNK
            await asyncio.Event().wait()
        finally:
            ended.append("settled")

    async def send(message: dict[str, Any]) -> None:
        pass

    await asyncio.wait_for(send_stream(StreamReply(CHUNK, relay(), []), receive, send), 5)
    assert ended == ["settled"]

"""The edge's stream relay: what each ASGI send carries, and in how many sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from faregate.api.openai_routes import send_stream
from faregate.gateway import StreamReply

DONE = b"data: [DONE]\n\n"
CHUNK = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'


async def _relay(blocks: list[bytes], order: list[str]) -> AsyncGenerator[bytes, None]:
    try:
        for block in blocks:
            yield block
    finally:
        order.append("settled")


async def _sent(head: bytes, blocks: list[bytes]) -> tuple[list[dict[str, Any]], list[str]]:
    order: list[str] = []
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        order.append("sent")

    await send_stream(StreamReply(head, _relay(blocks, order), []), receive, send)
    return sent, order


async def test_a_stream_read_whole_goes_out_in_one_body_write() -> None:
    """The common short stream (all of it in the first read): the head and the response's end
    in one send, after the relay has settled; was head, then an empty end: two."""
    sent, order = await _sent(CHUNK + CHUNK + DONE, [])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": CHUNK + CHUNK + DONE}
    assert order == ["sent", "settled", "sent"]


async def test_blocks_before_the_end_are_sent_as_they_come() -> None:
    sent, _ = await _sent(CHUNK, [CHUNK, CHUNK + DONE])
    bodies = [(m["body"], m.get("more_body", False)) for m in sent[1:]]
    assert bodies == [(CHUNK, True), (CHUNK, True), (CHUNK + DONE, False)]


async def test_anything_after_done_still_reaches_the_client_in_order() -> None:
    error = b'data: {"error":{"message":"cut"}}\n\n'
    sent, _ = await _sent(CHUNK + DONE, [error])
    bodies = [(m["body"], m.get("more_body", False)) for m in sent[1:]]
    assert bodies == [(CHUNK + DONE + error, True), (b"", False)]


async def test_a_stream_without_done_ends_with_an_empty_body() -> None:
    """Anthropic's events (or a cut stream): no [DONE], nothing held."""
    event = b"event: message_stop\ndata: {}\n\n"
    sent, _ = await _sent(event, [])
    bodies = [(m["body"], m.get("more_body", False)) for m in sent[1:]]
    assert bodies == [(event, True), (b"", False)]

"""A /v1/messages request passed through to an Anthropic deployment, byte for byte.

The gateway's request path is the same as for every call (admission, retries, settlement, one
ledger row); only the upstream call differs: `AnthropicClient` sends the client's own Messages
body (the gateway has replaced `model` and may have lowered `max_tokens`) and hands back
Anthropic's answer untouched, with its usage read for metering. A stream's events pass as
they are; after `message_stop` one OpenAI-shaped usage event and `data: [DONE]` follow, which
the gateway's stream meter reads and the /v1/messages edge removes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
import orjson

from faregate.config import Deployment
from faregate.errors import UpstreamError
from faregate.providers.anthropic_translate import openai_usage
from faregate.providers.base import (
    CONNECTION_ERRORS,
    UpstreamReply,
    UpstreamSession,
    sse_blocks,
    with_retry_after,
)

# The events whose payload metering reads; the rest (deltas, pings) pass unparsed.
_METERED = (b"event: message_start", b"event: message_delta", b"event: message_stop",
            b"event: error")

Failure = Callable[[Deployment, int, bytes], UpstreamError]
Problem = Callable[[Deployment, Exception], UpstreamError]


async def send_message(http: UpstreamSession, d: Deployment, headers: dict[str, str],
                       body: bytes, failure: Failure, connection: Problem,
                       timeout: Problem) -> UpstreamReply:
    """POST the Messages body; Anthropic's Message as it came, and its usage (OpenAI-shaped,
    cache reads and writes alongside) for metering."""
    try:
        async with http.post(d.api_base + "/v1/messages", data=body, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=d.timeout_s)) as resp:
            data = await resp.read()
            if resp.status >= 300:
                raise with_retry_after(failure(d, resp.status, data), resp.headers)
    except TimeoutError as exc:
        raise timeout(d, exc) from None
    except CONNECTION_ERRORS as exc:
        raise connection(d, exc) from None
    message = read_message(d, resp.status, data)
    return UpstreamReply(data, openai_usage(message.get("usage")))


def read_message(d: Deployment, status: int, data: bytes) -> dict[str, Any]:
    """A 2xx answer's Message; anything else is a malformed reply (retryable)."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or message.get("type") != "message":
        raise UpstreamError(f"The Anthropic upstream for model '{d.model_name}' answered "
                            f"HTTP {status} with a body that is not a Message", status=502,
                            code="upstream_malformed_reply", retryable=True,
                            upstream_status=status)
    return message


async def stream_message(http: UpstreamSession, d: Deployment, headers: dict[str, str],
                         body: bytes, failure: Failure, connection: Problem,
                         timeout: Problem, error_status: dict[str, int]
                         ) -> AsyncGenerator[bytes, None]:
    """POST a streaming Messages body; yield Anthropic's events as they came, in blocks of
    complete events, then the usage event and `data: [DONE]` after `message_stop`. An error
    event as the stream's first event raises (so the gateway may retry, as for an error
    answer); a later one reaches the caller as Anthropic sent it and ends the stream (the
    gateway charges what was produced). A stream that ends before `message_stop` raises.
    Whether to retry depends on the order of events, never on how the network split them."""
    meter = _Meter()
    yielded = False
    try:
        async with http.post(d.api_base + "/v1/messages", data=body, headers=headers,
                             timeout=aiohttp.ClientTimeout(total=d.timeout_s,
                                                           sock_read=d.stream_timeout_s)
                             ) as resp:
            if resp.status >= 300:
                raise with_retry_after(failure(d, resp.status, await resp.read()), resp.headers)
            async with contextlib.aclosing(
                    sse_blocks(resp.content.iter_any(), tail=False)) as blocks:
                async for complete in blocks:
                    try:
                        error = meter.read(complete)
                    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                        raise UpstreamError(
                            f"The Anthropic upstream for model '{d.model_name}' sent a "
                            f"malformed stream event: {exc}", status=502,
                            code="upstream_bad_stream", retryable=True) from None
                    if error is not None:
                        kind, message, first = error
                        if first and not yielded:
                            raise failure(d, error_status.get(kind, 500),
                                          orjson.dumps({"error": {"message": message}}))
                        yield complete
                        return
                    if meter.stopped:
                        yield complete + b"data: " + orjson.dumps(
                            {"choices": [], "usage": openai_usage(meter.usage)}) \
                            + b"\n\ndata: [DONE]\n\n"
                        return
                    yielded = True
                    yield complete
    except TimeoutError as exc:
        raise timeout(d, exc) from None
    except CONNECTION_ERRORS as exc:
        raise connection(d, exc) from None
    raise UpstreamError(f"The Anthropic upstream for model '{d.model_name}' ended the stream "
                        "before message_stop", status=502, code="upstream_bad_stream",
                        retryable=True)


class _Meter:
    """Anthropic's usage across a stream: message_start's, updated by message_delta's."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}
        self.stopped = False

    def read(self, events: bytes) -> tuple[str, str, bool] | None:
        """Read the metered events of a block; for an error event, its (type, message, whether
        it is the block's first event)."""
        for i, event in enumerate(events.split(b"\n\n")):
            if not event.startswith(_METERED):
                continue
            data = next((line[5:] for line in event.split(b"\n") if line.startswith(b"data:")),
                        b"{}")
            payload = orjson.loads(data)
            kind = payload.get("type")
            if kind == "message_start":
                self.usage = dict(payload["message"].get("usage") or {})
            elif kind == "message_delta":
                self.usage.update({k: v for k, v in (payload.get("usage") or {}).items()
                                   if v is not None})
            elif kind == "message_stop":
                self.stopped = True
            elif kind == "error":
                error = payload.get("error") or {}
                return (str(error.get("type") or "api_error"), str(error.get("message") or ""),
                        i == 0)
        return None

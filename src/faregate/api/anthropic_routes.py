"""`POST /v1/messages` for clients that speak Anthropic's Messages API, as raw ASGI.

Thin: authenticate, translate the body to an OpenAI chat request (anthropic_dialect), serve it
on the one request path (Gateway.handle: admission, budget, upstream, settlement, one ledger
row), translate the answer or its stream back. Every error renders in Anthropic's shape.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

import orjson

from faregate.api.asgi_io import JSON_HEADERS, ClientGone, Scope, read_body, send_bytes
from faregate.api.call_record import CallRecord, credentials, id_headers, new_trace
from faregate.api.openai_routes import (
    Handler,
    answer_headers,
    end_user_header,
    refusal_headers,
    send_stream,
)
from faregate.errors import GatewayError, MethodNotAllowed
from faregate.gateway import Gateway, Reply, StreamReply
from faregate.keys.auth import Caller
from faregate.observe.metrics import Metrics
from faregate.wire.anthropic_dialect import (
    STREAM_ERROR_TYPES,
    StreamTranslator,
    error_body,
    read_request,
    sse,
    translate_reply,
)
from faregate.wire.openai_request import CallType, ParsedRequest

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


class AnthropicRoutes:
    def __init__(self, gateway: Gateway, max_body_bytes: int, metrics: Metrics,
                 log_requests: bool) -> None:
        self._gateway = gateway
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._log_requests = log_requests
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", MESSAGES_PATH): self._messages,
            ("POST", COUNT_TOKENS_PATH): self._count_tokens}
        for path in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            for other in ("GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                self.routes[other, path] = _wrong_method

    async def _messages(self, scope: Scope, receive: Any, send: Any) -> None:
        """Serve one Messages call and record it once, however it ends."""
        authorization, api_key, client_id = credentials(scope)
        trace = new_trace(self._gateway.new_request_id(), client_id)
        caller: Caller | None = None
        with CallRecord(trace, self._metrics, self._log_requests) as call:
            try:
                raw = await read_body(scope, receive, self._max_body)
                # The key first, as Anthropic does: an unknown caller learns nothing of bodies.
                caller = await self._gateway.authenticate(authorization, api_key)
                request = read_request(raw, anthropic_only=partial(self._anthropic_only,
                                                                   caller))
                if isinstance(request, ParsedRequest):      # an Anthropic model: as it is
                    reply = await self._gateway.handle(CallType.MESSAGES, raw, caller, trace,
                                                       parsed=request,
                                                       end_user=end_user_header(scope))
                else:
                    reply = await self._gateway.handle(CallType.CHAT, request.openai_body,
                                                       caller, trace,
                                                       end_user=end_user_header(scope))
            except Exception as exc:
                await call.failed(exc, scope, send, _error_response,
                                  refusal_headers(self._gateway, caller))
                return
            message_id = "msg_" + trace.request_id
            extra = id_headers(trace, False) + answer_headers(self._gateway, caller, trace,
                                                              reply)
            if isinstance(request, ParsedRequest):
                call.status = 200
                await _relay_passed_through(reply, receive, send, extra)
            elif isinstance(reply, Reply):
                call.status = reply.status
                body = translate_reply(reply.body, request.model, message_id)
                await send_bytes(send, reply.status, body, JSON_HEADERS + reply.headers + extra)
            else:
                call.status = 200
                translator = StreamTranslator(request.model, message_id)
                head = translator.start() + translator.feed(reply.head)
                await send_stream(StreamReply(head, _translated(reply.events, translator),
                                              reply.headers + extra),
                                  receive, send)

    def _anthropic_only(self, caller: Caller, model: str) -> bool:
        return self._gateway.provider(model, caller) == "anthropic"

    async def _count_tokens(self, scope: Scope, receive: Any, send: Any) -> None:
        """An upper bound on the input tokens (the budget's prompt bound), not a count."""
        authorization, api_key, _ = credentials(scope)
        try:
            raw = await read_body(scope, receive, self._max_body)
            caller = await self._gateway.authenticate(authorization, api_key)
            request = read_request(raw, counting=True,
                                   anthropic_only=partial(self._anthropic_only, caller))
            if isinstance(request, ParsedRequest):
                bound = await self._gateway.prompt_bound(raw, caller, request)
            else:
                bound = await self._gateway.prompt_bound(request.openai_body, caller)
        except GatewayError as exc:
            await _send_error(send, exc, [])
            return
        except ClientGone:
            return
        await send_bytes(send, 200, orjson.dumps({"input_tokens": bound}), JSON_HEADERS)


async def _relay_passed_through(reply: Reply | StreamReply, receive: Any, send: Any,
                                extra: list[tuple[bytes, bytes]]) -> None:
    """An Anthropic model's answer, as Anthropic sent it."""
    if isinstance(reply, Reply):
        await send_bytes(send, reply.status, reply.body, JSON_HEADERS + reply.headers + extra)
        return
    await send_stream(StreamReply(_anthropic_events(reply.head), _passed_through(reply.events),
                              reply.headers + extra), receive, send)


def _anthropic_events(block: bytes) -> bytes:
    """Anthropic's own events from a relayed block: the gateway's `data:` events (the usage
    it metered, [DONE]) are dropped, and its error event is rewritten in Anthropic's shape."""
    if b"\n\ndata: " not in block and not block.startswith(b"data: "):
        return block        # Anthropic's events only (each begins with "event: ")
    out = []
    for event in block.split(b"\n\n"):
        if event.startswith(b"data: {") and b'"error"' in event:
            error = orjson.loads(event[6:]).get("error") or {}
            out.append(sse("error", {"type": "error", "error": {
                "type": STREAM_ERROR_TYPES.get(error.get("type"), "api_error"),
                "message": str(error.get("message"))}}))
        elif event and not event.startswith(b"data: "):
            out.append(event + b"\n\n")
    return b"".join(out)


async def _passed_through(events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    try:
        async for block in events:
            out = _anthropic_events(block)
            if out:
                yield out
    finally:
        await events.aclose()


async def _translated(events: AsyncGenerator[bytes, None], translator: StreamTranslator
                      ) -> AsyncGenerator[bytes, None]:
    """The gateway's relayed OpenAI events as Anthropic events; closing this closes the relay
    (which settles the request)."""
    try:
        async for block in events:
            try:
                out = translator.feed(block)
            except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
                yield sse("error", {"type": "error", "error": {
                    "type": "api_error", "message": f"The upstream sent a malformed stream "
                                                    f"event: {exc}"}})
                return
            if out:
                yield out
        if not translator.ended:
            yield sse("error", {"type": "error", "error": {
                "type": "api_error", "message": "The upstream ended the stream early"}})
    finally:
        await events.aclose()


def _error_response(exc: GatewayError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, headers) of `exc` in Anthropic's shape."""
    status, body, headers = error_body(exc)
    return status, body, JSON_HEADERS + headers


async def _send_error(send: Any, exc: GatewayError, extra: list[tuple[bytes, bytes]]) -> None:
    status, body, headers = _error_response(exc)
    await send_bytes(send, status, body, headers + extra)


async def _wrong_method(scope: Scope, receive: Any, send: Any) -> None:
    await _send_error(send, MethodNotAllowed(scope["method"], scope["path"], "POST"), [])


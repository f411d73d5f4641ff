"""The OpenAI-compatible routes as raw ASGI: parse headers, read the body, call the gateway,
write bytes. No framework on this path; every microsecond here is paid on every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter
from typing import Any

from faregate.api.asgi_io import (
    JSON_HEADERS,
    ClientGone,
    Scope,
    read_body,
    send_bytes,
    send_error,
)
from faregate.errors import GatewayError, MethodNotAllowed
from faregate.gateway import Gateway, Reply, StreamReply
from faregate.logs import REQUEST_TRACE
from faregate.metrics import Metrics
from faregate.openai_request import CallType
from faregate.trace import RequestTrace, sane_client_request_id

log = logging.getLogger("faregate.api")
access_log = logging.getLogger("faregate.access")

Handler = Callable[[Scope, Any, Any], Awaitable[None]]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


def _credentials(scope: Scope) -> tuple[str | None, str | None, bytes | None]:
    """(Authorization, x-api-key or api-key, the caller's x-request-id) as sent."""
    authorization = api_key = client_id = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name in (b"x-api-key", b"api-key"):
            api_key = value.decode("latin-1")
        elif name == b"x-request-id":
            client_id = value
    return authorization, api_key, client_id


class OpenAIRoutes:
    def __init__(self, gateway: Gateway, max_body_bytes: int, metrics: Metrics,
                 log_requests: bool) -> None:
        self._gateway = gateway
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._log_requests = log_requests
        self.routes: dict[tuple[str, str], Handler] = {}
        for prefix in ("/v1", ""):
            self.routes["POST", prefix + "/chat/completions"] = partial(self._call, CallType.CHAT)
            self.routes["POST", prefix + "/completions"] = partial(self._call, CallType.COMPLETION)
            self.routes["POST", prefix + "/embeddings"] = partial(self._call, CallType.EMBEDDING)
            self.routes["GET", prefix + "/models"] = self._models
        # Another method on one of these paths is a 405 naming the right one, not a 404.
        for method, path in list(self.routes):
            for other in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
                self.routes.setdefault((other, path), partial(_wrong_method, method))

    async def _call(self, call_type: CallType, scope: Scope, receive: Any, send: Any) -> None:
        """Serve one call and record it once, however it ends (metrics, the access line)."""
        authorization, api_key, client_id = _credentials(scope)
        trace = RequestTrace(self._gateway.new_request_id(), perf_counter(),
                             sane_client_request_id(client_id) if client_id else None)
        context = REQUEST_TRACE.set(trace)
        self._metrics.in_flight.inc()
        status, error = 500, None
        try:
            try:
                raw = await read_body(scope, receive, self._max_body)
                reply = await self._gateway.handle(call_type, raw, authorization, api_key,
                                                   trace)
            except GatewayError as exc:
                status, error = exc.status, exc
                await send_error(send, exc, _id_headers(trace, True))
                return
            except ClientGone:
                status = 499        # nginx's "client closed request": nothing was answered
                return
            except Exception:
                log.exception("unexpected error on %s", scope["path"])
                error = GatewayError("Internal error in the gateway; see its logs")
                await send_error(send, error, _id_headers(trace, True))
                return
            if isinstance(reply, Reply):
                status = reply.status
                await send_bytes(send, reply.status, reply.body,
                                 JSON_HEADERS + reply.headers + _id_headers(trace, False))
            else:
                status = 200
                reply.headers += _id_headers(trace, False)
                await _stream(reply, receive, send)
        finally:
            self._metrics.in_flight.dec()
            self._metrics.finished(trace, status, error)
            if self._log_requests:
                _log_request(trace, status)
            REQUEST_TRACE.reset(context)

    async def _models(self, scope: Scope, receive: Any, send: Any) -> None:
        authorization, api_key, client_id = _credentials(scope)
        trace = RequestTrace(self._gateway.new_request_id(), perf_counter(),
                             sane_client_request_id(client_id) if client_id else None)
        try:
            caller = await self._gateway.authenticate(authorization, api_key)
        except GatewayError as exc:
            await send_error(send, exc, _id_headers(trace, True))
            return
        await send_bytes(send, 200, self._gateway.models(caller),
                         JSON_HEADERS + _id_headers(trace, True))


async def _wrong_method(allow: str, scope: Scope, receive: Any, send: Any) -> None:
    await send_error(send, MethodNotAllowed(scope["method"], scope["path"], allow))


def _id_headers(trace: RequestTrace, with_own: bool) -> list[tuple[bytes, bytes]]:
    """x-request-id (the gateway's own, unless the reply has it already) and the caller's
    id echoed as x-client-request-id: the ledger keys on ours, never on the caller's."""
    headers = [(b"x-request-id", trace.request_id.encode())] if with_own else []
    if trace.client_request_id is not None:
        headers.append((b"x-client-request-id", trace.client_request_id.encode()))
    return headers


def _log_request(trace: RequestTrace, status: int) -> None:
    access_log.info("request", extra={
        "model": trace.model or None, "key_alias": trace.key_alias or None, "status": status,
        "latency_ms": round((perf_counter() - trace.started) * 1000, 3),
        "upstream_ms": None if trace.upstream_s is None else round(trace.upstream_s * 1000, 3),
        "prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens,
        "outcome": trace.outcome or None})


async def _stream(reply: StreamReply, receive: Any, send: Any) -> None:
    """Relay events until the stream ends or the client leaves; a departure cancels upstream.

    The relay runs in this task; one watcher task waits for the client's disconnect and
    cancels it, which closes the upstream response (freeing its GPU slot) and settles.
    """
    relay_task = asyncio.current_task()
    assert relay_task is not None
    left = finishing = False

    async def client_left() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        if not finishing:
            left = True
            relay_task.cancel()

    watcher = asyncio.ensure_future(client_left())
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": SSE_HEADERS + reply.headers})
        if reply.head:
            await send({"type": "http.response.body", "body": reply.head, "more_body": True})
        async for block in reply.events:
            await send({"type": "http.response.body", "body": block, "more_body": True})
        finishing = True
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not left:
            raise
        relay_task.uncancel()
    except OSError:
        pass
    finally:
        finishing = True
        watcher.cancel()
        await reply.events.aclose()

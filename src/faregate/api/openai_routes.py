"""The OpenAI-compatible routes as raw ASGI: parse headers, read the body, call the gateway,
write bytes. No framework on this path; every microsecond here is paid on every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs

from faregate.api.asgi_io import (
    JSON_HEADERS,
    Scope,
    error_response,
    read_body,
    send_bytes,
    send_error,
)
from faregate.api.call_record import CallRecord, Headers, credentials, id_headers, new_trace
from faregate.api.litellm_headers import call_headers, key_headers
from faregate.errors import GatewayError, InvalidRequest, MethodNotAllowed
from faregate.gateway import Gateway, Reply, StreamReply
from faregate.keys.auth import Caller
from faregate.observe.metrics import Metrics
from faregate.observe.trace import RequestTrace
from faregate.wire.openai_request import CallType

Handler = Callable[[Scope, Any, Any], Awaitable[None]]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


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
        authorization, api_key, client_id = credentials(scope)
        trace = new_trace(self._gateway.new_request_id(), client_id)
        caller: Caller | None = None
        with CallRecord(trace, self._metrics, self._log_requests) as call:
            try:
                raw = await read_body(scope, receive, self._max_body)
                caller = await self._gateway.authenticate(authorization, api_key)
                reply = await self._gateway.handle(call_type, raw, caller, trace,
                                                   end_user=end_user_header(scope))
            except Exception as exc:
                await call.failed(exc, scope, send, error_response,
                                  refusal_headers(self._gateway, caller))
                return
            if isinstance(reply, Reply):
                call.status = reply.status
                await send_bytes(send, reply.status, reply.body,
                                 JSON_HEADERS + reply.headers + id_headers(trace, False)
                                 + answer_headers(self._gateway, caller, trace, reply))
            else:
                call.status = 200
                reply.headers += id_headers(trace, False) + answer_headers(
                    self._gateway, caller, trace, reply)
                await send_stream(reply, receive, send)

    async def _models(self, scope: Scope, receive: Any, send: Any) -> None:
        authorization, api_key, client_id = credentials(scope)
        trace = new_trace(self._gateway.new_request_id(), client_id)
        try:
            caller = await self._gateway.authenticate(authorization, api_key)
        except GatewayError as exc:
            await send_error(send, exc, id_headers(trace, True))
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        wildcards = query.get("return_wildcard_routes", ["false"])[-1].lower() == "true"
        await send_bytes(send, 200, self._gateway.models(caller, wildcards),
                         JSON_HEADERS + id_headers(trace, True))


def answer_headers(gateway: Gateway, caller: Caller, trace: RequestTrace,
                   reply: Reply | StreamReply) -> Headers:
    """LiteLLM's headers of an answer: a whole reply was settled, so its cost is known and the
    key's spend includes it; a stream's headers leave before its cost is known."""
    cost = trace.spend_nanos if isinstance(reply, Reply) else None
    return call_headers(trace, caller.key, gateway.key_spend(caller), cost)


def refusal_headers(gateway: Gateway, caller: Caller | None) -> Headers:
    """A refusal after the key was known (budget, limits, model access) still tells the caller
    its spend and budget, as LiteLLM's does."""
    return [] if caller is None else key_headers(caller.key, gateway.key_spend(caller))


def end_user_header(scope: Scope) -> str | None:
    """The end user a request names in `x-litellm-customer-id` or `x-litellm-end-user-id`
    (LiteLLM's headers), before any in the body; a header that is not UTF-8 is a 400."""
    for name, value in scope["headers"]:
        if name in (b"x-litellm-customer-id", b"x-litellm-end-user-id"):
            try:
                text: str = value.decode()
                return text
            except UnicodeDecodeError:
                raise InvalidRequest(f"The {name.decode()} header must be UTF-8 text",
                                     param=name.decode()) from None
    return None


async def _wrong_method(allow: str, scope: Scope, receive: Any, send: Any) -> None:
    await send_error(send, MethodNotAllowed(scope["method"], scope["path"], allow))


_DONE_EVENT = b"data: [DONE]\n\n"


async def _send_block(send: Any, held: bytes, block: bytes) -> bytes:
    """Send `held` (a block that ended the stream, yet more came) and `block` in one write,
    or hold them if `block` ends the stream; returns what is held now."""
    block = held + block if held else block
    if block.endswith(_DONE_EVENT):
        return block
    await send({"type": "http.response.body", "body": block, "more_body": True})
    return b""


async def send_stream(reply: StreamReply, receive: Any, send: Any) -> None:
    """Relay events until the stream ends or the client leaves; a departure cancels upstream.

    The relay runs in this task; one watcher task waits for the client's disconnect and
    cancels it, which closes the upstream response (freeing its GPU slot) and settles. The
    watcher starts once this task first waits (the loop's next turn): a stream relayed whole
    without waiting, the usual short one, needs none (a task cost ~10 µs a stream).
    """
    relay_task = asyncio.current_task()
    assert relay_task is not None
    left = finishing = False
    watcher: asyncio.Future[None] | None = None

    async def client_left() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        if not finishing:
            left = True
            relay_task.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(client_left())

    start_watching = asyncio.get_running_loop().call_soon(watch)
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": SSE_HEADERS + reply.headers})
        # A block that ends with OpenAI's [DONE] is held until the relay has ended (next
        # step: it settles and closes the upstream's answer, which ends with that block) and
        # goes out with the response's end in one write instead of two.
        held = await _send_block(send, b"", reply.head) if reply.head else b""
        async for block in reply.events:
            held = await _send_block(send, held, block)
        finishing = True
        await send({"type": "http.response.body", "body": held})
    except asyncio.CancelledError:
        if not left:
            raise
        relay_task.uncancel()
    except OSError:
        pass
    finally:
        finishing = True
        start_watching.cancel()
        if watcher is not None:
            watcher.cancel()
        await reply.events.aclose()

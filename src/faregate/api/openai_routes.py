"""The OpenAI-compatible routes as raw ASGI: parse headers, read the body, call the gateway,
write bytes. No framework on this path; every microsecond here is paid on every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
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
from faregate.openai_request import CallType

log = logging.getLogger("faregate.api")

Handler = Callable[[Scope, Any, Any], Awaitable[None]]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


def _credentials(scope: Scope) -> tuple[str | None, str | None]:
    authorization = api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name in (b"x-api-key", b"api-key"):
            api_key = value.decode("latin-1")
    return authorization, api_key


class OpenAIRoutes:
    def __init__(self, gateway: Gateway, max_body_bytes: int) -> None:
        self._gateway = gateway
        self._max_body = max_body_bytes
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
        try:
            authorization, api_key = _credentials(scope)
            raw = await read_body(scope, receive, self._max_body)
            reply = await self._gateway.handle(call_type, raw, authorization, api_key)
        except GatewayError as exc:
            await send_error(send, exc)
            return
        except ClientGone:
            return
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            await send_error(send, GatewayError("Internal error in the gateway; see its logs"))
            return
        if isinstance(reply, Reply):
            await send_bytes(send, reply.status, reply.body, JSON_HEADERS + reply.headers)
        else:
            await _stream(reply, receive, send)

    async def _models(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            caller = await self._gateway.authenticate(*_credentials(scope))
        except GatewayError as exc:
            await send_error(send, exc)
            return
        await send_bytes(send, 200, self._gateway.models(caller), JSON_HEADERS)


async def _wrong_method(allow: str, scope: Scope, receive: Any, send: Any) -> None:
    await send_error(send, MethodNotAllowed(scope["method"], scope["path"], allow))


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

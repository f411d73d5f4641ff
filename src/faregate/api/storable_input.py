"""The admin API's edge check: whatever a client sends to an admin route, in its JSON body, its
query or its path, is refused with a 400 naming the field if it could not be stored
(wire/storable.py), before FastAPI validates it or a handler sees it.

It is the route class of every admin route (`build_admin_app` and `build_model_routes` set
it), so a new route is checked without asking. A body that is not JSON at all is left to
FastAPI, which refuses it with its own 400; one past MAX_ADMIN_BODY_BYTES is a 413.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from faregate.errors import BodyTooLarge
from faregate.wire.storable import MAX_STORED_JSON_BYTES, check_storable, check_text

# Admin bodies are small (a key's settings, a model entry: a few stored documents); reading
# more than this before the caller is even authenticated would only cost memory.
MAX_ADMIN_BODY_BYTES = 1024 * 1024


class StorableInput(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            await refuse_unstorable(request)
            return await handler(request)

        return checked


async def refuse_unstorable(request: Request) -> None:
    """InvalidRequest if a value of `request` could not be stored. The body is read once:
    Starlette keeps it for the handler."""
    for name, value in request.query_params.multi_items():
        check_text(name, "a query parameter name")
        check_text(value, name)
    for name, value in request.path_params.items():
        if isinstance(value, str):
            check_text(value, name)
    raw = await _bounded_body(request)
    if not raw.strip():
        return
    try:
        # Python's reader, as FastAPI's: it accepts what orjson would refuse (NaN, 1e999,
        # lone surrogates) and then stores it, so this is the reading to check.
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return      # not JSON: FastAPI answers its 400
    check_storable(body)


async def _bounded_body(request: Request) -> bytes:
    """The body, read at most MAX_ADMIN_BODY_BYTES far (BodyTooLarge past it), and kept where
    Starlette keeps it for the handler."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_ADMIN_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_ADMIN_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    request._body = b"".join(chunks)     # Starlette's own cache: Request.body() returns it
    return request._body


def _too_large() -> BodyTooLarge:
    return BodyTooLarge(f"An admin request body may be at most {MAX_ADMIN_BODY_BYTES} bytes "
                        "(each stored JSON document at most "
                        f"{MAX_STORED_JSON_BYTES})", code="body_too_large")

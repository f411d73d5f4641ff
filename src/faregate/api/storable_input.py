"""The admin API's edge check: whatever a client sends to an admin route, in its JSON body, its
query or its path, is refused with a 400 naming the field if it could not be stored
(wire/storable.py), before FastAPI validates it or a handler sees it.

It is the route class of every admin route (`build_admin_app` and `build_model_routes` set
it), so a new route is checked without asking. A body that is not JSON at all is left to
FastAPI, which refuses it with its own 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from faregate.wire.storable import check_storable, check_text


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
    raw = await request.body()
    if not raw.strip():
        return
    try:
        # Python's reader, as FastAPI's: it accepts what orjson would refuse (NaN, 1e999,
        # lone surrogates) and then stores it, so this is the reading to check.
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return      # not JSON: FastAPI answers its 400
    check_storable(body)

"""Who may call an admin route: one dependency for every router that needs the master key.

Roles (issue 14 part 5) will be checked here, one call at the top of each route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from faregate.errors import AdminOnly
from faregate.keys.auth import Authenticator, Caller


def key_caller(auth: Authenticator) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency: whoever the request's key is (Authorization: Bearer, x-api-key or
    api-key), the master key or a virtual key; an unknown key is a 401."""

    async def caller(request: Request) -> Caller:
        headers = request.headers
        return await auth.caller(headers.get("authorization"),
                                 headers.get("x-api-key") or headers.get("api-key"))

    return caller


def master_key_only(auth: Authenticator,
                    routes: str) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency (`Annotated[Caller, Depends(master_key_only(auth, "/team"))]`) that admits
    only the master key; anyone else gets 403 naming `routes`."""
    caller = key_caller(auth)

    async def master(request: Request) -> Caller:
        who = await caller(request)
        if not who.is_master:
            raise AdminOnly(f"The {routes} routes need the master key", code="admin_only")
        return who

    return master

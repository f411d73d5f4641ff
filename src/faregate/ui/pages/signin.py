"""Log in (master key or a virtual key), log out, and / (which sends each viewer home)."""

from __future__ import annotations

from starlette.responses import Response

from faregate.errors import AuthError, GatewayError
from faregate.ui.session import Session
from faregate.ui.site import Ctx, PageRoute


async def root(ctx: Ctx) -> Response:
    """Each viewer's home: the overview for those who may open it (the master key, a key of a
    proxy_admin or proxy_admin_viewer), My key for other keys; after a login, the page that
    sent it there if this viewer may open it."""
    if ctx.session.role == "anonymous":
        return ctx.redirect("/login")
    next_path = _safe_next(ctx, ctx.param("next"))
    if next_path and ctx.may(next_path):
        return ctx.redirect(next_path)
    return ctx.redirect("/overview" if ctx.may("/overview") else "/me")


async def login_page(ctx: Ctx) -> Response:
    if ctx.session.role != "anonymous":
        return ctx.redirect("/")
    return ctx.render("login.html", error=None, next=_safe_next(ctx, ctx.param("next")))


async def login(ctx: Ctx) -> Response:
    presented = ctx.form.get("key")
    next_path = _safe_next(ctx, ctx.form.get("next"))
    now_s = ctx.now_s
    address = ctx.client_address
    wait_s = ctx.throttle.retry_after(address, now_s)
    if wait_s is not None:
        # Refused before the key is looked at: a guess made now teaches nothing.
        response = ctx.render("login.html", status=429, next=next_path,
                              error=f"Too many failed logins from your address "
                                    f"({ctx.throttle.limit} in {ctx.throttle.window_s} s). "
                                    f"Try again in {wait_s} s.")
        response.headers["retry-after"] = str(wait_s)
        return response
    if not presented:
        return ctx.render("login.html", status=400, error="Enter a key.", next=next_path)
    if ctx.services.master_key.matches(presented):
        session = ctx.session.signed_in("admin", now_s)
    else:
        try:
            caller = await ctx.services.auth.caller(None, presented)
        except GatewayError as exc:
            if isinstance(exc, AuthError):
                ctx.throttle.failed(address, now_s)
            return ctx.render("login.html", status=exc.status, error=exc.message,
                              next=next_path)
        session = ctx.session.signed_in("key", now_s, caller.key.token)
    ctx.new_session = session
    # Home decides with the new session's rights, read afresh on that request.
    return ctx.redirect("/", next=next_path or None)


async def logout(ctx: Ctx) -> Response:
    ctx.new_session = Session.anonymous(ctx.now_s)
    return ctx.redirect("/login", done="logged_out")


def _safe_next(ctx: Ctx, path: str) -> str:
    """Where to go after logging in: a page of this UI only (never another site)."""
    if path.startswith(ctx.base + "/"):
        path = path[len(ctx.base):]
    if not path.startswith("/") or path.startswith("//") or "\\" in path \
            or path.startswith(("/login", "/logout")):
        return ""
    return path


ROUTES = [
    PageRoute("/", root, who="anonymous"),
    PageRoute("/login", login_page, who="anonymous"),
    PageRoute("/login", login, methods=("POST",), who="anonymous"),
    PageRoute("/logout", logout, methods=("POST",), who="any"),
]

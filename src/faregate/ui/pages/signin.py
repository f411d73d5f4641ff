"""Log in (master key or a virtual key), log out, and / (which sends each viewer home)."""

from __future__ import annotations

from starlette.responses import Response

from faregate.errors import GatewayError
from faregate.ui.session import Session
from faregate.ui.site import Ctx, PageRoute


def _home(session: Session) -> str:
    return {"admin": "/overview", "key": "/me"}.get(session.role, "/login")


async def root(ctx: Ctx) -> Response:
    return ctx.redirect(_home(ctx.session))


async def login_page(ctx: Ctx) -> Response:
    if ctx.session.role != "anonymous":
        return ctx.redirect(_home(ctx.session))
    return ctx.render("login.html", error=None, next=_safe_next(ctx, ctx.param("next")))


async def login(ctx: Ctx) -> Response:
    presented = ctx.form.get("key")
    next_path = _safe_next(ctx, ctx.form.get("next"))
    now_s = ctx.now_s
    if not presented:
        return ctx.render("login.html", status=400, error="Enter a key.", next=next_path)
    if ctx.services.master_key.matches(presented):
        session = ctx.session.signed_in("admin", now_s)
    else:
        try:
            caller = await ctx.services.auth.caller(None, presented)
        except GatewayError as exc:
            return ctx.render("login.html", status=exc.status, error=exc.message,
                              next=next_path)
        session = ctx.session.signed_in("key", now_s, caller.key.token)
    ctx.new_session = session
    if next_path and (session.is_admin or next_path == "/me"):
        return ctx.redirect(next_path)
    return ctx.redirect(_home(session))


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

"""The UI's framework: who is looking (the session), what each page may be seen by, forms and
their CSRF check, rendering, security headers and the static files. Pages live in ui/pages/,
each a module with a `ROUTES` list of `PageRoute`s; `build_ui` mounts them all.

Who may open a page is the admin API's decision, not the UI's: each admin page names the admin
route it stands for (`PageRoute.api`: the keys table is /key/list, its New key form
/key/generate) and `Gate` asks that route's rule (api/admin_auth.py, injected as
`UiServices.admit`) about the viewer. The master key's session is a proxy_admin; a virtual key's
session is its user's `user_role`, read again from the database at every page (a demotion holds
at the next load). A page opens only to a caller the rule admits to *everything* (a
proxy_admin; a proxy_admin_viewer on reads): the pages show every key and payer, so a caller
the API admits only to its own things (internal users, team and org admins, keys without a
user) keeps the self-service page, My key.

Every response carries a Content-Security-Policy that allows no inline script or style, and
every page is rendered with autoescaping on: what a user stored (a key alias) shows as text.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faregate.accounts.budgets import BudgetAdmin
from faregate.accounts.customers import CustomerAdmin
from faregate.accounts.organizations import OrganizationAdmin
from faregate.accounts.teams import TeamAdmin
from faregate.accounts.users import UserAdmin
from faregate.catalog.routing import Router
from faregate.catalog.stored_models import ModelCatalog
from faregate.errors import AdminOnly, AuthError, GatewayError, InvalidRequest
from faregate.keys.admin import KeyAdmin
from faregate.keys.auth import Authenticator, Caller
from faregate.records import KeyRecord
from faregate.secret import Secret
from faregate.storage.health import is_outage
from faregate.storage.protocols import Storage
from faregate.ui.render import Renderer
from faregate.ui.session import COOKIE, Session, SessionSigner
from faregate.ui.throttle import LoginThrottle

log = logging.getLogger("faregate.ui")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
TZ_COOKIE = "faregate_tz"           # the browser's time zone, set by ui.js
MAX_FORM_BYTES = 256 * 1024
MAX_FORM_FIELDS = 200
CSP = ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
       "base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]
Who = Literal["admin", "any", "anonymous"]


class Admitted(Protocol):
    """What the admin API's rule grants a caller on one route (api/admin_auth.py `Access`)."""

    @property
    def everything(self) -> bool: ...       # every target: a proxy_admin, or a viewer on a read

    def user(self, user_id: str | None) -> str | None:
        """The user whose things this caller reads (its own, unless `everything`); AdminOnly
        if it may read no user's."""
        ...


# The admin API's decision for (caller, admin route): raises AdminOnly (403) with the reason,
# or says what it admits (api/admin_auth.py `Roles.admit`).
Admit = Callable[[Caller, str], Admitted]


@dataclass(frozen=True)
class UiServices:
    """What the pages read and change: the very objects the admin API's routes call."""

    storage: Storage
    keys: KeyAdmin
    auth: Authenticator
    master_key: Secret
    router: Router
    models: ModelCatalog
    users: UserAdmin
    teams: TeamAdmin
    organizations: OrganizationAdmin
    customers: CustomerAdmin
    budgets: BudgetAdmin
    # Open reservations (nano-dollars) on a payer's scope ("key:<hash>"), as this process's
    # admission holds them: the part of a budget that requests in flight have taken.
    reserved: Callable[[str], int]
    # A key's spend in its current budget period, as admission counts it (settled, maybe not
    # yet flushed to the database).
    period_spend: Callable[[KeyRecord], int]
    now: Callable[[], datetime]
    admit: Admit


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str                       # under /ui
    admin_only: bool = True         # shown to whoever may open `path`; False: key sessions


# The navigation bar, in order. A new page adds its line here (see ui/README.md).
NAV: list[NavItem] = [
    NavItem("Overview", "/overview"),
    NavItem("Keys", "/keys"),
    NavItem("Models", "/models"),
    NavItem("Usage", "/usage"),
    NavItem("Logs", "/logs"),
    NavItem("Teams", "/teams"),
    NavItem("Users", "/users"),
    NavItem("Organizations", "/organizations"),
    NavItem("Customers", "/customers"),
    NavItem("Budgets", "/budgets"),
    NavItem("My key", "/me", admin_only=False),
]


# What a redirect's ?done=<code> says on the page it lands on: fixed texts, never the query's.
DONE: dict[str, str] = {
    "logged_out": "You are logged out.",
    "saved": "Saved.",
    "deleted": "Deleted.",
    "blocked": "Blocked: its requests are refused from now on.",
    "unblocked": "Unblocked: its requests are admitted again.",
    "model_added": "Model added; it serves requests now.",
    "member_added": "Member added.",
    "member_removed": "Member removed.",
}


class Form:
    """A POSTed application/x-www-form-urlencoded body (the UI's forms send nothing else)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str = "") -> str:
        values = self._fields.get(name)
        return values[0].strip() if values else default

    def getlist(self, name: str) -> list[str]:
        return [v.strip() for v in self._fields.get(name, []) if v.strip()]

    def has(self, name: str) -> bool:
        return name in self._fields

    def optional_int(self, name: str, label: str) -> int | None:
        text = self.get(name)
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise InvalidRequest(f"{label} must be a whole number", param=name) from None
        if not 0 <= value <= 2**31 - 1:
            raise InvalidRequest(f"{label} must be between 0 and 2147483647", param=name)
        return value

    def optional_float(self, name: str, label: str) -> float | None:
        text = self.get(name).lstrip("$")
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise InvalidRequest(f"{label} must be a number", param=name) from None
        if not 0 <= value <= 1e9 or value != value:
            raise InvalidRequest(f"{label} must be between 0 and 1,000,000,000", param=name)
        return value


class CsrfRefused(Exception):
    """A POST whose form lacks the session's CSRF token, or that comes from another origin."""


class Ctx:
    """One request to a page: who is looking, its form, and how to answer."""

    def __init__(self, request: Request, session: Session, ui: Ui,
                 viewer_key: KeyRecord | None, caller: Caller | None, now_s: int) -> None:
        self.request = request
        self.now_s = now_s
        self.session = session
        self.services = ui.services
        self.viewer_key = viewer_key        # role "key": the viewer's own key, read now
        # role "key": the key as the admin API sees its caller now (its user's role); None if
        # it may not act now (blocked, expired), so it gets no admin page.
        self.caller = caller
        self.throttle = ui.throttle
        self.base: str = request.scope.get("root_path", "")
        self._ui = ui
        self.form = Form({})
        self.new_session: Session | None = None
        self.tz = _zone(request.cookies.get(TZ_COOKIE))

    @property
    def client_address(self) -> str:
        client = self.request.client
        return client.host if client is not None else "unknown"

    @property
    def user_role(self) -> str | None:
        """The viewer's user's role, to show beside its key (the decisions are Gate's)."""
        caller = self.caller
        payers = caller.payers if caller is not None else None
        if payers is None or payers.user is None or caller is None or not caller.key.user_id:
            return None
        return payers.user.user_role

    def may(self, path: str, method: str = "GET") -> bool:
        """Whether this viewer may open `path` (under /ui, with or without the mount's
        prefix) with `method`: for templates, to show a link or button only to those whom
        its page will admit. The same decision the page itself makes."""
        if path.startswith(self.base + "/"):
            path = path[len(self.base):]
        page = self._ui.gate.find(method, path.split("?")[0])
        return page is not None and self._ui.gate.refusal(
            page, self.new_session or self.session, self.caller) is None

    def param(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default).strip()

    def url(self, path: str, **query: Any) -> str:
        """A URL under /ui, with the query's non-empty values."""
        given = {k: v for k, v in query.items() if v not in (None, "")}
        return self.base + path + (f"?{urlencode(given)}" if given else "")

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        session = self.new_session or self.session
        nav = [n for n in NAV if (n.admin_only and self.may(n.path))
               or (not n.admin_only and session.role == "key")]
        values.setdefault("message", DONE.get(self.param("done")))
        body = self._ui.renderer.render(template, ctx=self, csrf=session.csrf, nav=nav,
                                        session=session, **values)
        return HTMLResponse(body, status_code=status)

    def redirect(self, path: str, **query: Any) -> RedirectResponse:
        """After a change: see the result with GET (a reload then repeats nothing)."""
        return RedirectResponse(self.url(path, **query), status_code=303)


Handler = Callable[[Ctx], Awaitable[Response]]


@dataclass(frozen=True)
class PageRoute:
    path: str                       # under /ui, Starlette's syntax ("/keys/{token}")
    handler: Handler
    methods: Sequence[str] = ("GET",)
    who: Who = "admin"              # admin: as `api`'s rule decides; any: any signed in
    name: str | None = None
    # who="admin": the admin API route this page does (its rule in api/admin_auth.py ROUTES
    # decides who may open it); None: a proxy_admin only.
    api: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Gate:
    """Which page a path is, and whether a viewer may open it: the admin API's rule for the
    page's `api` route (UiServices.admit), never a rule of the UI's own."""

    def __init__(self, pages: Sequence[PageRoute], admit: Admit) -> None:
        self._pages = [(compile_path(p.path)[0], p) for p in pages]
        self._admit = admit

    def find(self, method: str, path: str) -> PageRoute | None:
        for pattern, page in self._pages:
            if method in page.methods and pattern.match(path):
                return page
        return None

    def refusal(self, page: PageRoute, session: Session, caller: Caller | None) -> str | None:
        """None if the viewer may open `page`, else why not (shown on the 403 page)."""
        if page.who == "anonymous" or session.is_admin:
            return None
        if session.role == "anonymous":
            return "Log in first."
        if page.who == "any":
            return None
        if caller is None:
            return ("This key may not act now (it is blocked or expired), so it opens no "
                    "admin page; its own usage is under My key.")
        route = page.api or ""
        try:
            access = self._admit(caller, route)
        except AdminOnly as exc:
            return exc.message
        if not access.everything:
            return (f"Your role may call {route} only on its own things (or those it "
                    "administers), and this page acts on everyone's: it is for proxy_admin "
                    "(proxy_admin_viewer to read). Your key's own usage is under My key.")
        return None


class Ui:
    """The pages' common path: session -> who may look -> CSRF -> handler -> headers."""

    def __init__(self, services: UiServices, renderer: Renderer, pages: Sequence[PageRoute],
                 clock: Callable[[], float] = time.time,
                 throttle: LoginThrottle | None = None) -> None:
        self.services = services
        self.renderer = renderer
        self.signer = SessionSigner(services.master_key)
        self.gate = Gate(pages, services.admit)
        self.throttle = throttle or LoginThrottle()
        self._clock = clock

    def endpoint(self, page: PageRoute) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._serve(page, request)

        return endpoint

    async def _serve(self, page: PageRoute, request: Request) -> Response:
        now_s = int(self._clock())
        session = self.signer.loads(request.cookies.get(COOKIE), now_s)
        fresh = session is None
        if session is None:
            session = Session.anonymous(now_s)
        ctx = Ctx(request, session, self, None, None, now_s)
        try:
            if session.role == "key":
                ctx.viewer_key, ctx.caller = await self._viewer(session.token or "")
                if ctx.viewer_key is None:      # deleted or regenerated since: sign in again
                    session, fresh = Session.anonymous(now_s), True
                    ctx = Ctx(request, session, self, None, None, now_s)
            if fresh:
                ctx.new_session = session
            response = await self._answer(page, ctx)
        except GatewayError as exc:
            response = ctx.render("error.html", status=exc.status, message=exc.message)
        except Exception as exc:
            if not is_outage(exc):
                raise
            response = ctx.render("error.html", status=503,
                                  message="The database is unreachable; the pages need it. "
                                          "Retry when /health/readiness reports db: connected.")
        if ctx.new_session is not None:
            self._set_cookie(request, response, ctx.new_session)
        response.headers["cache-control"] = "no-store"
        return response

    async def _viewer(self, token: str) -> tuple[KeyRecord | None, Caller | None]:
        """A key session's key, and the caller it is for the admin API now: read from the
        database at every page, as the admin API reads its callers (Roles.check), so a
        demotion, a block or a user's deletion holds at the next page."""
        record = await self.services.storage.get_key(token)
        if record is None:
            return None, None
        try:
            caller = await self.services.auth.reload(Caller(record, is_master=False))
        except AuthError:                   # blocked or expired: My key only
            return record, None
        return caller.key, caller

    async def _answer(self, page: PageRoute, ctx: Ctx) -> Response:
        role = ctx.session.role
        if page.who != "anonymous" and role == "anonymous":
            return ctx.redirect("/login", next=ctx.request.url.path
                                if ctx.request.method == "GET" else None)
        refusal = self.gate.refusal(page, ctx.session, ctx.caller)
        if refusal is not None:
            return ctx.render("error.html", status=403, heading="Not allowed",
                              message=refusal)
        if ctx.request.method == "POST":
            try:
                ctx.form = await self._checked_form(ctx)
            except CsrfRefused as exc:
                return ctx.render("error.html", status=403, heading="Refused",
                                  message=str(exc))
        return await page.handler(ctx)

    async def _checked_form(self, ctx: Ctx) -> Form:
        request = ctx.request
        origin = request.headers.get("origin")
        # The browser's Origin names this site: the Host it asked for, or (behind a proxy
        # that rewrites Host) the one the proxy says it received.
        hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
        if origin and origin != "null" and urlsplit(origin).netloc not in hosts:
            raise CsrfRefused("The form came from another site; it was refused.")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise CsrfRefused("The form's security token is missing; reload the page and "
                              "send the form again.")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise InvalidRequest(f"The form is larger than {MAX_FORM_BYTES} bytes")
        try:
            fields = parse_qs(body.decode(), keep_blank_values=True,
                              max_num_fields=MAX_FORM_FIELDS, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("The form could not be read (not UTF-8, or too many "
                                 "fields)") from None
        form = Form(fields)
        if not ctx.session.csrf_matches(form.get("csrf") or None):
            raise CsrfRefused("The form's security token did not match this session (it "
                              "expired, or the form came from elsewhere); reload the page and "
                              "send the form again.")
        return form

    def _set_cookie(self, request: Request, response: Response, session: Session) -> None:
        secure = request.url.scheme == "https" or request.headers.get(
            "x-forwarded-proto", "").split(",")[0].strip().lower() == "https"
        response.set_cookie(COOKIE, self.signer.dumps(session),
                            path=request.scope.get("root_path") or "/", httponly=True,
                            samesite="strict", secure=secure)


def build_ui(services: UiServices, pages: Sequence[PageRoute],
             clock: Callable[[], float] = time.time) -> ASGIApp:
    """The UI as an ASGI app, to mount at /ui."""
    ui = Ui(services, Renderer(), pages, clock)
    routes = [Route(p.path, ui.endpoint(p), methods=list(p.methods), name=p.name)
              for p in pages]
    routes += [Route(f"/static/{path.name}", _static(path)) for path in STATIC_DIR.iterdir()
               if path.suffix in STATIC_TYPES]
    return SecurityHeaders(Starlette(routes=routes, exception_handlers={404: _no_page}))


async def _no_page(request: Request, _: Exception) -> Response:
    """A path under /ui that is no page (nothing of the request is echoed)."""
    base = request.scope.get("root_path", "")
    return HTMLResponse(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
                        f'No such page · faregate</title><link rel="stylesheet" href="{base}'
                        f'/static/ui.css"></head><body><main id="main"><h1>No such page</h1>'
                        f'<p><a href="{base}/">Back to the start</a></p></main></body></html>',
                        status_code=404)


def _static(path: Path) -> Callable[[Request], Awaitable[Response]]:
    content, kind = path.read_bytes(), STATIC_TYPES[path.suffix]

    async def serve(_: Request) -> Response:
        return Response(content, media_type=kind,
                        headers={"cache-control": "public, max-age=300"})

    return serve


class SecurityHeaders:
    """Adds the CSP and its companions to every response of the UI, 404s included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


def _zone(name: str | None) -> ZoneInfo:
    """The viewer's time zone (the cookie ui.js sets from the browser, URL-encoded), else
    UTC."""
    name = unquote(name) if name else None
    if name and len(name) <= 64 and _ZONE_NAME.match(name):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    return ZoneInfo("UTC")

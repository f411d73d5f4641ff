"""Teams, users, organizations and customers (the payers above keys): a list with spend
against budget (storage/reports.py report_payers: keyset pages, newest first), create, edit,
block, members (teams, organizations), and a page per payer with its keys and its daily spend.
Every change is a call to the service the admin API's /team, /user, /organization and
/customer routes call (accounts/*.py), never a write of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.responses import Response

from faregate.accounts.organizations import ORG_ROLES
from faregate.accounts.teams import MEMBER_ROLES, NewMember, TeamSettings
from faregate.accounts.users import UserSettings
from faregate.errors import InvalidRequest
from faregate.money import NANOS_PER_DOLLAR
from faregate.storage.protocols import scope
from faregate.storage.reports import Cursor, KeyFilters, PayerLevel, PayerRow
from faregate.ui import reads
from faregate.ui.charts import BudgetBar, stacked_bars
from faregate.ui.render import dollars
from faregate.ui.site import Ctx, Form, PageRoute

PAGE_SIZE = 50
KEYS_SHOWN = 50
USER_ROLES = ("internal_user", "internal_user_viewer", "proxy_admin", "proxy_admin_viewer")


@dataclass(frozen=True)
class Field:
    """One input of a payer's form, named as the service takes it."""

    name: str
    label: str
    help: str = ""
    kind: str = "text"                      # text, number, money, list, choice
    choices: tuple[str, ...] = ()
    new_only: bool = False                  # the id: chosen once


_TERMS = (
    Field("max_budget", "Max budget (USD)", "Empty = no budget of its own.", "money"),
    Field("budget_duration", "Budget resets every", "e.g. 30d, 1mo, 1h; empty = never."),
    Field("rpm_limit", "Requests per minute", kind="number"),
    Field("tpm_limit", "Tokens per minute", kind="number"),
    Field("max_parallel_requests", "Parallel requests", kind="number"),
    Field("budget_id", "Named budget", "A budget's id (Budgets page) for terms left empty."),
)


@dataclass(frozen=True)
class Kind:
    """One kind of payer: its pages' paths and words, and how the service is called."""

    path: str                               # /teams
    level: PayerLevel                       # report_payers' level
    title: str                              # Teams
    one: str                                # team
    scope_level: str                        # its admission scope: team, user, org, end_user
    id_field: str                           # the form's id field
    fields: tuple[Field, ...]
    key_filter: str | None                  # KeyFilters' field naming it (keys listed)
    blockable: bool
    member_roles: tuple[str, ...] = ()      # teams and organizations have members


KINDS: dict[str, Kind] = {
    "teams": Kind("/teams", "team", "Teams", "team", "team", "team_id", (
        Field("team_id", "Team id", "Empty = a generated id.", new_only=True),
        Field("team_alias", "Name"),
        Field("organization_id", "Organization id", "Must exist; empty = none."),
        Field("models", "Models", "Comma-separated; empty = every model.", "list"),
        *_TERMS), "team_id", True, MEMBER_ROLES),
    "users": Kind("/users", "user", "Users", "user", "user", "user_id", (
        Field("user_id", "User id", "Empty = a generated id.", new_only=True),
        Field("user_email", "Email"),
        Field("user_alias", "Name"),
        Field("user_role", "Role", kind="choice", choices=USER_ROLES),
        Field("models", "Models", "Comma-separated; empty = every model.", "list"),
        *_TERMS), "user_id", False),
    "organizations": Kind("/organizations", "organization", "Organizations", "organization",
                          "org", "organization_id", (
        Field("organization_id", "Organization id", "Empty = a generated id.", new_only=True),
        Field("organization_alias", "Name"),
        Field("models", "Models", "Comma-separated; empty = every model.", "list"),
        *_TERMS), None, True, ORG_ROLES),
    "customers": Kind("/customers", "customer", "Customers", "customer", "end_user",
                      "user_id", (
        Field("user_id", "Customer id", "The id callers send as `user` or "
              "x-litellm-customer-id.", new_only=True),
        Field("alias", "Name"),
        *_TERMS), None, True),
}


async def list_payers(ctx: Ctx, kind: Kind) -> Response:
    after = reads.cursor_from(ctx.param("after"))
    page = await ctx.services.storage.report_payers(kind.level, after, PAGE_SIZE)
    rows = [(row, _bar(ctx, kind, row)) for row in page.rows]
    next_url = ctx.url(kind.path, after=reads.cursor_text(page.next)) if page.next else None
    return ctx.render("payers.html", title=kind.title, kind=kind, rows=rows,
                      next_url=next_url, first_url=ctx.url(kind.path) if after else None)


async def show(ctx: Ctx, kind: Kind, member_error: str | None = None) -> Response:
    ident = ctx.request.path_params["ident"]
    record = await _record(ctx, kind, ident)
    services = ctx.services
    row = await _row(ctx, kind, ident)
    keys = []
    if kind.key_filter is not None:
        keys = (await services.storage.report_keys(
            KeyFilters(**{kind.key_filter: ident}), None, KEYS_SHOWN)).rows
    members: list[Any] = []
    teams: list[Any] = []
    if kind.level == "team":
        members = (await services.teams.info(ident)).members
    elif kind.level == "organization":
        members = await services.organizations.members(ident)
        teams = await services.organizations.teams(ident)
    span = reads.Range.last_days(services.now(), ctx.tz, 30)
    daily = await reads.daily_spend(services, span, kind.level, ident)
    return ctx.render("payer.html", status=400 if member_error else 200,
                      title=f"{kind.one.capitalize()} {ident}", kind=kind,
                      member_error=member_error, record=record, row=row,
                      bar=_bar(ctx, kind, row) if row else None,
                      keys=keys, members=members, teams=teams, roles=kind.member_roles,
                      chart=stacked_bars("Daily spend, last 30 days", daily.labels,
                                         daily.spend, dollars))


async def new_form(ctx: Ctx, kind: Kind) -> Response:
    return _form(ctx, kind, None, Form({}))


async def create(ctx: Ctx, kind: Kind) -> Response:
    try:
        values = _values(ctx.form, kind, new=True)
        ident = await _CREATE[kind.level](ctx, values)
    except InvalidRequest as exc:
        return _form(ctx, kind, None, ctx.form, exc.message, 400)
    return ctx.redirect(f"{kind.path}/{ident}", done="saved")


async def edit_form(ctx: Ctx, kind: Kind) -> Response:
    ident = ctx.request.path_params["ident"]
    record = await _record(ctx, kind, ident)
    return _form(ctx, kind, ident, _form_of(kind, record))


async def edit(ctx: Ctx, kind: Kind) -> Response:
    ident = ctx.request.path_params["ident"]
    await _record(ctx, kind, ident)
    try:
        values = _values(ctx.form, kind, new=False)
        await _UPDATE[kind.level](ctx, ident, values)
    except InvalidRequest as exc:
        return _form(ctx, kind, ident, ctx.form, exc.message, 400)
    return ctx.redirect(f"{kind.path}/{ident}", done="saved")


async def block(ctx: Ctx, kind: Kind) -> Response:
    ident = ctx.request.path_params["ident"]
    blocked = ctx.form.get("blocked") == "1"
    services = ctx.services
    if kind.level == "team":
        await services.teams.set_blocked(ident, blocked)
    elif kind.level == "organization":
        await services.organizations.update(ident, {"blocked": blocked})
    else:
        await services.customers.set_blocked([ident], blocked)
    return ctx.redirect(f"{kind.path}/{ident}", done="blocked" if blocked else "unblocked")


async def add_member(ctx: Ctx, kind: Kind) -> Response:
    ident = ctx.request.path_params["ident"]
    user_id = ctx.form.get("user_id") or None
    email = ctx.form.get("user_email") or None
    role = ctx.form.get("role") or kind.member_roles[-1]
    try:
        if not (user_id or email):
            raise InvalidRequest("Name the member by user id or email", param="user_id")
        if kind.level == "team":
            await ctx.services.teams.add_members(ident, [NewMember(user_id, email, role)],
                                                 None)
        else:
            await ctx.services.organizations.add_members(ident, [(user_id, email, role)])
    except InvalidRequest as exc:
        return await show(ctx, kind, exc.message)
    return ctx.redirect(f"{kind.path}/{ident}", done="member_added")


async def remove_member(ctx: Ctx, kind: Kind) -> Response:
    ident = ctx.request.path_params["ident"]
    user_id = ctx.form.get("user_id")
    if kind.level == "team":
        await ctx.services.teams.remove_member(ident, user_id, None)
    else:
        await ctx.services.organizations.delete_member(ident, user_id, None)
    return ctx.redirect(f"{kind.path}/{ident}", done="member_removed")


# reading a payer

async def _record(ctx: Ctx, kind: Kind, ident: str) -> Any:
    """The payer's record, through its service (a 404 page when it does not exist)."""
    services = ctx.services
    if kind.level == "team":
        return await services.teams.get(ident)
    if kind.level == "user":
        return await services.users.get(ident)
    if kind.level == "organization":
        return await services.organizations.get(ident)
    return await services.customers.info(ident)


async def _row(ctx: Ctx, kind: Kind, ident: str) -> PayerRow | None:
    """Its row of the list (spend, budget, counts): the one list query, started just after
    (created_at, id + NUL), whose first row in newest-first order is the payer itself."""
    record = await _record(ctx, kind, ident)
    page = await ctx.services.storage.report_payers(
        kind.level, Cursor(record.created_at, ident + "\x00"), 1)
    return page.rows[0] if page.rows and page.rows[0].id == ident else None


def _bar(ctx: Ctx, kind: Kind, row: PayerRow) -> BudgetBar:
    return BudgetBar(row.period_spend_nanos, ctx.services.reserved(scope(kind.scope_level,
                                                                         row.id)),
                     row.max_budget_nanos)


# forms

def _values(form: Form, kind: Kind, new: bool) -> dict[str, Any]:
    """The form's fields as the service takes them: every field given (empty = none)."""
    out: dict[str, Any] = {}
    for f in kind.fields:
        if f.new_only and not new:
            continue
        if f.kind == "money":
            out[f.name] = form.optional_float(f.name, f.label)
        elif f.kind == "number":
            out[f.name] = form.optional_int(f.name, f.label)
        elif f.kind == "list":
            out[f.name] = [m.strip() for m in form.get(f.name).replace("\n", ",").split(",")
                           if m.strip()]
        elif f.kind == "choice":
            value = form.get(f.name) or f.choices[0]
            if value not in f.choices:
                raise InvalidRequest(f"{f.label} must be one of {', '.join(f.choices)}",
                                     param=f.name)
            out[f.name] = value
        else:
            text = form.get(f.name) or None
            if text is not None and len(text) > 256:
                raise InvalidRequest(f"{f.label} may be at most 256 characters", param=f.name)
            out[f.name] = text
    return out


def _form_of(kind: Kind, record: Any) -> Form:
    values: dict[str, Any] = {}
    for f in kind.fields:
        if f.kind == "money":
            nanos = record.max_budget_nanos
            values[f.name] = None if nanos is None else dollars_text(nanos)
        elif f.kind == "list":
            values[f.name] = ", ".join(getattr(record, f.name))
        elif f.name == "user_id" and kind.level == "customer":
            values[f.name] = record.end_user_id
        else:
            values[f.name] = getattr(record, f.name, None)
    return Form({k: [str(v)] for k, v in values.items() if v is not None})


def dollars_text(nanos: int) -> str:
    text = format(Decimal(nanos) / NANOS_PER_DOLLAR, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _form(ctx: Ctx, kind: Kind, ident: str | None, form: Form, error: str | None = None,
          status: int = 200) -> Response:
    title = f"Edit {kind.one}" if ident else f"New {kind.one}"
    return ctx.render("payer_form.html", status=status, title=title, kind=kind, ident=ident,
                      form=form, error=error)


# the services, as the admin API calls them

async def _create_team(ctx: Ctx, values: dict[str, Any]) -> str:
    team_id = values.pop("team_id")
    record = await ctx.services.teams.create(TeamSettings(**values), set(values), team_id)
    return record.team_id


async def _create_user(ctx: Ctx, values: dict[str, Any]) -> str:
    user_id = values.pop("user_id")
    record = await ctx.services.users.create(UserSettings(**values), set(values), user_id)
    return record.user_id


async def _create_org(ctx: Ctx, values: dict[str, Any]) -> str:
    org_id = values.pop("organization_id")
    record = await ctx.services.organizations.new(org_id, values)
    return record.organization_id


async def _create_customer(ctx: Ctx, values: dict[str, Any]) -> str:
    customer_id = values.pop("user_id")
    if not customer_id:
        raise InvalidRequest("Give the customer's id: the one its requests send",
                             param="user_id")
    record = await ctx.services.customers.new(customer_id, values)
    return record.end_user_id


async def _update_team(ctx: Ctx, ident: str, values: dict[str, Any]) -> None:
    await ctx.services.teams.update(ident, TeamSettings(**values), set(values))


async def _update_user(ctx: Ctx, ident: str, values: dict[str, Any]) -> None:
    await ctx.services.users.update(ident, UserSettings(**values), set(values))


async def _update_org(ctx: Ctx, ident: str, values: dict[str, Any]) -> None:
    await ctx.services.organizations.update(ident, values)


async def _update_customer(ctx: Ctx, ident: str, values: dict[str, Any]) -> None:
    await ctx.services.customers.update(ident, values)


_CREATE: dict[str, Callable[[Ctx, dict[str, Any]], Awaitable[str]]] = {
    "team": _create_team, "user": _create_user, "organization": _create_org,
    "customer": _create_customer}
_UPDATE: dict[str, Callable[[Ctx, str, dict[str, Any]], Awaitable[None]]] = {
    "team": _update_team, "user": _update_user, "organization": _update_org,
    "customer": _update_customer}


def _bound(handler: Callable[[Ctx, Kind], Awaitable[Response]],
           kind: Kind) -> Callable[[Ctx], Awaitable[Response]]:
    async def page(ctx: Ctx) -> Response:
        return await handler(ctx, kind)
    return page


def _routes(kind: Kind) -> list[PageRoute]:
    """The kind's pages, each admitted by the rule of the admin route it does (/team/list,
    /team/new, ...; an organization is blocked through /organization/update)."""
    p, api = kind.path, "/" + kind.level
    post = ("POST",)
    routes = [
        PageRoute(p, _bound(list_payers, kind), api=f"{api}/list"),
        PageRoute(f"{p}/new", _bound(new_form, kind), api=f"{api}/new"),
        PageRoute(f"{p}/new", _bound(create, kind), methods=post, api=f"{api}/new"),
        PageRoute(p + "/{ident}", _bound(show, kind), api=f"{api}/info"),
        PageRoute(p + "/{ident}/edit", _bound(edit_form, kind), api=f"{api}/update"),
        PageRoute(p + "/{ident}/edit", _bound(edit, kind), methods=post, api=f"{api}/update"),
    ]
    if kind.blockable:
        block_api = f"{api}/update" if kind.level == "organization" else f"{api}/block"
        routes.append(PageRoute(p + "/{ident}/block", _bound(block, kind), methods=post,
                                api=block_api))
    if kind.member_roles:
        routes += [
            PageRoute(p + "/{ident}/members", _bound(add_member, kind), methods=post,
                      api=f"{api}/member_add"),
            PageRoute(p + "/{ident}/members/remove", _bound(remove_member, kind),
                      methods=post, api=f"{api}/member_delete"),
        ]
    return routes


ROUTES = [route for kind in KINDS.values() for route in _routes(kind)]

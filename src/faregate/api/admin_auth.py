"""Who may call an admin route, and on what: LiteLLM's roles, one rule per route.

A caller is the master key (a `proxy_admin`), a virtual key acting with its user's
`user_role` (loaded with the key, keys/auth.py), or a virtual key without a user (it may
read only itself). `ROUTES` says, for each admin route, who besides a `proxy_admin` may call
it; the dependency (`Roles.access`) refuses everyone else with a 403 naming the role and the
route, before the body is looked at. A caller admitted only to its own things gets an
`Access` whose methods each handler calls once on its target (a key, a user, a team): a
target that is not the caller's is a 403 too.

    proxy_admin           every route, every target
    proxy_admin_viewer    the routes marked `viewer`, every target (reads only)
    internal_user         the routes marked `own`, on its own keys/user/spend
    internal_user_viewer  the routes marked `own="read"`, on its own things
    team admin            (an internal_user with role "admin" in members_with_roles)
                          the routes marked `team`, on that team's keys and members
    org admin             (a user with role "org_admin" in an organization's members)
                          the routes marked `org`, on that organization, its members and
                          its teams (their members, info and spend); /team/new in it
    a key without a user  the routes marked `key_self`, on itself
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request

from faregate.errors import AdminOnly, GatewayError, NotFound, ServiceUnavailable
from faregate.keys.admin import KeySettings
from faregate.keys.auth import Authenticator, Caller
from faregate.money import dollars_to_nanos, nanos_to_dollars
from faregate.records import KeyRecord
from faregate.storage.protocols import HierarchyStore

PROXY_ADMIN = "proxy_admin"
ADMIN_VIEWER = "proxy_admin_viewer"
INTERNAL_USER = "internal_user"
INTERNAL_VIEWER = "internal_user_viewer"
TEAM_ADMIN = "admin"                # a member's role in members_with_roles
ORG_ADMIN = "org_admin"             # an organization member's role
# How a key without a user (or whose user row is gone) is named in refusals.
NO_USER = "a virtual key without a user"
# What an internal_user may not change on its own key (LiteLLM: "Only proxy admins, team
# admins, or org admins can call /key/update (max_budget/spend)"); budget_duration would
# start a new budget period, blocked would lift an admin's block.
OWNER_FIXED = ("max_budget", "budget_duration", "budget_id", "blocked", "user_id",
               "team_id")
# What a team admin may not change on its team's keys: moving a key is a proxy_admin's.
TEAM_FIXED = ("user_id", "team_id")


@dataclass(frozen=True)
class Rule:
    """Who besides a proxy_admin may call a route.

    viewer:   a proxy_admin_viewer, on every target (set only on reads)
    own:      "read": both internal roles on their own things; "write": internal_user only
    team:     an internal_user who is a team admin, on that team's keys and members
    org:      a user who is an org_admin of an organization, on it, its members, its teams
    key_self: a virtual key without a user, on itself
    """

    viewer: bool = False
    own: Literal["read", "write"] | None = None
    team: bool = False
    org: bool = False
    key_self: bool = False


ADMIN = Rule()
READ = Rule(viewer=True)
OWN_KEYS = Rule(own="write", team=True)
SEEN_MODELS = Rule(viewer=True, own="read", key_self=True)

# Every admin route (FastAPI's path template, and the raw /health routes) -> its rule. A route
# missing here is proxy_admin-only (tests/api/test_roles.py checks each one is listed).
ROUTES: dict[str, Rule] = {
    "/key/generate": OWN_KEYS,
    "/key/update": OWN_KEYS,
    "/key/delete": OWN_KEYS,
    "/key/regenerate": OWN_KEYS,
    "/key/{key}/regenerate": OWN_KEYS,
    "/key/info": Rule(viewer=True, own="read", team=True, key_self=True),
    "/key/list": Rule(viewer=True, own="read", team=True),
    "/key/block": ADMIN,
    "/key/unblock": ADMIN,
    "/spend/logs": Rule(viewer=True, own="read", key_self=True),
    "/global/spend": READ,
    "/global/spend/report": READ,
    "/global/spend/keys": READ,
    "/global/spend/teams": READ,
    "/global/spend/models": READ,
    "/global/spend/end_users": READ,
    "/user/daily/activity": Rule(viewer=True, own="read"),
    "/team/daily/activity": Rule(viewer=True, team=True, org=True),
    "/user/new": ADMIN,
    "/user/info": Rule(viewer=True, own="read"),
    "/user/update": ADMIN,
    "/user/delete": ADMIN,
    "/user/list": READ,
    "/team/new": Rule(org=True),        # an org_admin: in its organization
    "/team/info": Rule(viewer=True, own="read", team=True, org=True),
    "/team/update": ADMIN,
    "/team/delete": ADMIN,
    "/team/list": Rule(viewer=True, own="read"),
    "/team/member_add": Rule(team=True, org=True),
    "/team/member_delete": Rule(team=True, org=True),
    "/team/member_update": Rule(team=True, org=True),
    "/team/block": ADMIN,
    "/team/unblock": ADMIN,
    "/team/model/add": ADMIN,
    "/team/model/delete": ADMIN,
    "/model/new": ADMIN,
    "/model/update": ADMIN,
    "/model/delete": ADMIN,
    # Any key: a proxy_admin or viewer sees every model, others those they may call.
    "/model/info": SEEN_MODELS,
    "/v1/model/info": SEEN_MODELS,
    "/organization/new": ADMIN,
    "/organization/info": Rule(viewer=True, org=True),
    "/organization/update": ADMIN,
    "/organization/delete": ADMIN,
    "/organization/list": READ,
    "/organization/member_add": Rule(org=True),
    "/organization/member_update": Rule(org=True),
    "/organization/member_delete": Rule(org=True),
    **{f"{prefix}/{verb}": READ if verb in ("info", "list") else ADMIN
       for prefix in ("/customer", "/end_user")
       for verb in ("new", "info", "update", "delete", "list", "block", "unblock")},
    "/budget/new": ADMIN,
    "/budget/info": READ,           # a POST that reads, as LiteLLM takes it
    "/budget/update": ADMIN,
    "/budget/delete": ADMIN,
    "/budget/list": READ,
    "/health": READ,
    "/health/deployments": READ,
}


def _refuse(message: str, code: str = "admin_only") -> AdminOnly:
    return AdminOnly(message, code=code)


class Roles:
    """Decides every admin call: `access` is the FastAPI dependency, `check` the same for the
    raw ASGI routes (/health)."""

    def __init__(self, auth: Authenticator, store: HierarchyStore) -> None:
        self._auth = auth
        self._store = store

    async def access(self, request: Request) -> Access:
        """A dependency (`Annotated[Access, Depends(roles.access)]`): the caller of this
        route (401 if unknown), admitted by the route's rule (403 naming the role if not)."""
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        headers = request.headers
        return await self.check(headers.get("authorization"),
                                headers.get("x-api-key") or headers.get("api-key"), path)

    async def check(self, authorization: str | None, api_key: str | None,
                    route: str) -> Access:
        caller = await self._auth.caller(authorization, api_key)
        if not caller.is_master:
            # The role from the rows as they are now, not a cached copy: a demotion made on
            # another replica holds at once (admin calls are rare; the cost is one read).
            try:
                caller = await self._auth.reload(caller)
            except ServiceUnavailable:
                raise ServiceUnavailable(
                    "The database is unreachable; admin calls read the caller's role from it. "
                    "Retry when /health/readiness reports db: connected",
                    code="database_unavailable") from None
        return self.admit(caller, route)

    def admit(self, caller: Caller, route: str) -> Access:
        rule = ROUTES.get(route, ADMIN)
        role = role_of(caller)
        if role == PROXY_ADMIN or (role == ADMIN_VIEWER and rule.viewer):
            return Access(caller, role, route, rule, True, self._store)
        allowed = ((role == INTERNAL_USER and (rule.own is not None or rule.team))
                   or (role == INTERNAL_VIEWER and rule.own == "read")
                   or (role is not None and rule.org)     # org_admin: decided on the target
                   or (role is None and rule.key_self))
        if not allowed:
            raise _refuse(f"{role or NO_USER} may not call {route}{_who_may(rule)}. Use the "
                          "master key, or a key of a user with one of those roles",
                          code="admin_only")
        return Access(caller, role, route, rule, False, self._store)


def role_of(caller: Caller) -> str | None:
    """The caller's LiteLLM role: proxy_admin for the master key, else its user's user_role;
    None for a key without a user (or whose user row is gone)."""
    if caller.is_master:
        return PROXY_ADMIN
    user = caller.payers.user if caller.payers is not None else None
    if user is None or caller.key.user_id is None:
        return None
    return user.user_role


def _who_may(rule: Rule) -> str:
    may = [PROXY_ADMIN]
    if rule.viewer:
        may.append(ADMIN_VIEWER)
    if rule.own == "write":
        may.append(f"{INTERNAL_USER} (its own)")
    elif rule.own == "read":
        may.append(f"{INTERNAL_USER} and {INTERNAL_VIEWER} (their own)")
    if rule.team:
        may.append("a team admin (its team's)")
    if rule.org:
        may.append(f"an {ORG_ADMIN} (its organization's)")
    return f"; it is for {', '.join(may)}"


@dataclass
class Access:
    """A caller admitted to one route, and what it may touch there. `everything`: a
    proxy_admin, or a proxy_admin_viewer on a read. Otherwise each handler names its target
    (`key`, `user`, `team`, `new_key`, `change_key`) and a target not the caller's is a 403."""

    caller: Caller
    role: str | None                # None: a key without a user
    route: str
    rule: Rule
    everything: bool
    _store: HierarchyStore
    _teams: dict[str, str] | None = field(default=None)
    _orgs: dict[str, bool] = field(default_factory=dict)

    @property
    def user_id(self) -> str | None:
        return self.caller.key.user_id if self.role is not None else None

    @property
    def who(self) -> str:
        return self.role or NO_USER

    async def teams(self) -> dict[str, str]:
        """The caller's teams: team_id -> its role there (read once per request)."""
        if self._teams is None:
            self._teams = {} if self.user_id is None else {
                m.team_id: m.role for m in await self._store.list_user_teams(self.user_id)}
        return self._teams

    async def team_admin_of(self, team_id: str | None) -> bool:
        """An internal_user with role admin in this team, on a route marked `team`."""
        return (team_id is not None and self.rule.team and self.role == INTERNAL_USER
                and (await self.teams()).get(team_id) == TEAM_ADMIN)

    async def org_admin_of(self, organization_id: str | None) -> bool:
        """A user with role org_admin in this organization, on a route marked `org`."""
        if organization_id is None or not self.rule.org or self.user_id is None:
            return False
        if organization_id not in self._orgs:
            members = await self._store.list_organization_members(organization_id)
            self._orgs[organization_id] = any(
                m.user_id == self.user_id and m.user_role == ORG_ADMIN for m in members)
        return self._orgs[organization_id]

    async def organization(self, organization_id: str) -> None:
        """The caller may act on this organization (its members, its info and spend): as
        its org_admin."""
        if self.everything or await self.org_admin_of(organization_id):
            return
        raise _refuse(f"{self.who} may call {self.route} only for an organization where it "
                      f"is {ORG_ADMIN}; not for organization {organization_id!r}",
                      code="not_owner")

    async def new_team(self, organization_id: str | None) -> None:
        """/team/new: an org_admin makes teams only in an organization it administers."""
        if self.everything or await self.org_admin_of(organization_id):
            return
        where = "without an organization_id" if organization_id is None \
            else f"in organization {organization_id!r}"
        raise _refuse(f"{self.who} may not call {self.route} {where}; it is for "
                      f"{PROXY_ADMIN}, or an {ORG_ADMIN} in its organization (pass its "
                      "organization_id)", code="admin_only")

    async def _team_in_own_org(self, team_id: str) -> bool:
        if not self.rule.org or self.user_id is None:
            return False
        team = await self._store.get_team(team_id)
        return team is not None and await self.org_admin_of(team.organization_id)

    def _own(self, user_id: str | None) -> bool:
        return self.rule.own is not None and user_id is not None and user_id == self.user_id

    async def key(self, record: KeyRecord | None) -> KeyRecord:
        """The key, if the caller may act on it: its own (its user_id; itself, for a key
        without a user), or its team's as team admin. No key: 404 for a proxy_admin or
        viewer, 403 for others (whether someone else's key exists is not theirs to learn)."""
        if record is None:
            if self.everything:
                raise NotFound("No such key. Pass the key (sk-...) or its hash as `key`",
                               code="key_not_found")
            raise _refuse(f"{self.who} may call {self.route} only on its own keys; that key "
                          "is not", code="not_owner")
        if self.everything or self._own(record.user_id):
            return record
        if self.rule.key_self and record.token == self.caller.key.token:
            return record
        if await self.team_admin_of(record.team_id):
            return record
        also = " (or, as team admin, its team's)" if self.rule.team else ""
        raise _refuse(f"{self.who} may call {self.route} only on its own keys{also}; key "
                      f"{record.key_name} is not", code="not_owner")

    async def keys(self, records: Iterable[KeyRecord]) -> None:
        for record in records:
            await self.key(record)

    def user(self, user_id: str | None) -> str | None:
        """The user whose things are read: `user_id` as given for a proxy_admin or viewer;
        for others their own id (`user_id` may only name it)."""
        if self.everything:
            return user_id
        if self.user_id is not None and self.rule.own is not None \
                and user_id in (None, self.user_id):
            return self.user_id
        named = "" if user_id is None else f", not for user {user_id!r}"
        raise _refuse(f"{self.who} may call {self.route} only for itself{named}",
                      code="not_owner")

    def rows(self, token: str | None, user_id: str | None) -> tuple[str | None, str | None]:
        """/spend/logs' (key, user) filters for this caller: as asked for a proxy_admin or
        viewer; a user's requests only for a user; its own key's for a key without one."""
        if self.everything:
            return token, user_id
        if self.role is not None:
            return token, self.user(user_id)
        if token not in (None, self.caller.key.token) or user_id is not None:
            raise _refuse(f"{self.who} may read only its own key's rows on {self.route}",
                          code="not_owner")
        return self.caller.key.token, None

    async def team(self, team_id: str) -> None:
        """The caller may act on this team: as its admin (routes marked `team`), as the
        org_admin of its organization (routes marked `org`), or, on a read marked `own`, as
        any member."""
        if self.everything or await self.team_admin_of(team_id):
            return
        if self.rule.own == "read" and team_id in await self.teams():
            return
        if await self._team_in_own_org(team_id):
            return
        relation = "belongs to" if self.rule.own == "read" else "administers"
        org = f" (or in an organization where it is {ORG_ADMIN})" if self.rule.org else ""
        raise _refuse(f"{self.who} may call {self.route} only for a team it {relation}{org}; "
                      f"not for team {team_id!r}", code="not_owner")

    async def new_key(self, asked: KeySettings, given: Collection[str]) -> str | None:
        """/key/generate: the user_id the new key gets. An internal_user makes keys for
        itself (user_id defaults to it), in a team only if a member, with a max_budget no
        more than its own and no named budget; a team admin makes its team's keys for any
        member, or for none."""
        user_id, team_id = asked.user_id, asked.team_id
        if self.everything:
            return user_id
        if await self.team_admin_of(team_id):
            assert team_id is not None
            if user_id is not None and user_id != self.user_id and \
                    await self._store.get_team_member(team_id, user_id) is None:
                raise _refuse(f"{self.who} may call {self.route} for team {team_id!r} (as "
                              f"its admin) only for its members; {user_id!r} is not one",
                              code="not_owner")
            return user_id
        if user_id is not None and user_id != self.user_id:
            raise _refuse(f"{self.who} may call {self.route} only for itself (user_id "
                          f"{self.user_id!r}), not for {user_id!r}", code="not_owner")
        if team_id is not None and team_id not in await self.teams():
            raise _refuse(f"{self.who} may call {self.route} only in a team it belongs to; "
                          f"not in team {team_id!r}", code="not_owner")
        if "max_budget" in given:
            self._within_own_budget(asked.max_budget)
        if asked.budget_id is not None:
            raise _refuse(f"{self.who} may not set budget_id on {self.route} (a named "
                          "budget's terms could exceed its own); ask a proxy_admin",
                          code="not_owner")
        return self.user_id

    async def change_key(self, found: KeyRecord | None, given: Collection[str]) -> None:
        """/key/update: the caller may act on the key and change each field it names. Its
        owner may not change OWNER_FIXED (a team admin of the key's team: TEAM_FIXED)."""
        record = await self.key(found)
        if self.everything:
            return
        fixed = TEAM_FIXED if await self.team_admin_of(record.team_id) else OWNER_FIXED
        asked = [name for name in fixed if name in given]
        if asked:
            raise _refuse(f"{self.who} may not change {', '.join(asked)} of a key on "
                          f"{self.route}; ask a proxy_admin", code="not_owner")

    def _within_own_budget(self, max_budget: float | None) -> None:
        ceiling = _own_ceiling(self.caller)
        if ceiling is None:
            return
        if max_budget is None or dollars_to_nanos(max_budget, "max_budget") > ceiling:
            raise _refuse(f"max_budget ({max_budget}) cannot exceed the caller's own "
                          f"max_budget ({nanos_to_dollars(ceiling)}): {self.who} may not call "
                          f"{self.route} for more; ask a proxy_admin", code="budget_above_own")


def _own_ceiling(caller: Caller) -> int | None:
    """The most a non-admin's new key may budget, in nano-dollars: its user's max_budget,
    else its calling key's; None: no ceiling."""
    payers = caller.payers
    user = payers.user if payers is not None else None
    if user is not None and user.max_budget_nanos is not None:
        return user.max_budget_nanos
    return caller.key.max_budget_nanos


async def refused(roles: Roles, authorization: str | None, api_key: str | None,
                  route: str) -> GatewayError | None:
    """For raw ASGI routes: None if the caller may call `route`, else the error to send."""
    try:
        await roles.check(authorization, api_key, route)
    except GatewayError as exc:
        return exc
    return None

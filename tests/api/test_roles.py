"""LiteLLM's roles on every admin route: a table of caller x route -> status, and the named
cases of issue 14 part 5 (key isolation between two internal users, a team admin outside its
team, viewers trying to write, an internal_user giving itself another user_id or a bigger
budget). The table runs on SQLite (the checks are the same SQL on both backends: the
membership and key reads); the named cases on SQLite and Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from api.conftest import Clock, RunningGateway, serve
from api.openai_shape import openai_error
from support import MASTER_KEY, env_for, write_config

from faregate import config
from faregate.api.admin_auth import ROUTES, Roles
from faregate.app import Faregate
from faregate.errors import ServiceUnavailable
from faregate.keys.auth import Authenticator, Caller
from faregate.records import KeyRecord
from faregate.storage import migrate
from faregate.storage.protocols import HierarchyStore

DAYS = {"start_date": "2026-01-01", "end_date": "2026-01-02"}
# The callers of the table: the master key, a key of a user with each role, a team admin
# (an internal_user with role admin in its team) and a key without a user.
CALLERS = ["master", "proxy_admin", "proxy_admin_viewer", "internal_user",
           "internal_user_viewer", "team_admin", "no_user"]
ADMINS = {"master", "proxy_admin"}
READERS = ADMINS | {"proxy_admin_viewer"}
OWN_WRITE = ADMINS | {"internal_user", "team_admin"}
OWN_READ = READERS | {"internal_user", "internal_user_viewer", "team_admin"}
TEAM = ADMINS | {"team_admin"}


@dataclass
class World:
    """What the table's requests name: the caller's own keys (by purpose), its team
    (t-mine, where it is a member; admin for team_admin), and spare things to change."""

    keys: dict[str, str]
    model_id: str


Request = Callable[[World], tuple[str, str, dict[str, Any]]]


def req(method: str, path: str, **kwargs: Any) -> Request:
    return lambda w: (method, path, kwargs)


def _req(method: str, path: str, kwargs: dict[str, Any]) -> Request:
    return lambda w: (method, path, kwargs)


def on_key(method: str, path: str, purpose: str, **body: Any) -> Request:
    return lambda w: (method, path.format(key=w.keys[purpose]),
                      {"json": {"key": w.keys[purpose], **body}} if "{key}" not in path
                      else {})


# (method, route as ROUTES names it, request, who gets 200; everyone else gets 403)
TABLE: list[tuple[str, Request, set[str]]] = [
    ("/key/generate", req("POST", "/key/generate", json={"team_id": "t-mine"}), OWN_WRITE),
    ("/key/update", on_key("POST", "/key/update", "update", key_alias="renamed"),
     OWN_WRITE),
    ("/key/delete", lambda w: ("POST", "/key/delete", {"json": {"keys": [w.keys["delete"]]}}),
     OWN_WRITE),
    ("/key/regenerate", on_key("POST", "/key/regenerate", "regen"), OWN_WRITE),
    ("/key/{key}/regenerate", on_key("POST", "/key/{key}/regenerate", "regen2"), OWN_WRITE),
    ("/key/info", lambda w: ("GET", "/key/info", {"params": {"key": w.keys["mine"]}}),
     OWN_READ | {"no_user"}),
    ("/key/list", req("GET", "/key/list"), OWN_READ),
    ("/key/block", on_key("POST", "/key/block", "spare"), ADMINS),
    ("/key/unblock", on_key("POST", "/key/unblock", "spare"), ADMINS),
    ("/spend/logs", req("GET", "/spend/logs"), OWN_READ | {"no_user"}),
    ("/global/spend", req("GET", "/global/spend"), READERS),
    ("/global/spend/report", req("GET", "/global/spend/report", params=DAYS), READERS),
    ("/global/spend/keys", req("GET", "/global/spend/keys"), READERS),
    ("/global/spend/teams", req("GET", "/global/spend/teams"), READERS),
    ("/global/spend/models", req("GET", "/global/spend/models"), READERS),
    ("/global/spend/end_users", req("POST", "/global/spend/end_users", json={}), READERS),
    ("/user/daily/activity", req("GET", "/user/daily/activity", params=DAYS), OWN_READ),
    ("/team/daily/activity", req("GET", "/team/daily/activity",
                                 params={**DAYS, "team_ids": "t-mine"}),
     READERS | {"team_admin"}),
    ("/user/new", req("POST", "/user/new", json={"user_id": "made"}), ADMINS),
    ("/user/info", req("GET", "/user/info"), OWN_READ - {"master"}),  # master: 400, no id
    ("/user/update", req("POST", "/user/update", json={"user_id": "spare-user",
                                                       "user_alias": "x"}), ADMINS),
    ("/user/delete", req("POST", "/user/delete", json={"user_ids": ["doomed-user"]}), ADMINS),
    ("/user/list", req("GET", "/user/list"), READERS),
    ("/team/new", req("POST", "/team/new", json={"team_id": "made"}), ADMINS),
    ("/team/info", req("GET", "/team/info", params={"team_id": "t-mine"}), OWN_READ),
    ("/team/update", req("POST", "/team/update", json={"team_id": "t-spare",
                                                       "team_alias": "x"}), ADMINS),
    ("/team/delete", req("POST", "/team/delete", json={"team_ids": ["t-doomed"]}), ADMINS),
    ("/team/list", req("GET", "/team/list"), OWN_READ),
    ("/team/member_add", req("POST", "/team/member_add", json={
        "team_id": "t-mine", "member": {"user_id": "newcomer", "role": "user"}}), TEAM),
    ("/team/member_update", req("POST", "/team/member_update", json={
        "team_id": "t-mine", "user_id": "member-a", "max_budget_in_team": 1}), TEAM),
    ("/team/member_delete", req("POST", "/team/member_delete", json={
        "team_id": "t-mine", "user_id": "member-b"}), TEAM),
    ("/team/block", req("POST", "/team/block", json={"team_id": "t-spare"}), ADMINS),
    ("/team/unblock", req("POST", "/team/unblock", json={"team_id": "t-spare"}), ADMINS),
    ("/team/model/add", req("POST", "/team/model/add", json={
        "team_id": "t-spare", "models": ["qwen-local"]}), ADMINS),
    ("/team/model/delete", req("POST", "/team/model/delete", json={
        "team_id": "t-spare", "models": ["qwen-local"]}), ADMINS),
    ("/model/new", req("POST", "/model/new", json={
        "model_name": "made", "litellm_params": {
            "model": "openai/x", "api_base": "http://127.0.0.1:9/v1",
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}), ADMINS),
    ("/model/update", lambda w: ("POST", "/model/update", {"json": {
        "id": w.model_id, "model_name": "renamed"}}), ADMINS),
    ("/model/info", req("GET", "/model/info"), set(CALLERS)),      # each sees its models
    ("/v1/model/info", req("GET", "/v1/model/info"), set(CALLERS)),
    ("/model/delete", lambda w: ("POST", "/model/delete", {"json": {"id": w.model_id}}),
     ADMINS),
    ("/organization/new", req("POST", "/organization/new", json={
        "organization_alias": "made"}), ADMINS),
    ("/organization/info", req("GET", "/organization/info", params={
        "organization_id": "org"}), READERS),
    ("/organization/update", req("POST", "/organization/update", json={
        "organization_id": "org", "organization_alias": "renamed"}), ADMINS),
    ("/organization/list", req("GET", "/organization/list"), READERS),
    ("/organization/member_add", req("POST", "/organization/member_add", json={
        "organization_id": "org", "member": {"user_id": "newcomer",
                                             "role": "internal_user"}}), ADMINS),
    ("/organization/member_update", req("POST", "/organization/member_update", json={
        "organization_id": "org", "user_id": "member-a", "role": "internal_user_viewer"}),
     ADMINS),
    ("/organization/member_delete", req("POST", "/organization/member_delete", json={
        "organization_id": "org", "user_id": "member-b"}), ADMINS),
    ("/organization/delete", req("POST", "/organization/delete", json={
        "organization_ids": ["org-doomed"]}), ADMINS),
    *[(f"{p}/{verb}", _req(*call), allowed) for p in ("/customer", "/end_user")
      for verb, call, allowed in [
          ("new", ("POST", f"{p}/new", {"json": {"user_id": f"made{p[1]}"}}), ADMINS),
          ("info", ("GET", f"{p}/info", {"params": {"end_user_id": "cust"}}), READERS),
          ("update", ("POST", f"{p}/update", {"json": {"user_id": "cust", "alias": "x"}}),
           ADMINS),
          ("list", ("GET", f"{p}/list", {}), READERS),
          ("block", ("POST", f"{p}/block", {"json": {"user_ids": ["cust"]}}), ADMINS),
          ("unblock", ("POST", f"{p}/unblock", {"json": {"user_ids": ["cust"]}}), ADMINS),
          ("delete", ("POST", f"{p}/delete", {"json": {"user_ids": [f"doomed{p[1]}"]}}),
           ADMINS)]],
    ("/budget/new", req("POST", "/budget/new", json={"budget_id": "made"}), ADMINS),
    ("/budget/info", req("POST", "/budget/info", json={"budgets": ["budget"]}), READERS),
    ("/budget/update", req("POST", "/budget/update", json={
        "budget_id": "budget", "max_budget": 5}), ADMINS),
    ("/budget/list", req("GET", "/budget/list"), READERS),
    ("/budget/delete", req("POST", "/budget/delete", json={"id": "budget-doomed"}), ADMINS),
    ("/health/deployments", req("GET", "/health/deployments"), READERS),
]


@pytest.fixture
async def lite(mock_upstream: str, tmp_path: Path, clock: Clock
               ) -> AsyncIterator[RunningGateway]:
    """A gateway on SQLite only, for the table (see the module docstring)."""
    url = f"sqlite:///{tmp_path / 'faregate.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    settings = config.load({**os.environ, **env_for(url, tmp_path)},
                           write_config(tmp_path / "config.yaml", mock_upstream))
    async with serve(Faregate.from_settings(settings, now=clock.now)) as running:
        yield running


async def ok(gw: RunningGateway, method: str, path: str, **kwargs: Any) -> Any:
    resp = await gw.admin(method, path, **kwargs)
    assert resp.status_code == 200, (path, resp.text)
    return resp.json()


async def make_user(gw: RunningGateway, user_id: str, role: str, **fields: Any) -> str:
    """A user with `role` and a key of its own; returns the key."""
    await ok(gw, "POST", "/user/new", json={"user_id": user_id, "user_role": role, **fields})
    return await gw.new_key(user_id=user_id, models=[])


async def world(gw: RunningGateway, caller: str) -> tuple[str, World]:
    """Everything the table names, made with the master key; returns the caller's key."""
    me = None if caller in ("master", "no_user") else "me"
    if me is not None:
        role = "internal_user" if caller == "team_admin" else caller
        await ok(gw, "POST", "/user/new", json={"user_id": me, "user_role": role})
    for user in ("spare-user", "doomed-user", "member-a", "member-b"):
        await ok(gw, "POST", "/user/new", json={"user_id": user})
    members = [{"user_id": "member-a", "role": "user"}, {"user_id": "member-b", "role": "user"}]
    if me is not None:
        members.append({"user_id": me, "role": "admin" if caller == "team_admin" else "user"})
    await ok(gw, "POST", "/team/new", json={"team_id": "t-mine", "members_with_roles": members})
    for team in ("t-spare", "t-doomed"):
        await ok(gw, "POST", "/team/new", json={"team_id": team})
    owner = {"user_id": me} if me is not None else {}
    keys = {purpose: await gw.new_key(models=[], **owner)
            for purpose in ("mine", "update", "delete", "regen", "regen2", "spare")}
    model = await ok(gw, "POST", "/model/new", json={
        "model_name": "spare-model", "litellm_params": {
            "model": "openai/x", "api_base": "http://127.0.0.1:9/v1",
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}})
    for org in ("org", "org-doomed"):
        await ok(gw, "POST", "/organization/new", json={"organization_id": org,
                                                        "organization_alias": org})
    await ok(gw, "POST", "/organization/member_add", json={
        "organization_id": "org", "member": [{"user_id": "member-a", "role": "internal_user"},
                                             {"user_id": "member-b", "role": "internal_user"}]})
    for customer in ("cust", "doomedc", "doomede"):
        await ok(gw, "POST", "/customer/new", json={"user_id": customer})
    for budget in ("budget", "budget-doomed"):
        await ok(gw, "POST", "/budget/new", json={"budget_id": budget, "max_budget": 1})
    caller_key = MASTER_KEY if caller == "master" else keys["mine"]
    return caller_key, World(keys, model["model_id"])


def test_the_table_covers_every_rule_and_every_admin_route() -> None:
    """A new admin route needs a rule in ROUTES (else it is proxy_admin-only) and a row here."""
    assert {route for route, _, _ in TABLE} | {"/health"} == set(ROUTES)


async def test_every_admin_route_is_in_the_rules(lite: RunningGateway) -> None:
    paths = {getattr(r, "path", None) for r in lite.app.admin.routes}
    admin_paths = {p for p in paths if p and not p.startswith(("/openapi", "/ui", "/docs"))}
    missing = admin_paths - set(ROUTES)
    assert not missing, f"routes without a rule in api/admin_auth.py ROUTES: {missing}"


@pytest.mark.parametrize("caller", CALLERS)
async def test_role_by_route(lite: RunningGateway, caller: str) -> None:
    key, w = await world(lite, caller)
    wrong = []
    for route, request, allowed in TABLE:
        method, path, kwargs = request(w)
        resp = await lite.http.request(method, path, headers={
            "Authorization": f"Bearer {key}"}, **kwargs)
        expected = 200 if caller in allowed else 403
        if route == "/user/info" and caller == "master":
            expected = 400                      # the master key is no user: name one
        if resp.status_code != expected:
            wrong.append((route, expected, resp.status_code, resp.text[:200]))
        elif expected == 403:
            error = openai_error(403, resp.json())
            who = "a virtual key without a user" if caller == "no_user" else (
                "internal_user" if caller == "team_admin" else caller)
            if not (error["type"] == "auth_error" and who in error["message"]
                    and route.split("{")[0].rstrip("/") in error["message"]):
                wrong.append((route, "403 naming role and route", error))
    assert not wrong, wrong


async def test_unknown_or_absent_keys_stay_401(gateway: RunningGateway) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-nobody-knows-this-key"}):
        for path in ("/key/list", "/team/list", "/health/deployments", "/user/info"):
            resp = await gateway.http.get(path, headers=headers)
            assert resp.status_code == 401, (path, resp.text)


async def test_a_demoted_user_loses_its_powers_at_once(gateway: RunningGateway) -> None:
    key = await make_user(gateway, "boss", "proxy_admin")
    auth = {"Authorization": f"Bearer {key}"}
    assert (await gateway.http.post("/team/new", json={"team_id": "a"},
                                    headers=auth)).status_code == 200
    await ok(gateway, "POST", "/user/update", json={"user_id": "boss",
                                                    "user_role": "internal_user"})
    resp = await gateway.http.post("/team/new", json={"team_id": "b"}, headers=auth)
    assert resp.status_code == 403
    assert "internal_user may not call /team/new" in resp.json()["error"]["message"]


async def call(gw: RunningGateway, key: str, method: str, path: str,
               **kwargs: Any) -> Any:
    return await gw.http.request(method, path, headers={"Authorization": f"Bearer {key}"},
                                 **kwargs)


async def refused(gw: RunningGateway, key: str, method: str, path: str, says: str,
                  **kwargs: Any) -> dict[str, Any]:
    resp = await call(gw, key, method, path, **kwargs)
    error = openai_error(resp.status_code, resp.json())
    assert resp.status_code == 403 and says in error["message"], (path, resp.text)
    return error


async def test_two_internal_users_cannot_touch_each_others_keys(
        gateway: RunningGateway) -> None:
    alice = await make_user(gateway, "alice", "internal_user")
    bob = await make_user(gateway, "bob", "internal_user")
    bobs_other = await gateway.new_key(user_id="bob", models=[])
    # each makes a request, so each has spend rows
    for key in (alice, bob):
        resp = await call(gateway, key, "POST", "/v1/chat/completions", json={
            "model": "qwen-local", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4})
        assert resp.status_code == 200, resp.text
    await gateway.app.ledger.flush()

    for method, path, kwargs in [
            ("GET", "/key/info", {"params": {"key": bob}}),
            ("POST", "/key/update", {"json": {"key": bobs_other, "key_alias": "mine now"}}),
            ("POST", "/key/delete", {"json": {"keys": [bobs_other]}}),
            ("POST", "/key/regenerate", {"json": {"key": bobs_other}}),
            ("POST", f"/key/{bobs_other}/regenerate", {})]:
        error = await refused(gateway, alice, method, path, "internal_user may call", **kwargs)
        assert error["code"] == "not_owner"
    # a list naming one of bob's keys deletes nothing, not even alice's own
    await refused(gateway, alice, "POST", "/key/delete", "only on its own keys",
                  json={"keys": [alice, bobs_other]})
    for method, path, kwargs in [
            ("GET", "/key/list", {"params": {"user_id": "bob"}}),
            ("GET", "/spend/logs", {"params": {"user_id": "bob"}}),
            ("GET", "/user/info", {"params": {"user_id": "bob"}}),
            ("GET", "/user/daily/activity", {"params": {**DAYS, "user_id": "bob"}})]:
        await refused(gateway, alice, method, path, "only for itself", **kwargs)

    # what alice sees of her own: her keys, her rows, herself
    listed = (await call(gateway, alice, "GET", "/key/list")).json()
    assert listed["total_count"] == 1
    rows = (await call(gateway, alice, "GET", "/spend/logs")).json()
    assert [r["user"] for r in rows] == ["alice"]
    # naming bob's key as a filter still shows only alice's rows: none
    rows = (await call(gateway, alice, "GET", "/spend/logs", params={"api_key": bob})).json()
    assert rows == []
    me = (await call(gateway, alice, "GET", "/user/info")).json()
    assert me["user_id"] == "alice" and len(me["keys"]) == 1
    # and bob's keys are all still there, unchanged
    bobs = await ok(gateway, "GET", "/key/list", params={"user_id": "bob",
                                                         "return_full_object": "true"})
    assert bobs["total_count"] == 2 and all(k["key_alias"] is None for k in bobs["keys"])
    # her own key she may manage
    own = await gateway.new_key(user_id="alice", models=[])
    resp = await call(gateway, alice, "POST", "/key/update", json={"key": own,
                                                                   "key_alias": "laptop"})
    assert resp.status_code == 200 and resp.json()["key_alias"] == "laptop"
    resp = await call(gateway, alice, "POST", "/key/regenerate", json={"key": own})
    assert resp.status_code == 200
    resp = await call(gateway, alice, "POST", "/key/delete", json={"keys": [resp.json()["key"]]})
    assert resp.status_code == 200


async def test_a_team_admin_manages_its_team_and_nothing_else(gateway: RunningGateway) -> None:
    tad = await make_user(gateway, "tad", "internal_user")
    await ok(gateway, "POST", "/user/new", json={"user_id": "mia"})
    await ok(gateway, "POST", "/team/new", json={"team_id": "t1", "members_with_roles": [
        {"user_id": "tad", "role": "admin"}, {"user_id": "mia", "role": "user"}]})
    await ok(gateway, "POST", "/team/new", json={"team_id": "t2", "members_with_roles": [
        {"user_id": "mia", "role": "admin"}]})
    t2_key = await gateway.new_key(team_id="t2", user_id="mia", models=[])

    # in its team: members, keys for members or for the team, the team's keys, its info
    resp = await call(gateway, tad, "POST", "/team/member_add", json={
        "team_id": "t1", "member": {"user_id": "noa", "role": "user"}})
    assert resp.status_code == 200, resp.text
    resp = await call(gateway, tad, "POST", "/key/generate", json={"team_id": "t1",
                                                                   "user_id": "mia"})
    assert resp.status_code == 200 and resp.json()["user_id"] == "mia", resp.text
    mias = resp.json()["key"]
    resp = await call(gateway, tad, "POST", "/key/generate", json={"team_id": "t1"})
    assert resp.status_code == 200 and resp.json()["user_id"] is None   # the team's key
    resp = await call(gateway, tad, "POST", "/key/update", json={"key": mias,
                                                                 "max_budget": 3})
    assert resp.status_code == 200 and resp.json()["max_budget"] == 3
    resp = await call(gateway, tad, "GET", "/team/info", params={"team_id": "t1"})
    assert resp.status_code == 200 and len(resp.json()["keys"]) == 2
    resp = await call(gateway, tad, "POST", "/team/member_update", json={
        "team_id": "t1", "user_id": "noa", "max_budget_in_team": 2})
    assert resp.status_code == 200
    resp = await call(gateway, tad, "POST", "/team/member_delete", json={
        "team_id": "t1", "user_id": "noa"})
    assert resp.status_code == 200

    # outside it: another team's members, keys and info; a non-member; moving a key
    for method, path, kwargs in [
            ("POST", "/team/member_add", {"json": {"team_id": "t2", "member": {
                "user_id": "tad", "role": "admin"}}}),
            ("POST", "/team/member_update", {"json": {"team_id": "t2", "user_id": "mia",
                                                      "role": "user"}}),
            ("POST", "/team/member_delete", {"json": {"team_id": "t2", "user_id": "mia"}}),
            ("GET", "/team/info", {"params": {"team_id": "t2"}}),
            ("GET", "/team/daily/activity", {"params": {**DAYS, "team_ids": "t2"}})]:
        await refused(gateway, tad, method, path, "only for a team it", **kwargs)
    await refused(gateway, tad, "POST", "/key/generate", "only in a team it belongs to",
                  json={"team_id": "t2"})
    for method, path, kwargs in [
            ("POST", "/key/update", {"json": {"key": t2_key, "key_alias": "x"}}),
            ("POST", "/key/delete", {"json": {"keys": [t2_key]}}),
            ("GET", "/key/info", {"params": {"key": t2_key}})]:
        await refused(gateway, tad, method, path, "only on its own keys", **kwargs)
    await refused(gateway, tad, "POST", "/key/generate", "only for its members",
                  json={"team_id": "t1", "user_id": "stranger"})
    await refused(gateway, tad, "POST", "/key/update", "may not change team_id",
                  json={"key": mias, "team_id": "t2"})
    for path, body in [("/team/update", {"team_id": "t1", "max_budget": 100}),
                       ("/team/block", {"team_id": "t2"}), ("/team/new", {"team_id": "t3"})]:
        await refused(gateway, tad, "POST", path, f"internal_user may not call {path}",
                      json=body)
    # none of it happened
    t2 = await ok(gateway, "GET", "/team/info", params={"team_id": "t2"})
    assert [m["user_id"] for m in t2["team_memberships"]] == ["mia"]
    assert t2["team_info"]["blocked"] is False and len(t2["keys"]) == 1
    assert (await gateway.admin("GET", "/user/info", params={"user_id": "stranger"})
            ).status_code == 404


async def test_viewers_cannot_write(gateway: RunningGateway) -> None:
    viewer = await make_user(gateway, "val", "proxy_admin_viewer")
    reader = await make_user(gateway, "ivy", "internal_user_viewer")
    others = await gateway.new_key(models=[])
    for key, role in ((viewer, "proxy_admin_viewer"), (reader, "internal_user_viewer")):
        for path, body in [("/key/generate", {}), ("/key/update", {"key": key,
                                                                   "key_alias": "x"}),
                           ("/key/delete", {"keys": [key]}), ("/key/regenerate", {"key": key}),
                           ("/user/new", {"user_id": "sneaky"}),
                           ("/user/update", {"user_id": "ivy", "user_role": "proxy_admin"}),
                           ("/team/new", {"team_id": "sneaky"}),
                           ("/budget/new", {"budget_id": "sneaky"})]:
            error = await refused(gateway, key, "POST", path,
                                  f"{role} may not call {path}", json=body)
            assert error["code"] == "admin_only"
    # the admin viewer reads everything; the user viewer only its own
    assert (await call(gateway, viewer, "GET", "/key/info", params={"key": others})
            ).status_code == 200
    assert (await call(gateway, viewer, "GET", "/user/list")).json()["total"] == 2
    await refused(gateway, reader, "GET", "/key/info", "only on its own keys",
                  params={"key": others})
    await refused(gateway, reader, "GET", "/user/list", "internal_user_viewer may not call")
    assert (await call(gateway, reader, "GET", "/key/info")).status_code == 200
    # nothing was written: no user, team or budget named sneaky; the roles are unchanged
    users = await ok(gateway, "GET", "/user/list")
    assert sorted((u["user_id"], u["user_role"]) for u in users["users"]) == [
        ("ivy", "internal_user_viewer"), ("val", "proxy_admin_viewer")]
    assert (await gateway.admin("GET", "/team/info", params={"team_id": "sneaky"})
            ).status_code == 404
    assert (await ok(gateway, "GET", "/key/list"))["total_count"] == 3


async def test_an_internal_user_cannot_give_itself_another_owner_or_more_budget(
        gateway: RunningGateway) -> None:
    alice = await make_user(gateway, "alice", "internal_user", max_budget=10)
    await ok(gateway, "POST", "/user/new", json={"user_id": "bob"})
    # another user_id, or a user that does not exist (which would be made)
    for other in ("bob", "carol"):
        error = await refused(gateway, alice, "POST", "/key/generate", "only for itself",
                              json={"user_id": other})
        assert error["code"] == "not_owner"
    assert (await gateway.admin("GET", "/user/info", params={"user_id": "carol"})
            ).status_code == 404
    assert (await ok(gateway, "GET", "/key/list", params={"user_id": "bob"}))[
        "total_count"] == 0
    # a key with no user_id is hers
    resp = await call(gateway, alice, "POST", "/key/generate", json={"max_budget": 5})
    assert resp.status_code == 200 and resp.json()["user_id"] == "alice"
    own = resp.json()["key"]
    # more budget than her own, or none at all (unbounded), is refused
    for budget in (50, None):
        error = await refused(gateway, alice, "POST", "/key/generate",
                              "cannot exceed the caller's own max_budget (10",
                              json={"max_budget": budget})
        assert error["code"] == "budget_above_own"
    # nor a named budget, whose terms could be bigger
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "big", "max_budget": 1000})
    await refused(gateway, alice, "POST", "/key/generate", "may not set budget_id",
                  json={"budget_id": "big"})
    # on her own key: no budget change (LiteLLM's rule), no new owner, no unblock
    for change in ({"max_budget": 5}, {"max_budget": 1000}, {"budget_duration": "1d"},
                   {"budget_id": "big"}, {"user_id": "bob"}, {"team_id": "t"},
                   {"blocked": False}):
        name = next(iter(change))
        await refused(gateway, alice, "POST", "/key/update", f"may not change {name}",
                      json={"key": own, **change})
    # nor raise her own user's budget
    await refused(gateway, alice, "POST", "/user/update", "internal_user may not call",
                  json={"user_id": "alice", "max_budget": 1000})
    info = (await call(gateway, alice, "GET", "/key/info", params={"key": own})).json()
    assert info["info"]["max_budget"] == 5 and info["info"]["user_id"] == "alice"
    assert (await call(gateway, alice, "GET", "/user/info")).json()[
        "user_info"]["max_budget"] == 10


async def test_a_refused_key_generate_makes_no_user(gateway: RunningGateway) -> None:
    await gateway.new_key(key_alias="taken")
    resp = await gateway.admin("POST", "/key/generate", json={"user_id": "ghost",
                                                              "key_alias": "taken"})
    assert resp.status_code == 400 and "key_alias" in resp.json()["error"]["message"]
    assert (await gateway.admin("GET", "/user/info", params={"user_id": "ghost"})
            ).status_code == 404
    # the same on /key/update moving a key to a new user
    key = await gateway.new_key()
    resp = await gateway.admin("POST", "/key/update", json={"key": key, "user_id": "ghost",
                                                            "key_alias": "taken"})
    assert resp.status_code == 400
    assert (await gateway.admin("GET", "/user/info", params={"user_id": "ghost"})
            ).status_code == 404
    # an existing user is never taken back
    await ok(gateway, "POST", "/user/new", json={"user_id": "kept"})
    resp = await gateway.admin("POST", "/key/generate", json={"user_id": "kept",
                                                              "key_alias": "taken"})
    assert resp.status_code == 400
    await ok(gateway, "GET", "/user/info", params={"user_id": "kept"})


async def test_a_users_email_is_its_own(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/user/new", json={"user_id": "a", "user_email": "a@x.io"})
    await ok(gateway, "POST", "/user/new", json={"user_id": "b", "user_email": "b@x.io"})
    for path, body in [("/user/new", {"user_id": "c", "user_email": "a@x.io"}),
                       ("/user/new", {"user_email": "a@x.io"}),
                       ("/user/update", {"user_id": "b", "user_email": "a@x.io"})]:
        resp = await gateway.admin("POST", path, json=body)
        error = openai_error(resp.status_code, resp.json())
        assert resp.status_code == 400 and error["code"] == "user_email_exists", resp.text
        assert "'a'" in error["message"] and error["param"] == "user_email"
    assert (await gateway.admin("GET", "/user/info", params={"user_id": "c"})
            ).status_code == 404
    # keeping one's own email is no conflict
    await ok(gateway, "POST", "/user/update", json={"user_id": "a", "user_email": "a@x.io"})
    users = await ok(gateway, "GET", "/user/list", params={"user_email": "a@x.io"})
    assert [u["user_id"] for u in users["users"]] == ["a"]


async def test_a_demotion_on_one_gateway_holds_on_another_at_once(
        mock_upstream: str, tmp_path: Path) -> None:
    """The role is read afresh on each admin call: another process that had the key cached
    (for key_cache_ttl_s, 60 s) refuses it at the next call, with no Redis to tell it."""
    url = f"sqlite:///{tmp_path / 'faregate.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            settings = config.load({**os.environ, **env_for(url, home)},
                                   write_config(home / "config.yaml", mock_upstream))
            running.append(await stack.enter_async_context(
                serve(Faregate.from_settings(settings))))
        a, b = running
        key = await make_user(a, "boss", "proxy_admin")
        assert (await call(b, key, "POST", "/team/new", json={"team_id": "x"})
                ).status_code == 200                            # b has the key cached
        await ok(a, "POST", "/user/update", json={"user_id": "boss",
                                                  "user_role": "internal_user_viewer"})
        await refused(b, key, "POST", "/team/new", "internal_user_viewer may not call",
                      json={"team_id": "y"})


class _DatabaseDown:
    """An Authenticator that knows the key from its cache, while the database is down."""

    async def caller(self, authorization: str | None, api_key: str | None) -> Caller:
        return Caller(KeyRecord(token="t", key_name="sk-...abcd", user_id="u"),
                      is_master=False)

    async def reload(self, caller: Caller) -> Caller:
        raise ServiceUnavailable("this key has not been seen by this gateway replica",
                                 code="database_unavailable")


async def test_a_role_that_cannot_be_read_is_a_503_saying_why() -> None:
    roles = Roles(cast(Authenticator, _DatabaseDown()), cast(HierarchyStore, None))
    with pytest.raises(ServiceUnavailable) as down:
        await roles.check("Bearer sk-cached", None, "/key/list")
    assert down.value.code == "database_unavailable"
    assert "admin calls read the caller's role" in down.value.message


# --- One user per email under concurrency (migration 0009) -----------------------------------


async def test_twenty_concurrent_user_new_with_one_email_make_one_user(
        gateway: RunningGateway) -> None:
    """The look for another holder and the insert are two steps; the unique index on
    lower(user_email) decides between calls that pass the look together: exactly one 200,
    the rest 400 user_email_exists (never a 500), also across letter case."""
    emails = ["Same@x.io" if n % 2 else "same@X.IO" for n in range(20)]
    replies = await asyncio.gather(*[
        gateway.admin("POST", "/user/new", json={"user_id": f"racer-{n}", "user_email": email})
        for n, email in enumerate(emails)])
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] + [400] * 19, [r.text for r in replies if r.status_code != 400]
    for resp in replies:
        if resp.status_code == 400:
            error = openai_error(400, resp.json())
            assert error["code"] == "user_email_exists" and error["param"] == "user_email"
    users = await ok(gateway, "GET", "/user/list")
    assert [u["user_email"].lower() for u in users["users"]] == ["same@x.io"]
    # the same on /user/update, in another case
    await ok(gateway, "POST", "/user/new", json={"user_id": "other", "user_email": "o@x.io"})
    resp = await gateway.admin("POST", "/user/update", json={"user_id": "other",
                                                             "user_email": "SAME@x.io"})
    error = openai_error(resp.status_code, resp.json())
    assert resp.status_code == 400 and error["code"] == "user_email_exists", resp.text
    assert "case-insensitively" in error["message"]


# --- org_admin: an organization member with role org_admin ------------------------------------


async def test_an_org_admin_manages_its_organization_and_nothing_else(
        gateway: RunningGateway) -> None:
    """LiteLLM's org_admin: makes teams in its organization, adds, changes and removes the
    members of its organization and of its teams, reads its organization's info and spend and
    its teams'; a 403 naming the role for any other organization or team, and for the
    proxy_admin's writes (the organization itself, a team's settings)."""
    oda = await make_user(gateway, "oda", "internal_user")
    member = await make_user(gateway, "mia", "internal_user")
    for org in ("o1", "o2"):
        await ok(gateway, "POST", "/organization/new", json={
            "organization_id": org, "organization_alias": org, "max_budget": 10})
    await ok(gateway, "POST", "/organization/member_add", json={
        "organization_id": "o1", "member": [{"user_id": "oda", "role": "org_admin"},
                                            {"user_id": "mia", "role": "internal_user"}]})
    await ok(gateway, "POST", "/organization/member_add", json={
        "organization_id": "o2", "member": {"user_id": "mia", "role": "org_admin"}})
    await ok(gateway, "POST", "/team/new", json={"team_id": "t-o2", "organization_id": "o2"})
    await ok(gateway, "POST", "/team/new", json={"team_id": "t-free"})

    # in its organization: a team, its members, the organization's members, info and spend
    resp = await call(gateway, oda, "POST", "/team/new", json={
        "team_id": "t-o1", "organization_id": "o1", "max_budget": 5})
    assert resp.status_code == 200 and resp.json()["organization_id"] == "o1", resp.text
    for path, body in [
            ("/team/member_add", {"team_id": "t-o1", "member": {"user_id": "mia",
                                                                "role": "user"}}),
            ("/team/member_update", {"team_id": "t-o1", "user_id": "mia",
                                     "max_budget_in_team": 2}),
            ("/organization/member_add", {"organization_id": "o1", "member": {
                "user_id": "noa", "role": "internal_user"}}),
            ("/organization/member_update", {"organization_id": "o1", "user_id": "noa",
                                             "role": "internal_user_viewer"}),
            ("/organization/member_delete", {"organization_id": "o1", "user_id": "noa"})]:
        resp = await call(gateway, oda, "POST", path, json=body)
        assert resp.status_code == 200, (path, resp.text)
    team_key = await gateway.new_key(team_id="t-o1", user_id="mia", models=[])
    resp = await call(gateway, team_key, "POST", "/v1/chat/completions", json={
        "model": "qwen-local", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4})
    assert resp.status_code == 200, resp.text
    await gateway.app.ledger.flush()
    info = await call(gateway, oda, "GET", "/organization/info",
                      params={"organization_id": "o1"})
    assert info.status_code == 200 and info.json()["spend"] > 0, info.text
    assert [t["team_id"] for t in info.json()["teams"]] == ["t-o1"]
    for path, params in [("/team/info", {"team_id": "t-o1"}),
                         ("/team/daily/activity", {**DAYS, "team_ids": "t-o1"})]:
        assert (await call(gateway, oda, "GET", path, params=params)).status_code == 200
    resp = await call(gateway, oda, "POST", "/team/member_delete", json={
        "team_id": "t-o1", "user_id": "mia"})
    assert resp.status_code == 200, resp.text

    # outside it: another organization, a team of another or of none
    for method, path, kwargs in [
            ("GET", "/organization/info", {"params": {"organization_id": "o2"}}),
            ("POST", "/organization/member_add", {"json": {"organization_id": "o2", "member": {
                "user_id": "oda", "role": "org_admin"}}}),
            ("POST", "/organization/member_update", {"json": {
                "organization_id": "o2", "user_id": "mia", "role": "internal_user"}}),
            ("POST", "/organization/member_delete", {"json": {"organization_id": "o2",
                                                              "user_id": "mia"}})]:
        error = await refused(gateway, oda, method, path,
                              "only for an organization where it is org_admin", **kwargs)
        assert error["code"] == "not_owner" and "'o2'" in error["message"]
    for body, where in [({"team_id": "t-x", "organization_id": "o2"}, "in organization 'o2'"),
                        ({"team_id": "t-y"}, "without an organization_id")]:
        error = await refused(gateway, oda, "POST", "/team/new",
                              f"internal_user may not call /team/new {where}", json=body)
        assert "org_admin in its organization" in error["message"]
    for team in ("t-o2", "t-free"):
        for method, path, kwargs in [
                ("POST", "/team/member_add", {"json": {"team_id": team, "member": {
                    "user_id": "oda", "role": "admin"}}}),
                ("GET", "/team/info", {"params": {"team_id": team}}),
                ("GET", "/team/daily/activity", {"params": {**DAYS, "team_ids": team}})]:
            await refused(gateway, oda, method, path, "only for a team it", **kwargs)
    # the organization's and teams' own settings stay the proxy_admin's
    for path, body in [("/organization/update", {"organization_id": "o1", "max_budget": 99}),
                       ("/organization/new", {"organization_alias": "mine"}),
                       ("/team/update", {"team_id": "t-o1", "max_budget": 99}),
                       ("/team/block", {"team_id": "t-o1"})]:
        await refused(gateway, oda, "POST", path, f"internal_user may not call {path}",
                      json=body)
    # a plain member of the organization is no org_admin
    await refused(gateway, member, "POST", "/team/new", "may not call /team/new in organiz",
                  json={"team_id": "t-z", "organization_id": "o1"})
    await refused(gateway, member, "POST", "/organization/member_add", "org_admin",
                  json={"organization_id": "o1", "member": {"user_id": "mia",
                                                            "role": "org_admin"}})
    # none of it happened
    o2 = await ok(gateway, "GET", "/organization/info", params={"organization_id": "o2"})
    assert [(m["user_id"], m["user_role"]) for m in o2["members"]] == [("mia", "org_admin")]
    assert [t["team_id"] for t in o2["teams"]] == ["t-o2"]
    o1 = await ok(gateway, "GET", "/organization/info", params={"organization_id": "o1"})
    assert o1["max_budget"] == 10 and [t["team_id"] for t in o1["teams"]] == ["t-o1"]
    assert (await gateway.admin("GET", "/team/info", params={"team_id": "t-x"})
            ).status_code == 404

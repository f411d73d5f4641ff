"""/team/* in LiteLLM's shapes (SQLite and Postgres): teams, their members and models, and
what deleting a team does to its keys."""

from __future__ import annotations

import uuid
from typing import Any

from api.conftest import RunningGateway
from api.test_upstream_faults import Start, deployment, start
from api.test_users import error, ok

__all__ = ["start"]


async def test_new_info_update_list(gateway: RunningGateway) -> None:
    made = await ok(gateway, "POST", "/team/new", json={
        "team_id": "search", "team_alias": "Search", "models": ["qwen-local"],
        "max_budget": 100, "budget_duration": "30d", "tpm_limit": 1000, "rpm_limit": 10,
        "max_parallel_requests": 3, "metadata": {"cc": "42"},
        "members_with_roles": [{"user_id": "ann", "role": "admin"},
                               {"user_email": "bo@example.com"}]})
    assert made["team_id"] == "search" and made["max_budget"] == 100
    assert made["blocked"] is False and made["budget_reset_at"]
    roles = {m["role"] for m in made["members_with_roles"]}
    assert roles == {"admin", "user"} and len(made["members_with_roles"]) == 2
    # the members' users were made, as LiteLLM does
    ann = await ok(gateway, "GET", "/user/info", params={"user_id": "ann"})
    assert [t["team_id"] for t in ann["teams"]] == ["search"]
    bo = await ok(gateway, "GET", "/user/list", params={"user_email": "bo@example.com"})
    assert bo["total"] == 1
    generated = await ok(gateway, "POST", "/team/new", json={"team_alias": "other"})
    assert generated["team_id"] and generated["members_with_roles"] == []

    info = await ok(gateway, "GET", "/team/info", params={"team_id": "search"})
    assert set(info) == {"team_id", "team_info", "keys", "team_memberships"}
    assert info["team_info"]["spend"] == 0 and len(info["team_memberships"]) == 2

    updated = await ok(gateway, "POST", "/team/update", json={
        "team_id": "search", "max_budget": 50, "team_alias": "Search v2"})
    assert updated["data"]["max_budget"] == 50 and updated["data"]["team_alias"] == "Search v2"

    listed = await ok(gateway, "GET", "/team/list")
    assert sorted(t["team_id"] for t in listed) == sorted(["search", generated["team_id"]])
    mine = await ok(gateway, "GET", "/team/list", params={"user_id": "ann"})
    assert [t["team_id"] for t in mine] == ["search"]


async def test_members(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/team/new", json={"team_id": "t1"})
    one = await ok(gateway, "POST", "/team/member_add", json={
        "team_id": "t1", "member": {"user_id": "u1", "role": "user"},
        "max_budget_in_team": 5})
    assert one["updated_team_memberships"][0]["max_budget_in_team"] == 5
    many = await ok(gateway, "POST", "/team/member_add", json={
        "team_id": "t1", "member": [{"user_id": "u2"}, {"user_email": "u3@example.com",
                                                        "role": "admin"}]})
    assert len(many["updated_users"]) == 2 and len(many["members_with_roles"]) == 3
    again = await error(gateway, 400, "POST", "/team/member_add", json={
        "team_id": "t1", "member": {"user_id": "u1"}})
    assert again["code"] == "member_exists"

    changed = await ok(gateway, "POST", "/team/member_update", json={
        "team_id": "t1", "user_id": "u1", "role": "admin", "max_budget_in_team": 7})
    assert (changed["role"], changed["max_budget_in_team"]) == ("admin", 7)
    by_email = await ok(gateway, "POST", "/team/member_update", json={
        "team_id": "t1", "user_email": "u3@example.com", "role": "user"})
    assert by_email["role"] == "user"

    left = await ok(gateway, "POST", "/team/member_delete", json={
        "team_id": "t1", "user_id": "u2"})
    assert sorted(m["user_id"] for m in left["members_with_roles"]) == sorted(
        ["u1", by_email["user_id"]])
    await error(gateway, 404, "POST", "/team/member_delete", json={
        "team_id": "t1", "user_id": "u2"})
    await error(gateway, 404, "POST", "/team/member_update", json={
        "team_id": "t1", "user_id": "u2", "role": "admin"})
    await error(gateway, 400, "POST", "/team/member_update", json={
        "team_id": "t1", "user_id": "u1", "role": "owner"})
    await error(gateway, 400, "POST", "/team/member_add", json={
        "team_id": "t1", "member": {"role": "user"}})
    await error(gateway, 404, "POST", "/team/member_add", json={
        "team_id": "nope", "member": {"user_id": "u1"}})


async def test_block_models_delete(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/team/new", json={"team_id": "t2", "models": ["qwen-local"]})
    assert (await ok(gateway, "POST", "/team/block", json={"team_id": "t2"}))["blocked"]
    assert not (await ok(gateway, "POST", "/team/unblock", json={"team_id": "t2"}))["blocked"]
    added = await ok(gateway, "POST", "/team/model/add", json={
        "team_id": "t2", "models": ["other-model", "qwen-local"]})
    assert added["models"] == ["qwen-local", "other-model"]
    removed = await ok(gateway, "POST", "/team/model/delete", json={
        "team_id": "t2", "models": ["qwen-local"]})
    assert removed["models"] == ["other-model"]

    key = await team_key(gateway, "t2", models=["other-model"])
    info = await ok(gateway, "GET", "/team/info", params={"team_id": "t2"})
    assert [k["team_id"] for k in info["keys"]] == ["t2"]
    gone = await ok(gateway, "POST", "/team/delete", json={"team_ids": ["t2"]})
    assert gone["deleted_teams"] == ["t2"]
    # a deleted team's keys are deleted with it, as LiteLLM does
    await error(gateway, 404, "GET", "/key/info", params={"key": key})
    resp = await gateway.http.post("/v1/chat/completions", json={
        "model": "other-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 401, resp.text
    await error(gateway, 404, "GET", "/team/info", params={"team_id": "t2"})


async def team_key(gw: RunningGateway, team_id: str, **fields: Any) -> str:
    made = await ok(gw, "POST", "/key/generate", json={"team_id": team_id, **fields})
    return str(made["key"])


async def test_errors(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/team/new", json={"team_id": "t3"})
    dup = await error(gateway, 400, "POST", "/team/new", json={"team_id": "t3"})
    assert dup["param"] == "team_id"
    org = await error(gateway, 400, "POST", "/team/new", json={"organization_id": "no-org"})
    assert org["param"] == "organization_id"
    await error(gateway, 400, "POST", "/team/new", json={"budget_id": "no-budget"})
    await error(gateway, 400, "POST", "/team/new", json={"budget_duration": "1x"})
    await error(gateway, 400, "POST", "/team/new", json={"max_budget": -1})
    await error(gateway, 400, "POST", "/team/new", json={"tpm_limit": -1})
    await error(gateway, 400, "POST", "/team/new", json={"unknown": 1})
    await error(gateway, 400, "POST", "/team/new", json={
        "members_with_roles": [{"user_id": "x", "role": "owner"}]})
    await error(gateway, 404, "POST", "/team/update", json={"team_id": "nope",
                                                             "max_budget": 1})
    await error(gateway, 400, "POST", "/team/update", json={"max_budget": 1})
    await error(gateway, 404, "GET", "/team/info", params={"team_id": "nope"})
    await error(gateway, 400, "GET", "/team/info")
    await error(gateway, 404, "POST", "/team/delete", json={"team_ids": ["t3", "nope"]})
    assert (await ok(gateway, "GET", "/team/info", params={"team_id": "t3"}))["team_id"]
    await error(gateway, 404, "POST", "/team/block", json={"team_id": "nope"})
    await error(gateway, 404, "POST", "/team/model/add", json={"team_id": "nope",
                                                                "models": ["qwen-local"]})
    await error(gateway, 400, "POST", "/team/model/add", json={"team_id": "t3",
                                                                "models": []})
    virtual = await gateway.new_key()
    resp = await gateway.http.get("/team/list", headers={"Authorization": f"Bearer {virtual}"})
    assert resp.status_code == 403, resp.text


async def test_keys_with_a_user_and_a_team(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/team/new", json={"team_id": "t4", "models": ["qwen-local"]})
    made = await ok(gateway, "POST", "/key/generate", json={
        "user_id": "new-user", "team_id": "t4", "models": ["qwen-local"]})
    assert (made["user_id"], made["team_id"]) == ("new-user", "t4")
    # an unknown user_id makes the user, as LiteLLM does
    user = await ok(gateway, "GET", "/user/info", params={"user_id": "new-user"})
    assert [k["token"] for k in user["keys"]] == [made["token"]]
    personal = await ok(gateway, "POST", "/key/generate", json={"user_id": "new-user",
                                                               "models": ["qwen-local"]})
    info = await ok(gateway, "GET", "/key/info", params={"key": made["key"]})
    assert (info["info"]["user_id"], info["info"]["team_id"]) == ("new-user", "t4")

    by_team = await ok(gateway, "GET", "/key/list", params={"team_id": "t4"})
    assert by_team["keys"] == [made["token"]] and by_team["total_count"] == 1
    by_user = await ok(gateway, "GET", "/key/list", params={"user_id": "new-user"})
    assert sorted(by_user["keys"]) == sorted([made["token"], personal["token"]])

    missing = await error(gateway, 400, "POST", "/key/generate", json={"team_id": "nope"})
    assert missing["param"] == "team_id"
    outside = await error(gateway, 400, "POST", "/key/generate", json={
        "team_id": "t4", "models": ["other-model"]})
    assert outside["param"] == "models"
    await error(gateway, 400, "POST", "/key/update", json={
        "key": made["key"], "models": ["other-model"]})
    await error(gateway, 400, "POST", "/key/update", json={
        "key": personal["key"], "team_id": "nope"})
    moved = await ok(gateway, "POST", "/key/update", json={"key": personal["key"],
                                                           "team_id": "t4"})
    assert moved["team_id"] == "t4"


async def chat_status(gw: RunningGateway, key: str) -> int:
    resp = await gw.http.post("/v1/chat/completions", json={
        "model": "qwen-local", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4}, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code < 500, resp.text
    return resp.status_code


async def test_team_and_user_changes_reach_the_next_request(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/team/new", json={"team_id": "t5", "max_budget": 1})
    key = await team_key(gateway, "t5", user_id="member-5", models=["qwen-local"])
    assert await chat_status(gateway, key) == 200
    await ok(gateway, "POST", "/team/update", json={"team_id": "t5", "max_budget": 0})
    assert await chat_status(gateway, key) == 429
    await ok(gateway, "POST", "/team/update", json={"team_id": "t5", "max_budget": 1})
    assert await chat_status(gateway, key) == 200

    await ok(gateway, "POST", "/team/member_add", json={
        "team_id": "t5", "member": {"user_id": "member-5"}, "max_budget_in_team": 0})
    assert await chat_status(gateway, key) == 429
    await ok(gateway, "POST", "/team/member_update", json={
        "team_id": "t5", "user_id": "member-5", "max_budget_in_team": 1})
    assert await chat_status(gateway, key) == 200

    personal = await team_key(gateway, "t5", models=["qwen-local"])
    await ok(gateway, "POST", "/key/update", json={"key": personal, "team_id": None,
                                                   "user_id": "member-5"})
    assert await chat_status(gateway, personal) == 200
    await ok(gateway, "POST", "/user/update", json={"user_id": "member-5", "max_budget": 0})
    assert await chat_status(gateway, personal) == 429
    assert await chat_status(gateway, key) == 200      # a team key is not paid by the user


async def test_a_team_change_on_one_replica_reaches_another(start: Start,
                                                           mock_upstream: str) -> None:
    """Redis mode: the replica that did not make the change reloads the team at once
    (RedisAdmission.payer_changed bumps the team's version)."""
    models = [deployment("qwen-local", "qwen-local", mock_upstream)]
    one = await start(models, admission="redis")
    url = str(one.app.settings.database_url)
    other = await start(models, database_url=url, admission="redis")
    team = f"t-{uuid.uuid4().hex[:8]}"          # the shared Redis outlives this test
    await ok(one, "POST", "/team/new", json={"team_id": team, "max_budget": 1})
    key = await team_key(one, team, models=["qwen-local"])
    assert await chat_status(other, key) == 200
    await ok(one, "POST", "/team/block", json={"team_id": team})
    assert await chat_status(other, key) == 401
    await ok(one, "POST", "/team/unblock", json={"team_id": team})
    assert await chat_status(other, key) == 200
    assert await chat_status(one, key) == 200
    await ok(one, "POST", "/team/update", json={"team_id": team, "max_budget": 0})
    assert await chat_status(other, key) == 429


async def test_a_refused_member_list_adds_no_one(gateway: RunningGateway) -> None:
    bad_role = await error(gateway, 400, "POST", "/team/new", json={
        "team_id": "t6", "members_with_roles": [{"user_id": "a"}, {"user_id": "b",
                                                                   "role": "owner"}]})
    assert bad_role["param"] == "role"
    await error(gateway, 404, "GET", "/team/info", params={"team_id": "t6"})
    await ok(gateway, "POST", "/team/new", json={"team_id": "t6",
                                                 "members_with_roles": [{"user_id": "a"}]})
    twice = await error(gateway, 400, "POST", "/team/member_add", json={
        "team_id": "t6", "member": [{"user_id": "c"}, {"user_id": "a"}]})
    assert twice["code"] == "member_exists"
    info = await ok(gateway, "GET", "/team/info", params={"team_id": "t6"})
    assert [m["user_id"] for m in info["team_memberships"]] == ["a"]
    await error(gateway, 404, "GET", "/user/info", params={"user_id": "c"})

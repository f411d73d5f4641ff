"""/organization/* in LiteLLM's shapes (SQLite and Postgres): members with LiteLLM's
organization roles, info listing teams, delete refused while teams belong; a change to an
organization's budget or blocked flag is told to admission."""

from __future__ import annotations

from typing import cast

from api.accounts_support import Told, error, ok
from api.conftest import RunningGateway

from faregate.accounts.changes import PayerChanges
from faregate.accounts.organizations import OrganizationAdmin
from faregate.admission.demand import Admission
from faregate.records import TeamRecord


async def test_new_info_update_list_delete(gateway: RunningGateway) -> None:
    made = await ok(gateway, "POST", "/organization/new", json={
        "organization_alias": "Acme", "models": ["qwen-local"], "max_budget": 100,
        "budget_duration": "30d", "tpm_limit": 1000, "rpm_limit": 50,
        "max_parallel_requests": 4, "metadata": {"cc": "42"}})
    org = made["organization_id"]
    assert org and made["organization_alias"] == "Acme" and made["models"] == ["qwen-local"]
    assert made["max_budget"] == 100 and made["budget_reset_at"] and made["spend"] == 0
    assert made["litellm_budget_table"]["tpm_limit"] == 1000 and made["blocked"] is False
    named = await ok(gateway, "POST", "/organization/new",
                     json={"organization_id": "o2", "organization_alias": "Two"})
    assert named["organization_id"] == "o2"

    await gateway.app.storage.insert_team(TeamRecord("t1", team_alias="Search",
                                                     organization_id=org))
    await ok(gateway, "POST", "/organization/member_add", json={
        "organization_id": org, "member": {"user_id": "alice", "role": "org_admin"}})
    info = await ok(gateway, "GET", "/organization/info", params={"organization_id": org})
    assert info["teams"] == [{"team_id": "t1", "team_alias": "Search"}]
    assert [(m["user_id"], m["user_role"]) for m in info["members"]] == [
        ("alice", "org_admin")]

    for method in ("PATCH", "POST"):
        updated = await ok(gateway, method, "/organization/update", json={
            "organization_id": org, "max_budget": 200, "blocked": True,
            "organization_alias": f"Acme {method}"})
        assert updated["max_budget"] == 200 and updated["blocked"] is True
        assert updated["organization_alias"] == f"Acme {method}"
        assert updated["tpm_limit"] == 1000

    listed = await ok(gateway, "GET", "/organization/list")
    assert [o["organization_id"] for o in listed] == [org, "o2"]
    page = await ok(gateway, "GET", "/organization/list", params={"after": org, "limit": 5})
    assert [o["organization_id"] for o in page] == ["o2"]

    refused = await error(gateway, 400, "DELETE", "/organization/delete",
                          json={"organization_ids": [org, "o2"]})
    assert refused["code"] == "organization_has_teams" and "t1" in refused["message"]
    assert (await ok(gateway, "GET", "/organization/info",
                     params={"organization_id": "o2"}))   # nothing deleted
    await gateway.app.storage.update_team("t1", {"organization_id": None})
    gone = await ok(gateway, "DELETE", "/organization/delete",
                    json={"organization_ids": [org]})
    assert [o["organization_id"] for o in gone] == [org]
    await ok(gateway, "POST", "/organization/delete", json={"organization_ids": ["o2"]})
    assert await ok(gateway, "GET", "/organization/list") == []


async def test_members(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/organization/new",
             json={"organization_id": "o1", "organization_alias": "O"})
    await ok(gateway, "POST", "/user/new", json={"user_id": "bob",
                                                  "user_email": "bob@example.com"})
    added = await ok(gateway, "POST", "/organization/member_add", json={
        "organization_id": "o1", "member": [
            {"user_id": "alice", "role": "internal_user"},
            {"user_email": "bob@example.com", "role": "internal_user_viewer"},
            {"user_email": "carol@example.com", "role": "org_admin"}]})
    assert added["organization_id"] == "o1"
    users = [u["user_id"] for u in added["updated_users"]]
    assert users[:2] == ["alice", "bob"] and users[2]      # carol: made, with an id
    assert [m["user_role"] for m in added["updated_organization_memberships"]] == [
        "internal_user", "internal_user_viewer", "org_admin"]
    assert await gateway.app.storage.get_user("alice") is not None   # made on demand

    changed = await ok(gateway, "PATCH", "/organization/member_update", json={
        "organization_id": "o1", "user_email": "bob@example.com", "role": "org_admin"})
    assert (changed["user_id"], changed["user_role"]) == ("bob", "org_admin")
    await ok(gateway, "POST", "/organization/member_update", json={
        "organization_id": "o1", "user_id": "alice", "role": "internal_user_viewer"})

    gone = await ok(gateway, "DELETE", "/organization/member_delete",
                    json={"organization_id": "o1", "user_id": "alice"})
    assert gone["user_id"] == "alice"
    info = await ok(gateway, "GET", "/organization/info", params={"organization_id": "o1"})
    assert {m["user_id"] for m in info["members"]} == {"bob", users[2]}

    # errors
    twice = await error(gateway, 400, "POST", "/organization/member_add", json={
        "organization_id": "o1", "member": {"user_id": "bob", "role": "org_admin"}})
    assert twice["code"] == "member_exists"
    await error(gateway, 400, "POST", "/organization/member_add", json={
        "organization_id": "o1", "member": {"user_id": "x", "role": "proxy_admin"}})
    await error(gateway, 400, "POST", "/organization/member_add", json={
        "organization_id": "o1", "member": []})
    await error(gateway, 400, "POST", "/organization/member_add", json={
        "organization_id": "o1", "member": {"role": "org_admin"}})
    budget = await error(gateway, 400, "POST", "/organization/member_add", json={
        "organization_id": "o1", "max_budget_in_organization": 5,
        "member": {"user_id": "x", "role": "org_admin"}})
    assert budget["param"] == "max_budget_in_organization"
    await error(gateway, 404, "POST", "/organization/member_add", json={
        "organization_id": "nope", "member": {"user_id": "x", "role": "org_admin"}})
    await error(gateway, 404, "PATCH", "/organization/member_update", json={
        "organization_id": "o1", "user_id": "alice", "role": "org_admin"})
    await error(gateway, 404, "PATCH", "/organization/member_update", json={
        "organization_id": "o1", "user_email": "nobody@example.com", "role": "org_admin"})
    await error(gateway, 404, "DELETE", "/organization/member_delete",
                json={"organization_id": "o1", "user_id": "alice"})


async def test_errors(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/organization/new",
             json={"organization_id": "o1", "organization_alias": "O"})
    taken = await error(gateway, 400, "POST", "/organization/new",
                        json={"organization_id": "o1", "organization_alias": "O"})
    assert taken["code"] == "organization_exists"
    for name, value in (("soft_budget", 1), ("model_max_budget", {"a": 1}),
                        ("tags", ["x"]), ("object_permission", {"mcp_servers": ["m"]})):
        refused = await error(gateway, 400, "POST", "/organization/new",
                              json={"organization_alias": "O", name: value})
        assert refused["code"] == "field_not_supported" and refused["param"] == name
    for bad in ({}, {"organization_alias": ""}, {"organization_alias": "O", "max_budget": -1},
                {"organization_alias": "O", "budget_id": "missing"},
                {"organization_alias": "O", "budget_duration": "soon"},
                {"organization_alias": "O", "blocked": None},
                {"organization_alias": "O", "models": "qwen-local"},
                {"organization_alias": "O", "whatever": 1}):
        await error(gateway, 400, "POST", "/organization/new", json=bad)
    await error(gateway, 400, "PATCH", "/organization/update",
                json={"organization_id": "o1", "organization_alias": None})
    await error(gateway, 404, "PATCH", "/organization/update",
                json={"organization_id": "nope", "max_budget": 1})
    await error(gateway, 404, "GET", "/organization/info", params={"organization_id": "x"})
    await error(gateway, 400, "GET", "/organization/info")
    await error(gateway, 404, "DELETE", "/organization/delete",
                json={"organization_ids": ["o1", "nope"]})
    assert await ok(gateway, "GET", "/organization/info", params={"organization_id": "o1"})
    key = await gateway.new_key()
    resp = await gateway.http.get("/organization/list",
                                  headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 403, resp.text


async def test_changes_are_told_to_admission(gateway: RunningGateway) -> None:
    told = Told()
    admin = OrganizationAdmin(gateway.app.storage,
                              PayerChanges(cast(Admission, told), told.payer_changed),
                              gateway.app.keys._now)
    await admin.new("o1", {"organization_alias": "O", "max_budget": 1})
    await admin.update("o1", {"blocked": True})
    await admin.update("o1", {"budget_duration": "7d"})
    await admin.delete(["o1"])
    assert told.forgotten == told.bumped == ["org:o1"] * 4
    assert told.periods == ["org:o1"] * 2

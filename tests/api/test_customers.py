"""/customer/* and its /end_user/* aliases in LiteLLM's shapes (SQLite and Postgres); a
change to an end user's budget or blocked flag is told to admission."""

from __future__ import annotations

from typing import cast

import pytest
from api.accounts_support import Told, error, ok
from api.conftest import RunningGateway

from faregate.accounts.changes import PayerChanges
from faregate.accounts.customers import CustomerAdmin
from faregate.admission.demand import Admission


@pytest.mark.parametrize("prefix", ["/customer", "/end_user"])
async def test_new_info_update_list_delete(gateway: RunningGateway, prefix: str) -> None:
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "basic", "max_budget": 3})
    made = await ok(gateway, "POST", f"{prefix}/new", json={
        "user_id": "c1", "alias": "Acme", "max_budget": 2.5, "budget_duration": "1d",
        "tpm_limit": 100, "rpm_limit": 5, "max_parallel_requests": 1, "budget_id": "basic",
        "metadata": {"plan": "pro"}, "allowed_model_region": None})
    assert (made["user_id"], made["alias"], made["blocked"]) == ("c1", "Acme", False)
    assert made["max_budget"] == 2.5 and made["spend"] == 0 and made["budget_reset_at"]
    assert made["litellm_budget_table"]["max_budget"] == 2.5
    assert made["litellm_budget_table"]["budget_id"] == "basic"
    assert made["allowed_model_region"] is None and made["default_model"] is None

    info = await ok(gateway, "GET", f"{prefix}/info", params={"end_user_id": "c1"})
    assert info["alias"] == "Acme" and info["metadata"] == {"plan": "pro"}

    updated = await ok(gateway, "POST", f"{prefix}/update",
                       json={"user_id": "c1", "max_budget": None, "alias": "Acme Inc"})
    assert updated["max_budget"] is None and updated["alias"] == "Acme Inc"
    assert updated["tpm_limit"] == 100

    await ok(gateway, "POST", f"{prefix}/new", json={"user_id": "c2"})
    await ok(gateway, "POST", f"{prefix}/new", json={"user_id": "c3"})
    listed = await ok(gateway, "GET", f"{prefix}/list")
    assert [c["user_id"] for c in listed] == ["c1", "c2", "c3"]
    page = await ok(gateway, "GET", f"{prefix}/list", params={"limit": 1, "after": "c1"})
    assert [c["user_id"] for c in page] == ["c2"]

    blocked = await ok(gateway, "POST", f"{prefix}/block", json={"user_ids": ["c2", "new"]})
    assert [(c["user_id"], c["blocked"]) for c in blocked["blocked_users"]] == [
        ("c2", True), ("new", True)]            # as LiteLLM: blocking creates
    unblocked = await ok(gateway, "POST", f"{prefix}/unblock", json={"user_ids": ["c2"]})
    assert unblocked["unblocked_users"][0]["blocked"] is False

    gone = await ok(gateway, "POST", f"{prefix}/delete", json={"user_ids": ["c1", "nope"]})
    assert gone == {"deleted_customers": ["c1"]}
    await error(gateway, 404, "GET", f"{prefix}/info", params={"end_user_id": "c1"})


async def test_errors(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/customer/new", json={"user_id": "c1"})
    taken = await error(gateway, 400, "POST", "/customer/new", json={"user_id": "c1"})
    assert taken["code"] == "customer_exists"
    for name, value in (("allowed_model_region", "eu"), ("default_model", "qwen-local"),
                        ("model_max_budget", {"qwen-local": 1}), ("soft_budget", 1),
                        ("spend", 3)):
        refused = await error(gateway, 400, "POST", "/customer/new",
                              json={"user_id": "c9", name: value})
        assert refused["code"] == "field_not_supported" and refused["param"] == name
    no_budget = await error(gateway, 400, "POST", "/customer/new",
                            json={"user_id": "c9", "budget_id": "missing"})
    assert no_budget["param"] == "budget_id"
    for bad in ({}, {"user_id": ""}, {"user_id": "c9", "max_budget": -1},
                {"user_id": "c9", "budget_duration": "weekly"},
                {"user_id": "c9", "blocked": None}, {"user_id": "c9", "x": 1},
                {"user_id": "c9", "rpm_limit": -1}, {"user_id": "x" * 257}):
        await error(gateway, 400, "POST", "/customer/new", json=bad)
    await error(gateway, 400, "POST", "/customer/update",
                json={"user_id": "c1", "budget_id": "missing"})
    await error(gateway, 404, "POST", "/customer/update", json={"user_id": "nope"})
    await error(gateway, 404, "GET", "/customer/info", params={"end_user_id": "nope"})
    await error(gateway, 400, "GET", "/customer/info")
    await error(gateway, 404, "POST", "/customer/delete", json={"user_ids": ["nope"]})
    await error(gateway, 400, "POST", "/customer/delete", json={"user_ids": []})
    await error(gateway, 404, "POST", "/customer/unblock", json={"user_ids": ["nope"]})
    await error(gateway, 404, "GET", "/customer/list", params={"after": "nope"})
    await error(gateway, 400, "GET", "/customer/list", params={"limit": 0})
    key = await gateway.new_key()
    resp = await gateway.http.post("/customer/new", json={"user_id": "c5"},
                                   headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 403, resp.text


async def test_changes_are_told_to_admission(gateway: RunningGateway) -> None:
    told = Told()
    admin = CustomerAdmin(gateway.app.storage,
                          PayerChanges(cast(Admission, told), told.payer_changed),
                          gateway.app.keys._now)
    await admin.new("c1", {"max_budget": 1})
    await admin.update("c1", {"budget_duration": "1d"})
    await admin.set_blocked(["c1"], True)
    await admin.delete(["c1"])
    assert told.forgotten == told.bumped == ["end_user:c1"] * 4
    assert told.periods == ["end_user:c1"] * 2      # made, and its duration changed

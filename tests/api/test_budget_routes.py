"""/budget/* in LiteLLM's shapes (SQLite and Postgres); a budget's change is told to admission
for every payer naming it; a budget in use cannot be deleted."""

from __future__ import annotations

from typing import Any, cast

from api.accounts_support import Told, error, ok
from api.conftest import RunningGateway
from api.openai_shape import openai_error
from support import MASTER_KEY

from faregate.accounts.budgets import BudgetAdmin
from faregate.accounts.changes import PayerChanges
from faregate.admission.demand import Admission, key_scope
from faregate.keys.tokens import hash_key


async def test_new_info_update_list_delete(gateway: RunningGateway) -> None:
    made = await ok(gateway, "POST", "/budget/new", json={
        "budget_id": "gold", "max_budget": 12.5, "budget_duration": "30d",
        "tpm_limit": 1000, "rpm_limit": 10, "max_parallel_requests": 3})
    assert made["budget_id"] == "gold" and made["max_budget"] == 12.5
    assert (made["budget_duration"], made["tpm_limit"], made["rpm_limit"],
            made["max_parallel_requests"]) == ("30d", 1000, 10, 3)
    assert made["soft_budget"] is None and made["created_at"]
    generated = await ok(gateway, "POST", "/budget/new", json={"max_budget": 1})
    assert generated["budget_id"] and generated["budget_id"] != "gold"

    both = await ok(gateway, "POST", "/budget/info",
                    json={"budgets": ["gold", generated["budget_id"]]})
    assert [b["budget_id"] for b in both] == ["gold", generated["budget_id"]]

    updated = await ok(gateway, "POST", "/budget/update",
                       json={"budget_id": "gold", "max_budget": 20, "rpm_limit": None})
    assert updated["max_budget"] == 20 and updated["rpm_limit"] is None
    assert updated["tpm_limit"] == 1000          # fields not sent stay

    listed = await ok(gateway, "GET", "/budget/list")
    assert {b["budget_id"] for b in listed} == {"gold", generated["budget_id"]}

    gone = await ok(gateway, "POST", "/budget/delete", json={"id": "gold"})
    assert gone["budget_id"] == "gold"
    await error(gateway, 404, "POST", "/budget/info", json={"budgets": ["gold"]})


async def test_errors(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "b1"})
    taken = await error(gateway, 400, "POST", "/budget/new", json={"budget_id": "b1"})
    assert taken["code"] == "budget_exists"
    soft = await error(gateway, 400, "POST", "/budget/new", json={"soft_budget": 5})
    assert soft["code"] == "field_not_supported" and soft["param"] == "soft_budget"
    # a value that asks for nothing passes, as LiteLLM's UI sends it
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "b2", "soft_budget": None})
    for bad in ({"max_budget": -1}, {"max_budget": "x"}, {"tpm_limit": 2**31},
                {"budget_duration": "fortnight"}, {"unknown": 1}, {"budget_id": ""}):
        await error(gateway, 400, "POST", "/budget/new", json=bad)
    await error(gateway, 400, "POST", "/budget/info", json={"budgets": []})
    missing = await error(gateway, 404, "POST", "/budget/info", json={"budgets": ["b1", "x"]})
    assert "x" in missing["message"] and missing["code"] == "budget_not_found"
    await error(gateway, 404, "POST", "/budget/update", json={"budget_id": "x"})
    await error(gateway, 400, "POST", "/budget/update", json={"max_budget": 1})
    await error(gateway, 404, "POST", "/budget/delete", json={"id": "x"})
    key = await gateway.new_key()
    resp = await gateway.http.get("/budget/list")         # no key at all
    assert resp.status_code == 401, resp.text
    resp = await gateway.http.get("/budget/list", headers={"Authorization": f"Bearer {key}"})
    assert openai_error(resp.status_code, resp.json())["code"] == "admin_only"
    resp = await gateway.http.get("/budget/list",
                                  headers={"Authorization": f"Bearer {MASTER_KEY}x"})
    assert resp.status_code == 401, resp.text


async def test_a_budget_in_use_is_not_deleted(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "shared", "max_budget": 5})
    await ok(gateway, "POST", "/customer/new", json={"user_id": "c1", "budget_id": "shared"})
    refused = await error(gateway, 400, "POST", "/budget/delete", json={"id": "shared"})
    assert refused["code"] == "budget_in_use" and "end_user:c1" in refused["message"]
    await ok(gateway, "POST", "/customer/update", json={"user_id": "c1", "budget_id": None})
    await ok(gateway, "POST", "/budget/delete", json={"id": "shared"})


async def test_a_change_reaches_every_payer_naming_the_budget(
        gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "tier", "max_budget": 5})
    await ok(gateway, "POST", "/customer/new", json={"user_id": "c1", "budget_id": "tier"})
    await ok(gateway, "POST", "/customer/new", json={"user_id": "c2"})
    await ok(gateway, "POST", "/organization/new",
             json={"organization_id": "o1", "organization_alias": "O", "budget_id": "tier"})
    key = await gateway.new_key()
    storage = gateway.app.storage
    assert await storage.update_key(hash_key(key), {"budget_id": "tier"}) is not None
    told = Told()
    admin = BudgetAdmin(storage, PayerChanges(cast(Admission, told), told.payer_changed),
                        gateway.app.keys._now)
    await admin.update("tier", {"max_budget": 7, "budget_duration": "1d"})
    expected = {"end_user:c1", "org:o1", key_scope(hash_key(key))}
    assert set(told.forgotten) == set(told.bumped) == expected
    assert told.periods == []       # each payer keeps its own period end
    # and through the route, on this app's own admission: the terms are stored
    info: list[dict[str, Any]] = await ok(gateway, "POST", "/budget/info",
                                          json={"budgets": ["tier"]})
    assert info[0]["max_budget"] == 7 and info[0]["budget_duration"] == "1d"


# Every body that takes budget_duration, as a valid call: (path, body without the term).
DURATION_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/key/generate", {}),
    ("/user/new", {}),
    ("/team/new", {}),
    ("/organization/new", {"organization_alias": "O"}),
    ("/customer/new", {"user_id": "c-{n}"}),
    ("/budget/new", {}),
]
# Not durations, each refused: units LiteLLM does not know, nothing, zero, not text, longer
# than the stored column (32 characters) though it would read as one day.
NOT_DURATIONS: list[Any] = ["1x", "fortnight", "weekly", "", "0d", "30", "d", 30, 1.5, [],
                            "0" * 31 + "1d", " " * 31 + "1d", "1d" + " " * 31, "x" * 100_000]


async def test_budget_duration_is_one_rule_on_every_body(gateway: RunningGateway) -> None:
    """Every payer's body refuses the same durations with the same 400 (message, param,
    code) and takes LiteLLM's forms: 30s, 30m, 30h, 30d, 1w, 1mo; the other terms' bounds
    are refused alike too."""
    n = 0

    def body(template: dict[str, Any], duration: Any) -> dict[str, Any]:
        nonlocal n
        n += 1
        return {k: v.format(n=n) if isinstance(v, str) else v for k, v in template.items()
                } | {"budget_duration": duration}

    for value in NOT_DURATIONS:
        refusals = {}
        for path, template in DURATION_BODIES:
            refused = await error(gateway, 400, "POST", path, json=body(template, value))
            refusals[path] = (refused["message"], refused.get("param"), refused.get("code"))
        assert len(set(refusals.values())) == 1, (value, refusals)
        message, param, _ = refusals["/budget/new"]
        assert param == "budget_duration", (value, message)
        assert len(message) < 300, message
    for term, value in (("max_budget", -1), ("max_budget", 1e10), ("max_budget", "x"),
                        ("tpm_limit", -1), ("rpm_limit", 2**31), ("max_parallel_requests", 1.5)):
        refusals = {}
        for path, template in DURATION_BODIES:
            refused = await error(gateway, 400, "POST", path, json={
                k: v.format(n=0) if isinstance(v, str) else v for k, v in template.items()
            } | {term: value})
            refusals[path] = (refused["message"], refused.get("param"), refused.get("code"))
        assert len(set(refusals.values())) == 1, (term, value, refusals)
    for value in ("30s", "30m", "30h", "30d", "1w", "1mo", "0" * 30 + "1d"):
        for path, template in DURATION_BODIES:
            made = await ok(gateway, "POST", path, json=body(template, value))
            shown = made.get("budget_duration", made.get("data", made).get("budget_duration"))
            assert shown == value, (path, made)

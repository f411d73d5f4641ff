"""LiteLLM's documented /key/generate and /key/update fields (issue 14 part 10): those faregate
enforces take effect, the rest are a 400 naming the field, never stored and ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from api.conftest import Clock, RunningGateway
from support import chat

from faregate.keys.admin import ACCEPTED_ONLY, NOT_SUPPORTED_YET


async def generate(gw: RunningGateway, **fields: Any) -> httpx.Response:
    return await gw.admin("POST", "/key/generate", json={"models": ["qwen-local"], **fields})


async def info(gw: RunningGateway, key: str) -> dict[str, Any]:
    resp = await gw.admin("GET", "/key/info", params={"key": key})
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["info"])


def refused(resp: httpx.Response, field: str) -> str:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and error["code"] == "field_not_supported"
    assert f"'{field}'" in error["message"] and "not supported yet" in error["message"]
    return str(error["message"])


# A value that asks for something, per field (LiteLLM's documented shapes).
SOMETHING: dict[str, Any] = {
    "organization_id": "o-1",
    "model_max_budget": {"qwen-local": {"budget_limit": 1.0, "time_period": "1d"}},
    "budget_fallbacks": {"qwen-local": ["other"]}, "allowed_routes": ["/v1/chat/completions"],
    "allowed_passthrough_routes": ["/x"], "permissions": {"pii_masking": True},
    "object_permission": {"mcp_servers": ["s"]}, "guardrails": ["g"],
    "disable_global_guardrails": True, "policies": ["p"], "enforced_params": ["user"],
    "allowed_cache_controls": ["no-cache"], "config": {"a": 1},
    "router_settings": {"num_retries": 1}, "prompts": ["p"], "access_group_ids": ["a"],
    "allowed_vector_store_indexes": [{"index_name": "i"}], "rpm_limit_type": "guaranteed",
    "tpm_limit_type": "guaranteed", "auto_rotate": True, "rotation_interval": "30d",
    "spend": 1.5, "soft_budget_cooldown": True, "logging": [{"callback_name": "x"}]}


def test_every_unsupported_field_has_a_case() -> None:
    assert set(SOMETHING) == set(NOT_SUPPORTED_YET)


def test_every_field_is_in_the_docs_table() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "admin-api.md").read_text()
    table = doc.split("### Key fields: LiteLLM's and faregate's", 1)[1].split("\n\n`tests", 1)[0]
    for field in [*NOT_SUPPORTED_YET, *ACCEPTED_ONLY, "tags", "soft_budget"]:
        assert f"`{field}`" in table, field


@pytest.mark.parametrize("field", sorted(NOT_SUPPORTED_YET))
async def test_unsupported_field_is_refused_by_name_and_nothing_is_stored(
        gateway: RunningGateway, field: str) -> None:
    before = (await gateway.admin("GET", "/key/list")).json()["total_count"]
    refused(await generate(gateway, key_alias=f"k-{field}", **{field: SOMETHING[field]}), field)
    assert (await gateway.admin("GET", "/key/list")).json()["total_count"] == before
    key = str((await generate(gateway)).json()["key"])
    refused(await gateway.admin("POST", "/key/update",
                                json={"key": key, field: SOMETHING[field]}), field)


async def test_values_that_ask_for_nothing_are_accepted(gateway: RunningGateway) -> None:
    """LiteLLM's UI and SDKs send these defaults; refusing them would break drop-in use."""
    resp = await generate(gateway, user_id=None, team_id=None, guardrails=[], permissions={},
                          allowed_cache_controls=[], enforced_params=None, auto_rotate=False,
                          key_type="default", send_invite_email=False)
    assert resp.status_code == 200, resp.text
    resp = await generate(gateway, key_type="llm_api")
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(("field", "value"), [("key_type", "management"),
                                              ("key_type", "read_only"),
                                              ("send_invite_email", True)])
async def test_accepted_only_fields_refuse_other_values(gateway: RunningGateway, field: str,
                                                        value: Any) -> None:
    assert field in ACCEPTED_ONLY
    message = refused(await generate(gateway, **{field: value}), field)
    assert repr(value) in message


async def test_a_named_budget_pays_for_a_key(gateway: RunningGateway) -> None:
    """budget_id: the key takes the named budget's terms it leaves null (LiteLLM's
    /budget/new + budget_id); an unknown budget is a 400 and makes no key."""
    resp = await generate(gateway, budget_id="no-such-budget")
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "budget_id"
    assert resp.json()["error"]["code"] == "budget_not_found"
    made = await gateway.admin("POST", "/budget/new", json={"budget_id": "small",
                                                            "max_budget": 0.0001})
    assert made.status_code == 200, made.text
    resp = await generate(gateway, budget_id="small")
    assert resp.status_code == 200, resp.text
    key = str(resp.json()["key"])
    assert resp.json()["budget_id"] == "small"
    shown = await info(gateway, key)
    assert shown["budget_id"] == "small" and shown["max_budget"] is None   # its own: none
    auth = {"Authorization": f"Bearer {key}"}
    statuses = [(await gateway.http.post("/v1/chat/completions", json=chat(),
                                         headers=auth)).status_code for _ in range(5)]
    assert statuses[0] == 200 and statuses[-1] == 429, statuses  # $0.00004 a call
    assert (await info(gateway, key))["spend"] <= 0.0001
    # taken off again: the key has no budget
    resp = await gateway.admin("POST", "/key/update", json={"key": key, "budget_id": None})
    assert resp.status_code == 200 and resp.json()["budget_id"] is None, resp.text
    assert (await gateway.http.post("/v1/chat/completions", json=chat(),
                                    headers=auth)).status_code == 200


@pytest.mark.parametrize("payer", ["key", "team"])
async def test_a_named_budgets_duration_starts_a_new_period(gateway: RunningGateway,
                                                            clock: Clock, payer: str) -> None:
    """A payer whose budget_duration comes from its named budget has its periods too (counted
    from its creation): after the period, the budget serves again."""
    made = await gateway.admin("POST", "/budget/new", json={
        "budget_id": "daily", "max_budget": 0.0001, "budget_duration": "1d"})
    assert made.status_code == 200, made.text
    if payer == "team":
        made = await gateway.admin("POST", "/team/new", json={"team_id": "daily-team",
                                                              "budget_id": "daily"})
        assert made.status_code == 200, made.text
    resp = await generate(gateway, **({"budget_id": "daily"} if payer == "key"
                                      else {"team_id": "daily-team"}))
    assert resp.status_code == 200, resp.text
    auth = {"Authorization": f"Bearer {resp.json()['key']}"}

    async def statuses(n: int) -> list[int]:
        return [(await gateway.http.post("/v1/chat/completions", json=chat(),
                                         headers=auth)).status_code for _ in range(n)]

    first = await statuses(5)
    assert first[0] == 200 and first[-1] == 429, first
    clock.advance(days=1, seconds=1)
    again = await statuses(5)
    assert again[0] == 200 and again[-1] == 429, again   # a new period, the same budget
    assert again.count(200) == first.count(200)


async def test_unknown_field_is_still_a_400_naming_it(gateway: RunningGateway) -> None:
    resp = await generate(gateway, max_budgett=5)
    assert resp.status_code == 400 and "max_budgett" in resp.json()["error"]["message"]


async def test_tags_are_stored_as_litellm_stores_them(gateway: RunningGateway) -> None:
    resp = await generate(gateway, tags=["team:search", "env:prod"], metadata={"app": "a1"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["tags"] == ["team:search", "env:prod"]
    key = resp.json()["key"]
    shown = await info(gateway, key)
    assert shown["tags"] == ["team:search", "env:prod"]
    assert shown["metadata"] == {"app": "a1", "tags": ["team:search", "env:prod"]}

    # A new metadata keeps the tags; new tags replace them; null removes them.
    await gateway.admin("POST", "/key/update", json={"key": key, "metadata": {"app": "a2"}})
    assert (await info(gateway, key))["metadata"] == {
        "app": "a2", "tags": ["team:search", "env:prod"]}
    await gateway.admin("POST", "/key/update", json={"key": key, "tags": ["x"]})
    assert (await info(gateway, key))["tags"] == ["x"]
    await gateway.admin("POST", "/key/update", json={"key": key, "tags": None})
    shown = await info(gateway, key)
    assert shown["tags"] == [] and shown["metadata"] == {"app": "a2"}


@pytest.mark.parametrize(("fields", "param"), [
    ({"tags": "prod"}, "tags"), ({"tags": [1]}, "tags"), ({"soft_budget": -1}, "soft_budget"),
    ({"metadata": {"soft_budget": "lots"}}, "soft_budget"),
    ({"metadata": {"tags": "prod"}}, "tags")])
async def test_bad_tags_and_soft_budgets_are_400(gateway: RunningGateway,
                                                 fields: dict[str, Any], param: str) -> None:
    resp = await generate(gateway, **fields)
    assert resp.status_code == 400, resp.text
    assert param in resp.json()["error"]["message"]


async def test_soft_budget_marks_the_key_and_refuses_nothing(gateway: RunningGateway) -> None:
    resp = await generate(gateway, max_budget=1.0, soft_budget=0.00001)
    assert resp.status_code == 200, resp.text
    key = resp.json()["key"]
    shown = await info(gateway, key)
    assert (shown["soft_budget"], shown["soft_budget_reached"]) == (0.00001, False)
    for _ in range(2):          # 8 + 16 tokens at $1/$2 per M: $0.00004 each, over the soft
        answer = await gateway.http.post("/v1/chat/completions", json=chat("hi"),
                                         headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
    shown = await info(gateway, key)
    assert shown["soft_budget_reached"] is True
    assert shown["spend"] > shown["soft_budget"]
    await gateway.admin("POST", "/key/update", json={"key": key, "soft_budget": None})
    shown = await info(gateway, key)
    assert (shown["soft_budget"], shown["soft_budget_reached"]) == (None, False)

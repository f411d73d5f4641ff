"""A LiteLLM admin script's journey against `faregate serve` as a process, over real HTTP:
users, an organization, a team with members, a customer, a named budget, keys made with
`user_id`, `team_id` and `budget_id`, calls through the `openai` SDK naming the end user by
`user=` and by header, then the spend routes and every level's /info.

Fields are checked against LiteLLM's documented shapes (its proxy `_types.py`:
NewUserResponse, LiteLLM_TeamTable and TeamInfoResponseObject, TeamAddMemberResponse,
LiteLLM_OrganizationTableWithMembers, LiteLLM_EndUserTable, LiteLLM_BudgetTable,
GenerateKeyResponse, UserInfoResponse, LiteLLM_SpendLogs, and the per-day
/global/spend/report), with faregate's documented differences (docs/hierarchy.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from e2e.conftest import MASTER_KEY, ServedGateway

from faregate.money import dollars_to_nanos, nanos_to_dollars

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
CALL_COST = 0.00004                          # 8 prompt + 16 completion tokens, max_tokens 16


def has(answer: dict[str, Any], *fields: str) -> None:
    missing = [f for f in fields if f not in answer]
    assert not missing, f"missing {missing} in {sorted(answer)}"


class Admin:
    """The admin script's HTTP client: every answer must be a 200."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers=ADMIN, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        resp = self.http.post(path, json=body)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
        return resp.json()

    def get(self, path: str, **params: str) -> Any:
        resp = self.http.get(path, params=params)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text}"
        return resp.json()


def rows_written(admin: Admin, count: int, **query: str) -> list[dict[str, Any]]:
    """/spend/logs once the ledger holds `count` rows for the query (it writes off the
    request path)."""
    deadline = time.monotonic() + 15
    while True:
        rows: list[dict[str, Any]] = admin.get("/spend/logs", page_size="1000", **query)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.fixture
def admin(serve: ServedGateway) -> Iterator[Admin]:
    client = Admin(serve.base_url)
    yield client
    client.http.close()


@pytest.fixture
def sdk(serve: ServedGateway) -> Iterator[Callable[[str], openai.OpenAI]]:
    """openai.OpenAI clients for keys, closed afterwards."""
    made: list[openai.OpenAI] = []

    def client(key: str) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=f"{serve.base_url}/v1", api_key=key,
                                  max_retries=0))
        return made[-1]
    yield client
    for one in made:
        one.close()


def test_a_litellm_admin_scripts_journey(admin: Admin,
                                         sdk: Callable[[str], openai.OpenAI]) -> None:

    # -- users -----------------------------------------------------------------------------
    alice = admin.post("/user/new", {"user_id": "alice", "user_email": "alice@example.com",
                                     "user_role": "internal_user", "max_budget": 1.0,
                                     "auto_create_key": False})
    has(alice, "user_id", "user_email", "user_role", "max_budget", "teams", "models")
    assert (alice["user_id"], alice["user_email"], alice["user_role"]) == (
        "alice", "alice@example.com", "internal_user")
    assert alice["max_budget"] == 1.0
    made = admin.post("/user/new", {"user_email": "nameless@example.com",
                                    "auto_create_key": False})
    assert made["user_id"], made                  # generated when absent, as LiteLLM

    # -- organization, team, members -------------------------------------------------------
    org = admin.post("/organization/new", {"organization_alias": "Acme", "max_budget": 5.0,
                                           "models": []})
    has(org, "organization_id", "organization_alias", "budget_id", "spend", "models",
        "metadata", "created_at", "updated_at", "litellm_budget_table")
    org_id = org["organization_id"]
    assert org_id and org["organization_alias"] == "Acme" and org["spend"] == 0
    assert org["litellm_budget_table"]["max_budget"] == 5.0

    team = admin.post("/team/new", {
        "team_alias": "research", "organization_id": org_id, "max_budget": 2.0,
        "members_with_roles": [{"role": "admin", "user_id": "alice"}]})
    has(team, "team_id", "team_alias", "organization_id", "members_with_roles", "max_budget",
        "models", "blocked", "spend", "tpm_limit", "rpm_limit", "budget_duration", "metadata")
    team_id = team["team_id"]
    assert team_id and team["organization_id"] == org_id and team["blocked"] is False
    assert {"role": "admin", "user_id": "alice"}.items() <= team["members_with_roles"][0].items()

    added = admin.post("/team/member_add", {"team_id": team_id,
                                            "member": {"role": "user", "user_id": "bob"},
                                            "max_budget_in_team": 0.5})
    has(added, "team_id", "members_with_roles", "updated_users", "updated_team_memberships")
    assert [u["user_id"] for u in added["updated_users"]] == ["bob"]   # made, as LiteLLM
    (membership,) = added["updated_team_memberships"]
    assert (membership["user_id"], membership["team_id"]) == ("bob", team_id)
    assert membership["litellm_budget_table"]["max_budget"] == 0.5
    assert {m["user_id"] for m in added["members_with_roles"]} == {"alice", "bob"}

    # -- customer and named budget ---------------------------------------------------------
    customer = admin.post("/customer/new", {"user_id": "cust-1", "alias": "Customer One",
                                            "max_budget": 1.0})
    has(customer, "user_id", "alias", "blocked", "spend", "allowed_model_region",
        "default_model", "budget_id", "litellm_budget_table")
    assert customer["blocked"] is False and customer["spend"] == 0
    assert customer["litellm_budget_table"]["max_budget"] == 1.0

    budget = admin.post("/budget/new", {"budget_id": "two-calls",
                                        "max_budget": 2 * CALL_COST, "rpm_limit": 100})
    has(budget, "budget_id", "max_budget", "soft_budget", "max_parallel_requests",
        "tpm_limit", "rpm_limit", "budget_duration")
    assert (budget["budget_id"], budget["rpm_limit"]) == ("two-calls", 100)

    # -- keys ------------------------------------------------------------------------------
    team_key = admin.post("/key/generate", {"user_id": "bob", "team_id": team_id,
                                            "key_alias": "bob-research"})
    has(team_key, "key", "token", "key_name", "expires", "user_id", "team_id", "models",
        "max_budget", "metadata")
    assert team_key["key"].startswith("sk-")
    assert (team_key["user_id"], team_key["team_id"]) == ("bob", team_id)
    budget_key = admin.post("/key/generate", {"user_id": "alice", "budget_id": "two-calls"})
    assert budget_key["budget_id"] == "two-calls"

    # -- calls through the openai SDK ------------------------------------------------------
    team_sdk = sdk(team_key["key"])
    ask: dict[str, Any] = {"model": "qwen-local", "max_tokens": 16,
                           "messages": [{"role": "user", "content": "ping"}]}
    by_user = team_sdk.chat.completions.create(**ask, user="cust-1")
    assert by_user.usage is not None and by_user.usage.total_tokens == 24
    raw = team_sdk.chat.completions.with_raw_response.create(
        **ask, extra_headers={"x-litellm-customer-id": "cust-2"})
    assert raw.http_response.status_code == 200
    assert raw.headers["x-litellm-response-cost"]
    assert raw.parse().choices[0].message.content
    team_sdk.chat.completions.create(**ask, user="cust-1")

    # the named budget pays for two calls; the third is LiteLLM's budget_exceeded 429
    capped = sdk(budget_key["key"])
    capped.chat.completions.create(**ask)
    capped.chat.completions.create(**ask)
    with pytest.raises(openai.RateLimitError) as refused:
        capped.chat.completions.create(**ask)
    assert "budget" in str(refused.value).lower()

    # -- spend -----------------------------------------------------------------------------
    rows = rows_written(admin, 3, team_id=team_id)
    assert len(rows) == 3
    for row in rows:
        has(row, "request_id", "api_key", "model", "call_type", "spend", "total_tokens",
            "prompt_tokens", "completion_tokens", "startTime", "endTime", "user", "team_id",
            "end_user", "metadata")
        assert (row["team_id"], row["user"]) == (team_id, "bob")
        assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
            8, 16, 24)
    assert sorted(r["end_user"] for r in rows) == ["cust-1", "cust-1", "cust-2"]
    team_nanos = sum(dollars_to_nanos(r["spend"]) for r in rows)
    assert team_nanos == 3 * dollars_to_nanos(CALL_COST)
    rows_written(admin, 2, api_key=budget_key["key"])

    today = datetime.now(UTC).date().isoformat()
    by_team = admin.get("/global/spend/report", start_date=today, end_date=today,
                        group_by="team")
    (day,) = by_team
    has(day, "group_by_day", "teams")
    teams = {t["team_name"]: t for t in day["teams"]}
    has(teams[team_id], "team_name", "total_spend", "metadata")
    assert dollars_to_nanos(teams[team_id]["total_spend"]) == team_nanos
    by_customer = admin.get("/global/spend/report", start_date=today, end_date=today,
                            group_by="customer")
    (day,) = by_customer
    has(day, "group_by_day", "customers")
    customers = {c["customer"]: c for c in day["customers"]}
    assert dollars_to_nanos(customers["cust-1"]["total_spend"]) == 2 * dollars_to_nanos(
        CALL_COST)
    assert dollars_to_nanos(customers["cust-2"]["total_spend"]) == dollars_to_nanos(CALL_COST)

    # -- every level's /info ---------------------------------------------------------------
    bob = admin.get("/user/info", user_id="bob")
    has(bob, "user_id", "user_info", "keys", "teams")
    has(bob["user_info"], "user_id", "max_budget", "spend", "user_email", "user_role",
        "models", "teams")
    assert [k["token"] for k in bob["keys"]] == [team_key["token"]]
    assert [t["team_id"] for t in bob["teams"]] == [team_id]
    (bobs_team,) = bob["teams"]                  # LiteLLM: the teams' objects (list_team)
    has(bobs_team, "team_id", "team_alias", "organization_id", "models", "max_budget",
        "spend", "blocked", "team_memberships")
    assert bobs_team["team_alias"] == "research"
    assert [m["user_id"] for m in bobs_team["team_memberships"]] == ["bob"]
    assert bob["user_info"]["teams"] == [team_id]       # LiteLLM_UserTable.teams: ids
    alice_info = admin.get("/user/info", user_id="alice")
    assert dollars_to_nanos(alice_info["user_info"]["spend"]) == 2 * dollars_to_nanos(
        CALL_COST)                               # her personal key's two calls

    info = admin.get("/team/info", team_id=team_id)
    has(info, "team_id", "team_info", "keys", "team_memberships")
    has(info["team_info"], "team_id", "team_alias", "organization_id", "members_with_roles",
        "max_budget", "spend", "models", "blocked", "budget_reset_at", "created_at")
    assert dollars_to_nanos(info["team_info"]["spend"]) == team_nanos
    assert [k["token"] for k in info["keys"]] == [team_key["token"]]
    (bob_in_team,) = [m for m in info["team_memberships"] if m["user_id"] == "bob"]
    has(bob_in_team, "user_id", "team_id", "spend", "budget_id", "litellm_budget_table")
    assert dollars_to_nanos(bob_in_team["spend"]) == team_nanos

    cust = admin.get("/customer/info", end_user_id="cust-1")
    has(cust, "user_id", "blocked", "alias", "spend", "allowed_model_region",
        "default_model", "litellm_budget_table")
    assert (cust["user_id"], cust["alias"]) == ("cust-1", "Customer One")
    assert dollars_to_nanos(cust["spend"]) == 2 * dollars_to_nanos(CALL_COST)
    made_on_use = admin.get("/customer/info", end_user_id="cust-2")  # created by its call
    assert dollars_to_nanos(made_on_use["spend"]) == dollars_to_nanos(CALL_COST)

    org_info = admin.get("/organization/info", organization_id=org_id)
    has(org_info, "organization_id", "organization_alias", "budget_id", "spend", "models",
        "members", "teams", "litellm_budget_table", "created_at", "updated_at")
    assert [t["team_id"] for t in org_info["teams"]] == [team_id]
    assert dollars_to_nanos(org_info["spend"]) == team_nanos
    assert org_info["spend"] == nanos_to_dollars(team_nanos)

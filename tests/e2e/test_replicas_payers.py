"""Budgets and limits above the key across three `faregate serve` replicas on one Postgres and
one Redis: a team over five keys, an organization over two teams, an end user over two keys
(named by header on some calls, by the body's `user` on others) and a team's TPM limit. Each
burst is spread over the replicas; the level's spend (its row and the ledger in Postgres, and
what its /info route says) ends within its budget, and the payer gets nearly all of it.

The replicas are shared by the module (started once); each test uses payers of its own."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import truncate_pg
from e2e.conftest import ServedGateway, start_gateway
from e2e.test_replicas import ADMIN, RedisServer, new_key, spread

# The module's own Redis (a module fixture of test_replicas, imported so pytest finds it).
from e2e.test_replicas import redis as redis
from support import chat, env_for, stop, write_config

from faregate.money import dollars_to_nanos

CALL_COST = 0.00004                          # 8 prompt + 16 completion tokens
CALL_NANOS = dollars_to_nanos(CALL_COST)
BURST_SLOTS = 10                             # each budget fits this many calls


@dataclass
class Replicas:
    gateways: list[ServedGateway]
    db_url: str

    def __getitem__(self, i: int) -> ServedGateway:
        return self.gateways[i]

    def url(self, i: int, path: str) -> str:
        return f"{self.gateways[i % len(self.gateways)].base_url}{path}"


@pytest.fixture(scope="module")
def replicas(pg_migrated_url: str, mock_upstream: str, redis: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Three gateways sharing one Postgres and one Redis, for the whole module."""
    tmp = tmp_path_factory.mktemp("replicas-payers")
    asyncio.run(truncate_pg(pg_migrated_url))
    cfg = write_config(tmp / "config.yaml", mock_upstream, extra_models=[
        {"model_name": "slow-model", "litellm_params": {
            "model": "openai/slow-20", "api_base": mock_upstream,
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}])
    env = {**os.environ, **env_for(pg_migrated_url, tmp), "REDIS_URL": redis.url,
           "DISABLE_SCHEMA_UPDATE": "true"}
    gateways: list[ServedGateway] = []
    try:
        for _ in range(3):
            gateways.append(start_gateway(tmp, env, ["--config", str(cfg)]))
        yield Replicas(gateways, pg_migrated_url)
    finally:
        for gw in gateways:
            stop(gw.proc)


@dataclass
class Call:
    key: str
    body: dict[str, Any] = field(default_factory=chat)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


async def burst(replicas: Replicas, calls: list[Call]) -> list[Answer]:
    """Every call at once, call i on replica i % 3."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=400)) as http:
        async def one(i: int, call: Call) -> Answer:
            resp = await http.post(replicas.url(i, "/v1/chat/completions"), json=call.body,
                                   headers={"Authorization": f"Bearer {call.key}",
                                            **call.headers})
            body = resp.json() if resp.headers.get("content-type", "").startswith(
                "application/json") else {}
            return Answer(resp.status_code, body)
        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(calls))))


def statuses(answers: list[Answer]) -> list[int]:
    return [a.status for a in answers]


def refusals(answers: list[Answer]) -> list[str]:
    return [str(a.body["error"]["message"]) for a in answers if a.status == 429]


async def _ledger(db_url: str, column: str, value: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(spend_nanos), 0) AS nanos, "
            "coalesce(sum(prompt_tokens + completion_tokens), 0) AS tokens "
            f"FROM faregate_spend_logs WHERE {column} = $1", value)
    finally:
        await conn.close()
    assert row is not None
    return int(row["n"]), int(row["nanos"]), int(row["tokens"])


async def _level_spend(db_url: str, table: str, id_column: str, value: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        spend = await conn.fetchval(
            f"SELECT spend_nanos FROM faregate_{table} WHERE {id_column} = $1", value)
    finally:
        await conn.close()
    assert spend is not None, f"no {table} row {value}"
    return int(spend)


def ledger(replicas: Replicas, column: str, value: str, rows: int) -> tuple[int, int]:
    """The ledger in Postgres for one level, once every replica has written the `rows` rows the
    burst served: (spend in nanos, tokens)."""
    deadline = time.monotonic() + 15
    while True:
        n, nanos, tokens = asyncio.run(_ledger(replicas.db_url, column, value))
        if n >= rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert n == rows, f"{n} ledger rows for {column}={value}, {rows} calls served"
    return nanos, tokens


def level_spend(replicas: Replicas, table: str, id_column: str, value: str) -> int:
    return asyncio.run(_level_spend(replicas.db_url, table, id_column, value))


def admin_get(replicas: Replicas, i: int, path: str, **params: str) -> Any:
    resp = httpx.get(replicas.url(i, path), params=params, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return resp.json()


def admin_post(replicas: Replicas, i: int, path: str, body: dict[str, Any]) -> Any:
    resp = httpx.post(replicas.url(i, path), json=body, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return resp.json()


def assert_budget_held(spend_nanos: int, budget_nanos: int) -> None:
    """Never past the budget, and nearly all of it used (>= 80%). The last call admitted may
    have had its max_tokens cut to the room left, so spend is not a multiple of a call's."""
    assert spend_nanos <= budget_nanos
    assert spend_nanos >= 0.8 * budget_nanos, f"{spend_nanos} of {budget_nanos} nanos spent"


def test_a_team_budget_holds_across_three_replicas(replicas: Replicas) -> None:
    budget = BURST_SLOTS * CALL_COST
    admin_post(replicas, 0, "/team/new", {"team_id": "burst-team", "max_budget": budget})
    keys = [new_key(replicas[i % 3], team_id="burst-team") for i in range(5)]
    answers = asyncio.run(burst(replicas, [Call(keys[i % 5]) for i in range(60)]))
    assert set(statuses(answers)) <= {200, 429}
    assert all("Team=burst-team" in said for said in refusals(answers)), refusals(answers)
    served = statuses(answers).count(200)
    nanos, _ = ledger(replicas, "team_id", "burst-team", served)
    assert_budget_held(nanos, dollars_to_nanos(budget))
    assert level_spend(replicas, "teams", "team_id", "burst-team") == nanos
    team = admin_get(replicas, 1, "/team/info", team_id="burst-team")["team_info"]
    assert dollars_to_nanos(team["spend"]) == nanos
    rows = admin_get(replicas, 2, "/spend/logs", team_id="burst-team", page_size="1000")
    assert len(rows) == served
    # A change on one replica reaches the others' next request (the team's version in Redis
    # moves on; each replica reads the team again), and the new budget serves.
    admin_post(replicas, 0, "/team/update", {"team_id": "burst-team", "max_budget": 1.0})
    assert asyncio.run(spread(replicas.gateways, keys[0], 6)) == [200] * 6
    admin_post(replicas, 0, "/team/block", {"team_id": "burst-team"})
    assert asyncio.run(spread(replicas.gateways, keys[1], 3)) == [401] * 3


def test_an_organization_budget_holds_over_two_teams(replicas: Replicas) -> None:
    budget = BURST_SLOTS * CALL_COST
    admin_post(replicas, 0, "/organization/new", {
        "organization_id": "burst-org", "organization_alias": "Burst Org",
        "max_budget": budget})
    for team in ("org-team-a", "org-team-b"):
        admin_post(replicas, 1, "/team/new", {"team_id": team, "organization_id": "burst-org"})
    keys = [new_key(replicas[i % 3], team_id=team)
            for i, team in enumerate(["org-team-a", "org-team-b"] * 2)]
    # one call of each team first, so both teams have spend whichever the burst favours
    opening = asyncio.run(burst(replicas, [Call(keys[0])]))
    opening += asyncio.run(burst(replicas, [Call(keys[1])]))
    assert statuses(opening) == [200, 200], opening
    answers = asyncio.run(burst(replicas, [Call(keys[i % 4]) for i in range(58)]))
    assert set(statuses(answers)) <= {200, 429}
    assert all("Organization=burst-org" in said for said in refusals(answers)), \
        refusals(answers)
    served = statuses(answers).count(200) + 2
    nanos, _ = ledger(replicas, "organization_id", "burst-org", served)
    assert_budget_held(nanos, dollars_to_nanos(budget))
    assert level_spend(replicas, "organizations", "organization_id", "burst-org") == nanos
    org = admin_get(replicas, 2, "/organization/info", organization_id="burst-org")
    assert dollars_to_nanos(org["spend"]) == nanos
    assert {t["team_id"] for t in org["teams"]} == {"org-team-a", "org-team-b"}
    # both teams spent, and their spends add up to the organization's
    team_nanos = [dollars_to_nanos(admin_get(replicas, i, "/team/info", team_id=t)
                                   ["team_info"]["spend"])
                  for i, t in enumerate(("org-team-a", "org-team-b"))]
    assert all(team_nanos) and sum(team_nanos) == nanos


def test_an_end_user_budget_holds_over_two_keys(replicas: Replicas) -> None:
    budget = BURST_SLOTS * CALL_COST
    admin_post(replicas, 0, "/customer/new", {"user_id": "burst-customer",
                                               "max_budget": budget})
    keys = [new_key(replicas[0]), new_key(replicas[1])]
    by_header = {"x-litellm-customer-id": "burst-customer"}
    by_body = chat(user="burst-customer")
    # one call named each way first (both are served), then the burst mixes them
    opening = asyncio.run(burst(replicas, [Call(keys[0], headers=by_header)]))
    opening += asyncio.run(burst(replicas, [Call(keys[1], body=by_body)]))
    assert statuses(opening) == [200, 200], opening
    calls = [Call(keys[i % 2], headers=by_header) if i % 4 < 2
             else Call(keys[i % 2], body=by_body) for i in range(58)]
    answers = asyncio.run(burst(replicas, calls))
    assert set(statuses(answers)) <= {200, 429}
    assert all("End User=burst-customer" in said for said in refusals(answers)), \
        refusals(answers)
    served = statuses(answers).count(200) + 2
    nanos, _ = ledger(replicas, "end_user", "burst-customer", served)
    assert_budget_held(nanos, dollars_to_nanos(budget))
    assert level_spend(replicas, "end_users", "end_user_id", "burst-customer") == nanos
    customer = admin_get(replicas, 1, "/customer/info", end_user_id="burst-customer")
    assert dollars_to_nanos(customer["spend"]) == nanos
    report = admin_get(replicas, 2, "/spend/logs", end_user="burst-customer",
                       page_size="1000")
    assert len(report) == served


def test_a_team_tpm_limit_holds_across_three_replicas(replicas: Replicas) -> None:
    # Slow streams of 50 tokens (~1 s: the burst is in flight together); each reserves
    # 126 tokens (its prompt's bound + 50), so a limit of 1,260 admits 10 at once.
    tpm_limit = BURST_SLOTS * 126
    admin_post(replicas, 0, "/team/new", {"team_id": "tpm-team", "tpm_limit": tpm_limit,
                                          "models": ["slow-model"]})
    keys = [new_key(replicas[i % 3], team_id="tpm-team", models=["slow-model"])
            for i in range(5)]
    slow = chat(model="slow-model", max_tokens=50, stream=True)
    answers = asyncio.run(burst(replicas, [Call(keys[i % 5], body=slow) for i in range(30)]))
    assert set(statuses(answers)) <= {200, 429}
    assert all("tpm_limit" in said and "tpm-team" in said for said in refusals(answers)), \
        refusals(answers)
    served = statuses(answers).count(200)
    _, tokens = ledger(replicas, "team_id", "tpm-team", served)
    team = admin_get(replicas, 1, "/team/info", team_id="tpm-team")["team_info"]
    assert team["tpm_limit"] == tpm_limit
    assert tokens <= tpm_limit
    # every grant the limit allows was used: 10 bounds fit, and no call got past it
    assert served >= BURST_SLOTS, served
    rows = admin_get(replicas, 2, "/spend/logs", team_id="tpm-team", page_size="1000")
    assert sum(r["total_tokens"] for r in rows) == tokens



def test_answers_show_the_keys_spend_across_replicas(replicas: Replicas) -> None:
    """x-litellm-key-spend in Redis mode: the key's spend as the admission script read it
    in Redis plus this call's cost, so after calls on other replicas each answer shows what
    /key/info said before it plus the call (sequential calls: no other call in flight). A
    429 for a limit names the window, on every replica."""
    key = new_key(replicas[0], max_budget=1.0, rpm_limit=9)
    shown = 0
    with httpx.Client(timeout=30) as http:
        for i in range(9):
            before = key_spend_once_written(replicas, i + 1, key, shown)
            resp = http.post(replicas.url(i, "/v1/chat/completions"), json=chat(),
                             headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 200, resp.text
            cost = dollars_to_nanos(float(resp.headers["x-litellm-response-cost"]))
            shown = dollars_to_nanos(float(resp.headers["x-litellm-key-spend"]))
            assert shown == before + cost, (i, before, cost, shown)
            assert resp.headers["x-ratelimit-remaining-requests"] == str(8 - i)
        refused = http.post(replicas.url(9, "/v1/chat/completions"), json=chat(),
                            headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 429, refused.text
    assert refused.headers["x-ratelimit-limit-requests"] == "9"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    # a budget refusal tells the windows too, nothing of the refused call counted
    broke = new_key(replicas[1], max_budget=0, rpm_limit=5, tpm_limit=1000)
    for i in range(3):
        resp = httpx.post(replicas.url(i, "/v1/chat/completions"), json=chat(),
                          headers={"Authorization": f"Bearer {broke}"})
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["type"] == "budget_exceeded"
        assert (resp.headers["x-ratelimit-limit-requests"],
                resp.headers["x-ratelimit-remaining-requests"]) == ("5", "5")
        assert (resp.headers["x-ratelimit-limit-tokens"],
                resp.headers["x-ratelimit-remaining-tokens"]) == ("1000", "1000")
        assert resp.headers["x-litellm-key-spend"] == "0.0"


def key_spend_once_written(replicas: Replicas, i: int, key: str, at_least: int) -> int:
    """/key/info's spend (nanos) on replica i once the ledger holds `at_least` of it."""
    deadline = time.monotonic() + 15
    while True:
        spend = dollars_to_nanos(admin_get(replicas, i, "/key/info", key=key)["info"]["spend"])
        if spend >= at_least or time.monotonic() > deadline:
            return spend
        time.sleep(0.05)

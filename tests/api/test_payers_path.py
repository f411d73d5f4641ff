"""Every request pays at every level: a key's user, team, member, organization and end user are
loaded with the key and charged with it, over real HTTP on SQLite and Postgres.

Teams, organizations and end users are made straight through storage (their admin routes are
tested on their own); keys come from /key/generate and are then placed in them."""

from __future__ import annotations

import asyncio

import pytest
from api.conftest import RunningGateway
from support import chat

from faregate.keys.tokens import hash_key
from faregate.money import dollars_to_nanos
from faregate.records import (
    EndUserRecord,
    MemberRecord,
    OrganizationRecord,
    TeamRecord,
    UserRecord,
)
from faregate.storage.protocols import SpendQuery

# The mock reports 8 prompt tokens for "ping" and max_tokens completion tokens: 8 * $0.000001
# + 16 * $0.000002 = $0.00004 per call with max_tokens 16 (as in test_budgets.py).
CALL_NANOS = dollars_to_nanos(0.00004)


async def key_in(gw: RunningGateway, **placed: str) -> str:
    """A new key, placed in a team / given a user / an organization through storage."""
    key = await gw.new_key(models=[])
    token = hash_key(key)
    assert await gw.app.storage.update_key(token, dict(placed)) is not None
    gw.app.directory.forget(token)
    return key


async def post(gw: RunningGateway, key: str, body: dict[str, object],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    resp = await gw.http.post("/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {key}", **(headers or {})})
    return resp.status_code, resp.json()


async def until_refused(gw: RunningGateway, key: str, body: dict[str, object],
                        headers: dict[str, str] | None = None, most: int = 10) -> str:
    """Call until a 429 (at most `most` calls): its message."""
    for _ in range(most):
        status, answer = await post(gw, key, body, headers)
        if status == 429:
            return str(answer["error"]["message"])      # type: ignore[index]
        assert status == 200, answer
    raise AssertionError(f"no refusal in {most} calls")


async def rows_sum(gw: RunningGateway, **query: str) -> int:
    totals = await gw.app.storage.spend_totals("all", SpendQuery(**query))  # type: ignore[arg-type]
    return sum(t.spend_nanos for t in totals)


async def test_a_team_budget_holds_over_a_burst_from_five_keys(gateway: RunningGateway) -> None:
    storage = gateway.app.storage
    await storage.insert_team(TeamRecord("t1", max_budget_nanos=10 * CALL_NANOS))
    keys = [await key_in(gateway, team_id="t1") for _ in range(5)]

    async def call(i: int) -> int:
        status, body = await post(gateway, keys[i % 5], chat())
        if status != 200:
            assert status == 429, body
            assert "Team=t1" in str(body["error"]), body     # type: ignore[index]
        return status

    statuses = await asyncio.gather(*(call(i) for i in range(50)))
    await gateway.app.ledger.flush()
    team = await storage.get_team("t1")
    assert team is not None
    assert statuses.count(200) >= 8
    assert statuses.count(200) + statuses.count(429) == 50
    assert team.spend_nanos <= 10 * CALL_NANOS
    assert team.spend_nanos == await rows_sum(gateway, team_id="t1")
    (total,) = await gateway.app.storage.spend_totals("team", SpendQuery(team_id="t1"))
    assert total.requests == statuses.count(200)


async def test_an_end_user_pays_over_two_keys_by_header_and_by_user(
        gateway: RunningGateway) -> None:
    storage = gateway.app.storage
    await storage.insert_end_user(EndUserRecord("cust-1", max_budget_nanos=3 * CALL_NANOS))
    first, second = await key_in(gateway), await key_in(gateway)
    assert (await post(gateway, first, chat(), {"x-litellm-end-user-id": "cust-1"}))[0] == 200
    assert (await post(gateway, first, chat(), {"x-litellm-customer-id": "cust-1"}))[0] == 200
    assert "End User=cust-1" in await until_refused(gateway, second, chat(user="cust-1"))
    await gateway.app.ledger.flush()
    end_user = await storage.get_end_user("cust-1")
    assert end_user is not None
    assert 2 * CALL_NANOS <= end_user.spend_nanos <= 3 * CALL_NANOS
    assert end_user.spend_nanos == await rows_sum(gateway, end_user="cust-1")


async def test_a_new_end_user_is_created_with_its_first_request(
        gateway: RunningGateway) -> None:
    key = await key_in(gateway)
    assert (await post(gateway, key, chat(user="new-customer")))[0] == 200
    await gateway.app.ledger.flush()
    end_user = await gateway.app.storage.get_end_user("new-customer")
    assert end_user is not None and end_user.spend_nanos == CALL_NANOS


@pytest.mark.parametrize("user", [7, "x" * 257, "a\x00b"])
async def test_a_bad_end_user_is_a_400(gateway: RunningGateway, user: object) -> None:
    key = await key_in(gateway)
    status, body = await post(gateway, key, chat(user=user))
    assert status == 400, body
    assert body["error"]["param"] == "user"        # type: ignore[index]


async def test_an_organization_pays_for_its_two_teams(gateway: RunningGateway) -> None:
    storage = gateway.app.storage
    await storage.insert_organization(OrganizationRecord("o1",
                                                         max_budget_nanos=3 * CALL_NANOS))
    await storage.insert_team(TeamRecord("ta", organization_id="o1"))
    await storage.insert_team(TeamRecord("tb", organization_id="o1"))
    a, b = await key_in(gateway, team_id="ta"), await key_in(gateway, team_id="tb")
    for key in (a, b):
        assert (await post(gateway, key, chat()))[0] == 200
    assert "Organization=o1" in await until_refused(gateway, a, chat())
    await gateway.app.ledger.flush()
    org = await storage.get_organization("o1")
    assert org is not None
    assert 2 * CALL_NANOS <= org.spend_nanos <= 3 * CALL_NANOS
    assert org.spend_nanos == await rows_sum(gateway, organization_id="o1")
    assert await rows_sum(gateway, team_id="ta") > 0 and await rows_sum(gateway, team_id="tb")


async def test_a_personal_key_pays_its_user_and_a_team_key_its_member(
        gateway: RunningGateway) -> None:
    storage = gateway.app.storage
    await storage.insert_user(UserRecord("u1", max_budget_nanos=3 * CALL_NANOS))
    await storage.insert_team(TeamRecord("t2"))
    await storage.add_team_member(MemberRecord("t2", "u1",
                                               max_budget_in_team_nanos=3 * CALL_NANOS))
    personal = await key_in(gateway, user_id="u1")
    in_team = await key_in(gateway, user_id="u1", team_id="t2")
    said = await until_refused(gateway, personal, chat())
    assert "User=u1" in said, said
    # A team key is not paid by the user's own budget, only by its membership's.
    assert (await post(gateway, in_team, chat()))[0] == 200
    assert "TeamMember=u1:t2" in await until_refused(gateway, in_team, chat())
    await gateway.app.ledger.flush()
    member = await storage.get_team_member("t2", "u1")
    user = await storage.get_user("u1")
    assert member is not None and CALL_NANOS <= member.spend_nanos <= 3 * CALL_NANOS
    assert member.spend_nanos == await rows_sum(gateway, team_id="t2", user_id="u1")
    assert user is not None and CALL_NANOS <= user.spend_nanos <= 3 * CALL_NANOS
    assert user.spend_nanos == await rows_sum(gateway, user_id="u1") - member.spend_nanos


async def test_blocked_team_organization_and_end_user_are_refused(
        gateway: RunningGateway) -> None:
    storage = gateway.app.storage
    await storage.insert_team(TeamRecord("blocked-team", blocked=True))
    await storage.insert_organization(OrganizationRecord("blocked-org", blocked=True))
    await storage.insert_team(TeamRecord("in-blocked-org", organization_id="blocked-org"))
    await storage.insert_end_user(EndUserRecord("blocked-customer", blocked=True))
    status, body = await post(gateway, await key_in(gateway, team_id="blocked-team"), chat())
    assert status == 401 and body["error"]["code"] == "team_blocked", body  # type: ignore[index]
    status, body = await post(gateway, await key_in(gateway, team_id="in-blocked-org"), chat())
    assert status == 401, body
    assert body["error"]["code"] == "organization_blocked"     # type: ignore[index]
    status, body = await post(gateway, await key_in(gateway), chat(user="blocked-customer"))
    assert status == 400, body
    assert body["error"]["code"] == "end_user_blocked"         # type: ignore[index]
    await gateway.app.ledger.flush()
    assert await rows_sum(gateway) == 0


async def test_a_key_whose_team_is_gone_is_paid_by_the_key_alone(
        gateway: RunningGateway) -> None:
    key = await key_in(gateway, team_id="no-such-team")
    assert (await post(gateway, key, chat()))[0] == 200


async def test_a_team_key_uses_only_the_teams_models(gateway: RunningGateway) -> None:
    await gateway.app.storage.insert_team(TeamRecord("tm", models=("qwen-local",)))
    key = await key_in(gateway, team_id="tm")
    assert (await post(gateway, key, chat()))[0] == 200
    status, body = await post(gateway, key, {**chat(), "model": "slow-model"})
    assert status == 401, body
    assert body["error"]["code"] == "team_model_access_denied"  # type: ignore[index]
    models = (await gateway.http.get("/v1/models",
                                     headers={"Authorization": f"Bearer {key}"})).json()
    assert [m["id"] for m in models["data"]] == ["qwen-local"]
    await gateway.app.ledger.flush()
    assert await rows_sum(gateway, team_id="tm") == CALL_NANOS


async def test_an_anthropic_clients_metadata_user_id_names_the_end_user(
        gateway: RunningGateway) -> None:
    key = await key_in(gateway)
    resp = await gateway.http.post("/v1/messages", headers={"x-api-key": key}, json={
        "model": "qwen-local", "max_tokens": 16, "metadata": {"user_id": "anthropic-cust"},
        "messages": [{"role": "user", "content": "ping"}]})
    assert resp.status_code == 200, resp.text
    await gateway.app.ledger.flush()
    assert await rows_sum(gateway, end_user="anthropic-cust") > 0

"""An admin change to an organization, an end user or a named budget is seen by the very next
request on this process (SQLite and Postgres), not after the key cache's TTL."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api.accounts_support import ok
from api.conftest import RunningGateway, serve
from api.test_payers_path import CALL_NANOS, key_in, post
from support import chat, env_for, write_config

from faregate import config
from faregate.app import Faregate
from faregate.money import nanos_to_dollars
from faregate.records import TeamRecord


async def test_blocking_a_customer_refuses_its_next_request(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/customer/new", json={"user_id": "c1"})
    key = await key_in(gateway)
    assert (await post(gateway, key, chat(user="c1")))[0] == 200
    await ok(gateway, "POST", "/customer/block", json={"user_ids": ["c1"]})
    status, body = await post(gateway, key, chat(user="c1"))
    assert status == 400 and body["error"]["code"] == "end_user_blocked", body  # type: ignore[index]
    await ok(gateway, "POST", "/end_user/unblock", json={"user_ids": ["c1"]})
    assert (await post(gateway, key, chat(user="c1")))[0] == 200


async def test_blocking_an_organization_refuses_its_teams_next_request(
        gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/organization/new",
             json={"organization_id": "o1", "organization_alias": "O"})
    await gateway.app.storage.insert_team(TeamRecord("t1", organization_id="o1"))
    key = await key_in(gateway, team_id="t1")
    assert (await post(gateway, key, chat()))[0] == 200
    await ok(gateway, "PATCH", "/organization/update",
             json={"organization_id": "o1", "blocked": True})
    status, body = await post(gateway, key, chat())
    assert status == 401, body
    assert body["error"]["code"] == "organization_blocked"     # type: ignore[index]


async def test_a_named_budget_change_reaches_its_customers(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/budget/new", json={"budget_id": "tier"})
    await ok(gateway, "POST", "/customer/new", json={"user_id": "c1", "budget_id": "tier"})
    key = await key_in(gateway)
    assert (await post(gateway, key, chat(user="c1")))[0] == 200
    # now at most one more call's worth: the customer is refused within two calls
    await ok(gateway, "POST", "/budget/update", json={
        "budget_id": "tier", "max_budget": nanos_to_dollars(2 * CALL_NANOS)})
    statuses = [(await post(gateway, key, chat(user="c1")))[0] for _ in range(3)]
    assert 429 in statuses, statuses


SHARED_REDIS = os.environ.get("FAREGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def replicas(db_url: str, mock_upstream: str, tmp_path: Path
                   ) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    """Two gateways on one database and one Redis, as two replicas."""
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            cfg = write_config(home / "config.yaml", mock_upstream)
            settings = config.load({**os.environ, **env_for(db_url, home),
                                    "REDIS_URL": SHARED_REDIS}, cfg)
            running.append(await stack.enter_async_context(
                serve(Faregate.from_settings(settings))))
        yield running[0], running[1]


async def test_a_change_on_one_replica_is_seen_by_the_other(
        replicas: tuple[RunningGateway, RunningGateway]) -> None:
    a, b = replicas
    run = uuid.uuid4().hex[:8]          # the Redis is shared with other tests' payers
    customer, org = f"c-{run}", f"o-{run}"
    await ok(a, "POST", "/customer/new", json={"user_id": customer})
    await ok(a, "POST", "/organization/new",
             json={"organization_id": org, "organization_alias": "O"})
    await a.app.storage.insert_team(TeamRecord(f"t-{run}", organization_id=org))
    key = await a.new_key(models=[], team_id=f"t-{run}")
    first = await post(b, key, chat(user=customer))
    assert first[0] == 200, first      # b has both cached
    await ok(a, "POST", "/customer/block", json={"user_ids": [customer]})
    status, body = await post(b, key, chat(user=customer))
    assert status == 400 and body["error"]["code"] == "end_user_blocked", body  # type: ignore[index]
    await ok(a, "PATCH", "/organization/update", json={"organization_id": org,
                                                        "blocked": True})
    status, body = await post(b, key, chat())
    assert status == 401, body
    assert body["error"]["code"] == "organization_blocked"     # type: ignore[index]


async def test_an_admin_change_with_redis_unreachable_is_a_503_and_is_saved(
        db_url: str, mock_upstream: str, tmp_path: Path) -> None:
    """Replicas learn of an admin change through Redis. With Redis unreachable the change is
    still saved (the database is the source of truth) and the caller gets a 503
    redis_unavailable saying so, not a 500."""
    from support import free_port
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    settings = config.load({**os.environ, **env_for(db_url, tmp_path),
                            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, cfg)
    async with serve(Faregate.from_settings(settings)) as gw:
        answer = await gw.admin("POST", "/customer/new", json={"user_id": "c-redis-down"})
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "redis_unavailable"
        assert "saved" in error["message"]
        info = await gw.admin("GET", "/customer/info", params={"end_user_id": "c-redis-down"})
        assert info.status_code == 200, info.text

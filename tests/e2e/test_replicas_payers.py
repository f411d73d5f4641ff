"""A team's budget across three `faregate serve` replicas on one Postgres and one Redis: five
keys of the team, a burst spread over the replicas, the team never past its budget."""

from __future__ import annotations

import asyncio
import time

import httpx
from e2e.conftest import ServedGateway
from e2e.test_replicas import ADMIN, new_key, spread

# The fixtures: a Redis of the module's own, three replicas on it and one Postgres.
from e2e.test_replicas import redis as redis
from e2e.test_replicas import replicas as replicas

CALL_COST = 0.00004                          # 8 prompt + 16 completion tokens


def test_a_team_budget_holds_across_three_replicas(replicas: list[ServedGateway]) -> None:
    budget = 10 * CALL_COST
    made = httpx.post(f"{replicas[0].base_url}/team/new", headers=ADMIN,
                      json={"team_id": "burst-team", "max_budget": budget})
    assert made.status_code == 200, made.text
    keys = [new_key(replicas[i % 3], team_id="burst-team") for i in range(5)]

    async def burst() -> list[int]:
        per_key = await asyncio.gather(*(spread(replicas, key, 20) for key in keys))
        return [status for statuses in per_key for status in statuses]

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 8
    time.sleep(1.0)                          # every replica's ledger flushes
    team = httpx.get(f"{replicas[1].base_url}/team/info", params={"team_id": "burst-team"},
                     headers=ADMIN).json()["team_info"]
    rows = httpx.get(f"{replicas[2].base_url}/spend/logs", headers=ADMIN,
                     params={"team_id": "burst-team", "page_size": 1000}).json()
    assert team["spend"] <= budget + 1e-12
    assert len(rows) == statuses.count(200)
    assert abs(sum(r["spend"] for r in rows) - team["spend"]) < 1e-12
    # A change on one replica reaches the others' next request (the team's version in Redis
    # moves on; each replica reads the team again), and the new budget serves.
    raised = httpx.post(f"{replicas[0].base_url}/team/update", headers=ADMIN,
                        json={"team_id": "burst-team", "max_budget": 1.0})
    assert raised.status_code == 200, raised.text
    assert asyncio.run(spread(replicas, keys[0], 6)) == [200] * 6
    blocked = httpx.post(f"{replicas[0].base_url}/team/block", headers=ADMIN,
                         json={"team_id": "burst-team"})
    assert blocked.status_code == 200, blocked.text
    assert asyncio.run(spread(replicas, keys[1], 3)) == [401] * 3

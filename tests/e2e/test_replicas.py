"""Several `faregate serve` processes on one Postgres and one Redis, over real HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import truncate_pg
from e2e.conftest import ServedGateway, start_gateway
from redis import Redis
from support import MASTER_KEY, chat, env_for, free_port, stop, wait_for_port, write_config

from faregate.keys.tokens import hash_key

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server (Debian package redis-server)")
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}


class RedisServer:
    """A Redis of this test module's own, so stopping it disturbs nothing else."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)], stdout=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(pg_migrated_url: str, mock_upstream: str, redis: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServedGateway]]:
    """Three gateways sharing one Postgres and one Redis, for the whole module: each test
    works on keys of its own, and checks the ledger rows of those keys only."""
    tmp_path = tmp_path_factory.mktemp("replicas")
    asyncio.run(truncate_pg(pg_migrated_url))
    cfg = write_config(tmp_path / "config.yaml", mock_upstream, extra_models=[
        {"model_name": "slow-model", "litellm_params": {
            "model": "openai/slow-20", "api_base": mock_upstream,
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}])
    env = {**os.environ, **env_for(pg_migrated_url, tmp_path), "REDIS_URL": redis.url,
           "DISABLE_SCHEMA_UPDATE": "true"}
    gateways = [start_gateway(tmp_path, env, ["--config", str(cfg)]) for _ in range(3)]
    yield gateways
    for gw in gateways:
        stop(gw.proc)


def new_key(gw: ServedGateway, **fields: object) -> str:
    resp = httpx.post(f"{gw.base_url}/key/generate", json=fields, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


async def spread(gateways: list[ServedGateway], key: str, n: int, **body: object) -> list[int]:
    """n concurrent requests, round-robin over the replicas; their statuses."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=400)) as http:
        async def one(i: int) -> int:
            resp = await http.post(f"{gateways[i % len(gateways)].base_url}/v1/chat/completions",
                                   json={**chat(), **body},
                                   headers={"Authorization": f"Bearer {key}"})
            return resp.status_code
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def ledger(gw: ServedGateway, key: str) -> tuple[float, list[dict]]:
    """The key's spend and its ledger rows, once every replica has flushed."""
    time.sleep(1.0)
    info = httpx.get(f"{gw.base_url}/key/info", params={"key": key}, headers=ADMIN).json()
    rows = httpx.get(f"{gw.base_url}/spend/logs", params={"api_key": key, "page_size": 1000},
                     headers=ADMIN).json()
    return float(info["info"]["total_spend"]), rows


def test_budget_holds_across_three_replicas(replicas: list[ServedGateway]) -> None:
    call_cost = 0.00004                      # 8 prompt + 16 completion tokens
    budget = 20 * call_cost
    key = new_key(replicas[0], max_budget=budget)
    statuses = asyncio.run(spread(replicas, key, 300))
    assert set(statuses) <= {200, 429}
    spend, rows = ledger(replicas[1], key)
    assert spend <= budget + 1e-12
    assert statuses.count(200) >= 18
    assert len(rows) == statuses.count(200)
    assert abs(sum(r["spend"] for r in rows) - spend) < 1e-12


# Moves every booking of a Redis rate window one window (60 s) into the past, as a minute
# passing does: a booking is kept in the window's hash under the Redis second it was made in
# (admission/shared.py), beside 't' (their total), 'o' and 'n' (the oldest and newest
# booking's second), and the admission script drops those 60 s older than Redis's TIME.
# A new layout fails `moved == 30` below: this seam cannot let the test pass unseen.
_A_MINUTE_PASSES = """
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for f = 1, #fields, 2 do
  local name, value = fields[f], fields[f + 1]
  if name == 'o' or name == 'n' then
    redis.call('HSET', KEYS[1], name, tonumber(value) - tonumber(ARGV[1]))
  elseif name ~= 't' then
    redis.call('HDEL', KEYS[1], name)
    redis.call('HINCRBY', KEYS[1], tonumber(name) - tonumber(ARGV[1]), value)
    total = total + tonumber(value)
  end
end
return total
"""


def test_rpm_limit_is_exact_across_replicas_and_the_next_window_admits(
        replicas: list[ServedGateway], redis: RedisServer) -> None:
    key = new_key(replicas[0], rpm_limit=30)
    statuses = asyncio.run(spread(replicas, key, 100))
    assert statuses.count(200) == 30 and statuses.count(429) == 70
    # The next window, without waiting a minute for it: the 30 bookings, as Redis holds them
    # for every replica, are moved 60 s back.
    with Redis.from_url(redis.url) as client:
        moved = client.eval(_A_MINUTE_PASSES, 1, f"fg:win:k:{hash_key(key)}:rpm", 60)
    assert moved == 30
    again = asyncio.run(spread(replicas, key, 3))
    assert again == [200, 200, 200]


def test_tpm_and_parallel_limits_across_replicas(replicas: list[ServedGateway]) -> None:
    # slow streams of 50 tokens (~1 s: the burst is in flight together) reserve 126 tokens each
    tpm_key = new_key(replicas[0], models=["slow-model"], tpm_limit=1260)
    statuses = asyncio.run(spread(replicas, tpm_key, 30, model="slow-model", max_tokens=50,
                                  stream=True))
    assert statuses.count(200) == 10
    par_key = new_key(replicas[0], models=["slow-model"], max_parallel_requests=4)
    statuses = asyncio.run(spread(replicas, par_key, 12, model="slow-model", max_tokens=50,
                                  stream=True))
    assert statuses.count(200) == 4


def test_model_rpm_limit_limits_one_model_only(replicas: list[ServedGateway]) -> None:
    key = new_key(replicas[0], models=["qwen-local", "other-model"],
                  model_rpm_limit={"qwen-local": 5})
    assert asyncio.run(spread(replicas, key, 12)).count(200) == 5
    assert asyncio.run(spread(replicas, key, 12, model="other-model")).count(200) == 12


def test_blocking_on_one_replica_is_seen_by_all_at_once(replicas: list[ServedGateway]) -> None:
    key = new_key(replicas[0])
    auth = {"Authorization": f"Bearer {key}"}
    for gw in replicas:                      # every replica has the key cached
        assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(),
                          headers=auth).status_code == 200
    assert httpx.post(f"{replicas[0].base_url}/key/block", json={"key": key},
                      headers=ADMIN).status_code == 200
    for gw in replicas:
        resp = httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(), headers=auth)
        assert resp.status_code == 401 and "blocked" in resp.json()["error"]["message"]
    assert httpx.post(f"{replicas[2].base_url}/key/unblock", json={"key": key},
                      headers=ADMIN).status_code == 200
    for gw in replicas:
        assert httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(),
                          headers=auth).status_code == 200


def test_redis_outage_fails_closed_fast_and_recovers(replicas: list[ServedGateway],
                                                     redis: RedisServer) -> None:
    key = new_key(replicas[0], max_budget=1)
    auth = {"Authorization": f"Bearer {key}"}
    redis.stop()
    try:
        for gw in replicas:
            began = time.monotonic()
            resp = httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(), headers=auth,
                              timeout=10)
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "redis_unavailable"
            assert time.monotonic() - began < 3            # no hanging request
            assert gw.proc.poll() is None                   # no crash
    finally:
        redis.start()
    deadline = time.monotonic() + 15
    while True:
        statuses = [httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(),
                               headers=auth).status_code for gw in replicas]
        if statuses == [200, 200, 200]:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.2)
    # Redis came back empty: the budget state is read again from Postgres
    spend, rows = ledger(replicas[0], key)
    assert abs(sum(r["spend"] for r in rows) - spend) < 1e-12


def test_workers_flag_runs_several_processes_on_one_port(
        pg_migrated_url: str, mock_upstream: str, redis: RedisServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(pg_migrated_url, tmp_path), "REDIS_URL": redis.url}
    gw = start_gateway(tmp_path, env, ["--config", str(cfg), "--workers", "2"])
    try:
        deadline = time.monotonic() + 30
        while gw.output().count("faregate: listening on") < 2:   # both workers up
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)
        key = new_key(gw, rpm_limit=10)
        statuses = asyncio.run(spread([gw], key, 25))
        assert statuses.count(200) == 10
        gw.proc.terminate()
        assert gw.proc.wait(30) == 0, gw.output()
    finally:
        stop(gw.proc)


def test_workers_without_redis_is_refused(mock_upstream: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)}
    env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "-m", "faregate", "serve", "--config", str(cfg),
                             "--workers", "2"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "REDIS_URL" in result.stderr

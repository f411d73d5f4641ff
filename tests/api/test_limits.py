"""RPM/TPM/parallel limits in one process: exact, 429 with Retry-After, OpenAI's headers."""

from __future__ import annotations

import asyncio

from api.conftest import RunningGateway
from support import chat


async def burst(gw: RunningGateway, key: str, n: int, **body: object) -> list[int]:
    headers = {"Authorization": f"Bearer {key}"}

    async def one() -> int:
        resp = await gw.http.post("/v1/chat/completions", json={**chat(), **body},
                                  headers=headers)
        if resp.status_code == 429:
            error = resp.json()["error"]
            assert error["type"] == "rate_limit_exceeded", error
            assert int(resp.headers["retry-after"]) >= 1
        return resp.status_code

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_rpm_limit_admits_exactly_the_limit(gateway: RunningGateway) -> None:
    key = await gateway.new_key(rpm_limit=30, max_budget=10)
    statuses = await burst(gateway, key, 100)
    assert statuses.count(200) == 30 and statuses.count(429) == 70
    await gateway.app.ledger.flush()
    rows = (await gateway.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert len(rows) == 30                  # refused requests are not charged or logged


async def test_tpm_limit_counts_reserved_tokens_and_settles_to_usage(
        gateway: RunningGateway) -> None:
    # A slow stream of 50 tokens (~1 s, so a burst is in flight together) on "ping" reserves
    # 4 + 8 + 64 prompt + 50 output = 126 tokens, and uses 8 + 50 = 58 once settled.
    key = await gateway.new_key(models=["slow-model"], tpm_limit=1260)
    statuses = await burst(gateway, key, 30, model="slow-model", max_tokens=50, stream=True)
    assert statuses.count(200) == 10        # 10 x 126 reserved fill the limit exactly
    # settled to 58 each (580), leftover reservations do not throttle: 10 short calls
    # (81 reserved, 13 used each) fit one by one
    after = [(await gateway.http.post("/v1/chat/completions", json={
        **chat(max_tokens=5), "model": "slow-model", "stream": True}, headers={
        "Authorization": f"Bearer {key}"})).status_code for _ in range(10)]
    assert after == [200] * 10


async def test_success_carries_openai_ratelimit_headers(gateway: RunningGateway) -> None:
    key = await gateway.new_key(rpm_limit=5, tpm_limit=10_000)
    resp = await gateway.http.post("/v1/chat/completions", json=chat(),
                                   headers={"Authorization": f"Bearer {key}"})
    assert resp.headers["x-ratelimit-limit-requests"] == "5"
    assert resp.headers["x-ratelimit-remaining-requests"] == "4"
    assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
    assert resp.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) == 10_000 - 92


async def test_max_parallel_requests(gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=["slow-model"], max_parallel_requests=3)
    statuses = await burst(gateway, key, 10, model="slow-model", max_tokens=50, stream=True)
    assert statuses.count(200) == 3
    # all finished: the slots are free again
    again = await burst(gateway, key, 3, model="slow-model", max_tokens=1, stream=True)
    assert again == [200, 200, 200]


async def test_model_rpm_limit_limits_one_model_only(gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=["qwen-local", "other-model"],
                                model_rpm_limit={"qwen-local": 2})
    assert (await burst(gateway, key, 5)).count(200) == 2
    assert (await burst(gateway, key, 5, model="other-model")).count(200) == 5


async def test_rate_limited_requests_are_not_charged(gateway: RunningGateway) -> None:
    key = await gateway.new_key(rpm_limit=1, max_budget=1)
    assert sorted(await burst(gateway, key, 3)) == [200, 429, 429]
    await gateway.app.ledger.flush()
    info = (await gateway.admin("GET", "/key/info", params={"key": key})).json()["info"]
    rows = (await gateway.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert len(rows) == 1 and abs(info["spend"] - rows[0]["spend"]) < 1e-12

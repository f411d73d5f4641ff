"""A payer's open reservations in Redis keep a running sum (field '=' of its `held` hash) that
admission reads instead of summing every open one: it must equal the sum of the open amounts
after every admission, settlement, lease expiry and release, a release twice or of an id Redis
never booked included, or a budget would be decided on a wrong figure (a private real Redis)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import redis.asyncio as aioredis

from faregate.admission import shared
from faregate.admission.budgets import Budgets
from faregate.admission.demand import TEAM, Demand, Payer, key_payer
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import GatewayError
from faregate.records import KeyRecord

KEY = KeyRecord(token="heldtest", key_name="sk-...test", max_budget_nanos=10_000)
TEAM_PAYER = Payer("team:held", TEAM, "held", 10_000, 0, 0, None, None, None, None, None, "0")


def admission(url: str) -> RedisAdmission:
    async def load_key(token: str) -> KeyRecord | None:
        return KEY

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    return RedisAdmission(url, load_key, lambda *_: None, 0.0, "fail_closed", local, 1)


def demand(rid: str, most: int = 1_000, least: int = 10) -> Demand:
    return Demand(rid, KEY, least, most, (), (key_payer(KEY), TEAM_PAYER))


async def held(adm: RedisAdmission, prefix: str) -> tuple[int, dict[str, int]]:
    """(the running sum, the open reservations' amounts by id)."""
    raw = await adm.client.hgetall(f"fg:{{{prefix}}}:held")
    amounts = {k.decode(): int(v) for k, v in raw.items()}
    amounts.pop("@", None)                  # the second its expiry was last pushed
    return amounts.pop("=", 0), amounts


async def release(adm: RedisAdmission, rid: str) -> None:
    """What a replica sends for an admission whose answer it lost: release on every payer."""
    d = demand(rid)
    await adm._settle(keys=shared._settle_keys(d), args=[rid, 0, 0, 2, 3, 3])


async def drained(adm: RedisAdmission) -> None:
    await adm.drain()


async def test_settling_releases_from_the_running_sum_once(private_redis) -> None:
    adm = admission(private_redis[0])
    try:
        first = await adm.admit(demand("r1", most=300))
        second = await adm.admit(demand("r2", most=500))
        for prefix in (KEY.token, "team:held"):
            assert await held(adm, prefix) == (800, {"r1": 300, "r2": 500})
        await adm.settle(first, 120, 0)
        await drained(adm)
        assert await held(adm, "team:held") == (500, {"r2": 500})
        await release(adm, "r1")                 # released again: nothing left to take
        await release(adm, "never-booked")        # an id Redis never booked: nothing either
        for prefix in (KEY.token, "team:held"):
            assert await held(adm, prefix) == (500, {"r2": 500})
        # the next decision reads the sum: 10,000 - 120 spent - 500 held
        third = await adm.admit(demand("r3", most=10_000))
        assert third.grant == 10_000 - 120 - 500
        await adm.settle(second, 0, 0)
        await adm.settle(third, 0, 0)
        await drained(adm)
        for prefix in (KEY.token, "team:held"):      # the last one out takes the sum with it
            assert await adm.client.exists(f"fg:{{{prefix}}}:held") == 0
    finally:
        await adm.close()


async def test_an_expired_lease_leaves_the_running_sum(private_redis, monkeypatch) -> None:
    """A replica that died with a reservation open: once its lease ends, the next admission on
    another replica takes it out of the sum (and out of the budget's way)."""
    monkeypatch.setattr(shared, "LEASE_S", 0.3)
    dead, alive = admission(private_redis[0]), admission(private_redis[0])
    try:
        await dead.admit(demand("lost", most=9_000))
        await dead.close()                       # no renewal, no settlement
        try:
            await alive.admit(demand("now", most=2_000, least=2_000))
            raise AssertionError("admitted while 9,000 of 10,000 were held")
        except GatewayError:
            pass
        await asyncio.sleep(0.4)                 # past the lease
        admitted = await alive.admit(demand("now", most=2_000, least=2_000))
        assert admitted.grant == 2_000
        for prefix in (KEY.token, "team:held"):
            assert await held(alive, prefix) == (2_000, {"now": 2_000})
        await alive.settle(admitted, 0, 0)
        await drained(alive)
        assert await held(alive, KEY.token) == (0, {})
    finally:
        await alive.close()


async def test_the_running_sum_matches_the_open_amounts_under_concurrency(private_redis) -> None:
    """Two replicas, 200 requests at once held a random moment, a few released twice: at every
    check the sum equals the open amounts, and nothing is left at the end."""
    a, b = admission(private_redis[0]), admission(private_redis[0])
    rng = random.Random(7)
    calls = asyncio.Semaphore(8)            # within the client's pool
    watcher = aioredis.Redis.from_url(private_redis[0])
    try:
        async def one(i: int) -> None:
            adm = (a, b)[i % 2]
            try:
                admitted = await adm.admit(demand(f"c{i}", most=rng.randrange(10, 200)))
            except GatewayError:
                return
            await asyncio.sleep(rng.random() * 0.05)
            await adm.settle(admitted, rng.randrange(0, 10), 0)
            if i % 7 == 0:
                await drained(adm)
                async with calls:
                    await release(adm, f"c{i}")

        async def check() -> None:
            for _ in range(20):
                for prefix in (KEY.token, "team:held"):
                    raw = await watcher.hgetall(f"fg:{{{prefix}}}:held")     # one command
                    amounts = {k: int(v) for k, v in raw.items() if k != b"@"}
                    assert amounts.pop(b"=", 0) == sum(amounts.values())
                await asyncio.sleep(0.005)

        await asyncio.gather(check(), *(one(i) for i in range(200)))
        await drained(a)
        await drained(b)
        for prefix in (KEY.token, "team:held"):
            assert await held(a, prefix) == (0, {})
    finally:
        await a.close()
        await b.close()
        await watcher.aclose()


async def test_an_id_booked_twice_holds_both_and_its_keys_expire(private_redis) -> None:
    """A call sent again on a fresh connection after Redis ran it books its id twice: the sum
    holds both and one release frees both. The keys carry a TTL (a dead replica's go)."""
    adm = admission(private_redis[0])
    try:
        d = demand("twice", most=300)
        await adm._admit_shared(d)
        admitted = await adm._admit_shared(d)
        assert await held(adm, "team:held") == (600, {"twice": 600})
        for name in ("held", "leases"):
            assert 0 < await adm.client.pttl(f"fg:{{team:held}}:{name}") <= 2 * 30_000
        await adm.settle(admitted, 0, 0)
        await drained(adm)
        assert await held(adm, "team:held") == (0, {})
    finally:
        await adm.close()

"""Every level holds across replicas (three RedisAdmission instances on a private real Redis,
as three replicas would share one): the same rule as in process (test_payers.py): one grant on
every payer with a budget or on none, bursts over many keys of one team, organization or end
user within the shared budget, a team's TPM under concurrency, each level's period rolled on
the calendar, a refusal naming the level, and an admin change to a team seen by every replica
at once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from support import free_port, stop, wait_for_port

from faregate.admission import periods
from faregate.admission.budgets import Budgets
from faregate.admission.demand import (
    END_USER,
    MEMBER,
    ORG,
    TEAM,
    USER,
    Demand,
    Payer,
    StaleKey,
    Window,
    key_payer,
)
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import BudgetExceeded, RateLimited
from faregate.records import KeyRecord

LEAST, MOST, COST, BUDGET = 10, 150, 100, 1_000
REPLICAS = 3


@pytest.fixture
def redis_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop(proc)


class Replicas:
    """Three replicas' admissions; the keys' database rows they load; the periods started."""

    def __init__(self, url: str) -> None:
        self.rows: dict[str, KeyRecord] = {}
        self.periods: list[tuple[str, int, datetime | None]] = []
        self.all = [self._one(url) for _ in range(REPLICAS)]

    def _one(self, url: str) -> RedisAdmission:
        async def load_key(token: str) -> KeyRecord | None:
            return self.rows.get(token)

        local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 5.0, lambda *_: None), 5.0)
        return RedisAdmission(url, load_key, lambda *a: self.periods.append(a), 30.0,
                              "fail_closed", local, 1)

    def key(self, n: int, max_budget: int | None = None, **fields: object) -> KeyRecord:
        record = KeyRecord(token=f"{n:064x}", key_name=f"sk-...{n:04d}",
                           max_budget_nanos=max_budget, **fields)  # type: ignore[arg-type]
        self.rows[record.token] = record
        return record

    async def drained(self) -> None:
        for adm in self.all:
            await adm.drain()

    async def close(self) -> None:
        for adm in self.all:
            await adm.close()


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[Replicas]:
    group = Replicas(redis_url)
    yield group
    await group.close()


def payer(level: str, name: str, max_budget: int | None = None, **terms: object) -> Payer:
    return Payer(f"{level}:{name}", level, name, max_budget, **terms)  # type: ignore[arg-type]


def demand(rid: str, k: KeyRecord, *above: Payer, least: int = LEAST, most: int = MOST,
           windows: tuple[Window, ...] = ()) -> Demand:
    return Demand(rid, k, least, most, windows, (key_payer(k), *above))


async def spend_of(adm: RedisAdmission, prefix: str) -> int:
    return int(await adm.client.hget(f"fg:{{{prefix}}}:budget", "spend") or 0)


async def reserved_on(adm: RedisAdmission, prefix: str) -> int:
    """Open reservations on the payer (its running sum '=' is no reservation; it is gone
    with the last one)."""
    held = await adm.client.hgetall(f"fg:{{{prefix}}}:held")
    marks = (b"=" in held) + (b"@" in held)       # the sum, the second of its expiry's push
    assert (b"=" in held) == (len(held) > marks), held
    return len(held) - marks


async def burst(group: Replicas, demands: list[Demand], seed: int = 0) -> tuple[int, int]:
    """Every demand at once, spread over the replicas, each held a random moment."""
    rng = random.Random(seed)
    served = spent = 0

    async def one(i: int, d: Demand) -> None:
        nonlocal served, spent
        adm = group.all[i % REPLICAS]
        try:
            admitted = await adm.admit(d)
        except BudgetExceeded:
            return
        await asyncio.sleep(rng.random() / 50)
        cost = min(COST, admitted.grant)
        served += 1
        spent += cost
        await adm.settle(admitted, cost, 0)

    await asyncio.wait_for(asyncio.gather(*(one(i, d) for i, d in enumerate(demands))), 60)
    await group.drained()
    return served, spent


@pytest.mark.parametrize("seed", [0, 1])
async def test_a_team_budget_holds_over_five_keys_across_replicas(replicas: Replicas,
                                                                  seed: int) -> None:
    team = payer(TEAM, "t1", BUDGET)
    keys = [replicas.key(i, max_budget=10**9) for i in range(5)]
    served, spent = await burst(replicas, [demand(f"r{i}", keys[i % 5], team)
                                           for i in range(50)], seed)
    adm = replicas.all[0]
    assert spent <= BUDGET
    assert served >= 8
    assert await spend_of(adm, "team:t1") == spent
    assert await reserved_on(adm, "team:t1") == 0
    assert sum([await spend_of(adm, k.token) for k in keys]) == spent
    assert all([await reserved_on(adm, k.token) == 0 for k in keys])


async def test_an_organization_budget_holds_over_two_teams(replicas: Replicas) -> None:
    org = payer(ORG, "o1", BUDGET)
    teams = [payer(TEAM, "t1", 10**9), payer(TEAM, "t2", 10**9)]
    keys = [replicas.key(i) for i in range(4)]
    served, spent = await burst(replicas, [demand(f"r{i}", keys[i % 4], teams[i % 2], org)
                                           for i in range(40)])
    adm = replicas.all[0]
    assert spent <= BUDGET and served >= 8
    assert await spend_of(adm, "org:o1") == spent
    assert await spend_of(adm, "team:t1") + await spend_of(adm, "team:t2") == spent


async def test_an_end_user_budget_holds_over_two_keys(replicas: Replicas) -> None:
    customer = payer(END_USER, "c1", BUDGET)
    keys = [replicas.key(i) for i in range(2)]
    served, spent = await burst(replicas, [demand(f"r{i}", keys[i % 2], customer)
                                           for i in range(40)])
    assert spent <= BUDGET and served >= 8
    assert await spend_of(replicas.all[0], "end_user:c1") == spent


async def test_a_refusal_by_one_level_reserves_nothing_on_the_others(
        replicas: Replicas) -> None:
    adm = replicas.all[0]
    k = replicas.key(1, max_budget=10_000)
    team = payer(TEAM, "t1", 100, spend_nanos=95)
    with pytest.raises(BudgetExceeded, match=r"^Budget has been exceeded! Team=t1 "):
        await adm.admit(demand("r1", k, team))
    assert await reserved_on(adm, k.token) == 0
    assert await reserved_on(adm, "team:t1") == 0


async def test_the_grant_is_the_smallest_room_on_every_level(replicas: Replicas) -> None:
    adm = replicas.all[0]
    k = replicas.key(1, max_budget=1_000)
    team, org = payer(TEAM, "t1", 500, spend_nanos=380), payer(ORG, "o1", 10_000)
    admitted = await adm.admit(demand("r1", k, team, org))
    assert admitted.grant == 120
    for prefix in (k.token, "team:t1", "org:o1"):
        assert await adm.client.hget(f"fg:{{{prefix}}}:held", "r1") == b"120"
        assert await adm.client.hget(f"fg:{{{prefix}}}:held", "=") == b"120"
    await adm.settle(admitted, 70, 0)
    await replicas.drained()
    assert [await spend_of(adm, p) for p in (k.token, "team:t1", "org:o1")] == [70, 450, 70]
    assert [await reserved_on(adm, p) for p in (k.token, "team:t1", "org:o1")] == [0, 0, 0]


@pytest.mark.parametrize(("level", "words"), [
    (USER, "ExceededBudget: User=p1 over budget."),
    (MEMBER, "Budget has been exceeded! TeamMember=p1 Current cost:"),
    (ORG, "Budget has been exceeded! Organization=p1 Current cost:"),
    (END_USER, "ExceededBudget: End User=p1 over budget."),
])
async def test_a_refusal_names_the_level_that_refused(replicas: Replicas, level: str,
                                                      words: str) -> None:
    k = replicas.key(1, max_budget=10**9)
    with pytest.raises(BudgetExceeded) as info:
        await replicas.all[1].admit(demand("r1", k, payer(TEAM, "roomy", 10**9),
                                           payer(level, "p1", 100, spend_nanos=100)))
    assert info.value.message.startswith(words)


async def test_a_team_tpm_limit_holds_under_concurrency(replicas: Replicas) -> None:
    """LiteLLM let 663 tokens through a 100-TPM team under concurrency (its issue 18730)."""
    tpm = Window("team:t1:tpm", True, 100, 30, "tpm_limit", "team t1")
    team = payer(TEAM, "t1", tpm_limit=100)
    keys = [replicas.key(i) for i in range(5)]
    admitted_tokens = refused = 0

    async def one(i: int) -> None:
        nonlocal admitted_tokens, refused
        adm = replicas.all[i % REPLICAS]
        try:
            admitted = await adm.admit(demand(f"r{i}", keys[i % 5], team, least=0, most=0,
                                              windows=(tpm,)))
        except RateLimited as exc:
            assert "tpm_limit=100 of team t1" in exc.message
            refused += 1
            return
        admitted_tokens += 30
        await adm.settle(admitted, 0, 30)

    await asyncio.gather(*(one(i) for i in range(40)))
    assert admitted_tokens == 90 and refused == 37


async def test_a_teams_parallel_limit_spans_its_keys_and_replicas(replicas: Replicas) -> None:
    team = payer(TEAM, "t1", max_parallel_requests=2)
    a, b, c = (replicas.key(i) for i in range(3))
    first = await replicas.all[0].admit(demand("r1", a, team, least=0, most=0))
    await replicas.all[1].admit(demand("r2", b, team, least=0, most=0))
    with pytest.raises(RateLimited, match="in flight on team t1"):
        await replicas.all[2].admit(demand("r3", c, team, least=0, most=0))
    await replicas.all[0].settle(first, 0, 0)
    await replicas.drained()
    await replicas.all[2].admit(demand("r4", c, team, least=0, most=0))


@pytest.mark.parametrize("level", [USER, TEAM, MEMBER, ORG, END_USER])
async def test_every_levels_period_rolls_on_the_calendar(replicas: Replicas,
                                                         level: str) -> None:
    """A period that ended (a month ago, on a date where 30-day months would differ) rolls
    when the next request is admitted: the whole budget is there again, the new end is the
    calendar's, and the new period is recorded under the payer's scope."""
    now = datetime.now(UTC)
    anchor = (now - timedelta(days=45)).replace(microsecond=0)
    above = payer(level, "p1", 1_000, spend_nanos=700, period_base_nanos=100,
                  budget_duration="1mo", budget_reset_at=anchor)
    adm = replicas.all[0]
    before = datetime.now(UTC)
    admitted = await adm.admit(demand("r1", replicas.key(1), above, most=900))
    assert admitted.grant == 900
    assert len(replicas.periods) == 1
    scope, base, reset_at = replicas.periods[0]
    assert (scope, base) == (above.scope, 700)
    assert reset_at in {periods.next_reset(anchor, "1mo", at)
                        for at in (before, datetime.now(UTC))}
    raw = await adm.client.hget(f"fg:{{{above.scope}}}:budget", "reset_at")
    assert reset_at is not None and int(raw) == int(reset_at.timestamp() * 1000)


async def test_a_period_rolls_only_with_an_admission(replicas: Replicas) -> None:
    """The team's period is due, but the key refuses: nothing is written, nothing recorded;
    the same rule admits once the key can pay."""
    anchor = datetime.now(UTC) - timedelta(days=2)
    team = payer(TEAM, "t1", 1_000, spend_nanos=1_000, budget_duration="1d",
                 budget_reset_at=anchor)
    broke = replicas.key(1, max_budget=100, spend_nanos=100)
    adm = replicas.all[0]
    with pytest.raises(BudgetExceeded, match="Key="):
        await adm.admit(demand("r1", broke, team))
    assert replicas.periods == []
    admitted = await adm.admit(demand("r2", replicas.key(2), team))
    assert admitted.grant == MOST and [p[0] for p in replicas.periods] == ["team:t1"]


async def test_a_change_to_a_team_reaches_every_replica_at_once(replicas: Replicas) -> None:
    """An admin blocks the team (or changes its budget): its version is bumped, and every
    replica's next request with the team as loaded before is sent back to reload it."""
    team = payer(TEAM, "t1", 1_000)
    k = replicas.key(1)
    for i, adm in enumerate(replicas.all):
        await adm.settle(await adm.admit(demand(f"warm{i}", k, team)), 0, 0)
    await replicas.all[0].payer_changed("team:t1", None)
    for i, adm in enumerate(replicas.all):
        with pytest.raises(StaleKey) as info:
            await adm.admit(demand(f"r{i}", k, team))
        assert info.value.args == ("team:t1",)
    version = await replicas.all[2].payer_version("team:t1")
    assert version == "1"
    fresh = replace(team, version=version)
    await replicas.all[2].admit(demand("after", k, fresh))


async def test_a_period_set_before_the_payer_had_state_in_redis(replicas: Replicas) -> None:
    """An admin sets a team's budget_duration before any request of the team reached Redis:
    its period end is stored alone. The team's state is still initialised from its row, and
    a settlement before that adds no spend to a state that is not there."""
    adm = replicas.all[0]
    reset_at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    await adm.payer_changed("team:t1", reset_at)
    team = payer(TEAM, "t1", 1_000, spend_nanos=300, budget_duration="1d",
                 budget_reset_at=reset_at, version="1")
    k = replicas.key(1)
    stray = await adm.admit(demand("stray", k))             # its key only: the team untouched
    await adm.settle(replace(stray, demand=demand("stray", k, team)), 50, 0)
    await replicas.drained()
    admitted = await asyncio.wait_for(adm.admit(demand("r1", k, team, most=900)), 10)
    assert admitted.grant == 700
    assert await spend_of(adm, "team:t1") == 300

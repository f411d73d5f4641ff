"""Every level holds in process (LocalAdmission over Budgets): a request reserves the same grant
on every payer with a budget (its key, user, team, membership, organization, end user) or on
none; bursts over many keys of one team, organization or end user never pass the shared
budget and still use it; a team's TPM holds under concurrency; every level's period resets on
schedule; a refusal names the level that refused."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from faregate.admission.budgets import Budgets
from faregate.admission.demand import (
    END_USER,
    KEY,
    MEMBER,
    ORG,
    TEAM,
    USER,
    Demand,
    Payer,
    Window,
    demand_for,
    key_payer,
)
from faregate.admission.local import LocalAdmission
from faregate.config import Deployment
from faregate.errors import BudgetExceeded, RateLimited
from faregate.records import KeyRecord

T0 = datetime(2024, 1, 1, tzinfo=UTC)
PATIENT_S = 30.0
# A request's bounds: it needs at least LEAST, asks for up to MOST, really costs COST (capped
# to its grant, as the gateway caps max_tokens). A budget of BUDGET fits 10 such requests.
LEAST, MOST, COST, BUDGET = 10, 150, 100, 1_000


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t


class Periods(list[tuple[str, int, datetime | None]]):
    def __call__(self, scope: str, base: int, reset_at: datetime | None) -> None:
        self.append((scope, base, reset_at))


def payer(level: str, name: str, max_budget: int | None = None, **terms: object) -> Payer:
    scope = f"{level}:{name}"
    return Payer(scope, level, name, max_budget, **terms)  # type: ignore[arg-type]


def key(n: int, max_budget: int | None = None, **fields: object) -> KeyRecord:
    return KeyRecord(token=f"{n:064x}", key_name=f"sk-...{n:04d}", max_budget_nanos=max_budget,
                     **fields)  # type: ignore[arg-type]


def local(clock: Clock | None = None, periods: Periods | None = None) -> LocalAdmission:
    budgets = Budgets(clock or Clock(), PATIENT_S,
                      periods if periods is not None else Periods())
    return LocalAdmission(budgets, PATIENT_S)


def demand(rid: str, k: KeyRecord, *above: Payer, least: int = LEAST, most: int = MOST,
           windows: tuple[Window, ...] = ()) -> Demand:
    return Demand(rid, k, least, most, windows, (key_payer(k), *above))


async def burst(adm: LocalAdmission, demands: list[Demand], seed: int = 0) -> tuple[int, int]:
    """Every demand at once, each held a random moment; (served, spent)."""
    rng = random.Random(seed)
    served = spent = 0

    async def one(d: Demand) -> None:
        nonlocal served, spent
        try:
            admitted = await adm.admit(d)
        except BudgetExceeded:
            return
        await asyncio.sleep(rng.random() / 100)
        cost = min(COST, admitted.grant)
        served += 1
        spent += cost
        await adm.settle(admitted, cost, 0)

    await asyncio.wait_for(asyncio.gather(*(one(d) for d in demands)), PATIENT_S)
    return served, spent


# bursts on a shared payer


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_a_team_budget_holds_over_five_keys(seed: int) -> None:
    adm = local()
    team = payer(TEAM, "t1", BUDGET)
    keys = [key(i, max_budget=10**9) for i in range(5)]
    served, spent = await burst(adm, [demand(f"r{i}", keys[i % 5], team)
                                      for i in range(50)], seed)
    assert spent <= BUDGET
    assert served >= 8
    assert adm._budgets.account_of(team).spend == spent
    assert adm._budgets.account_of(team).reserved == 0
    # Every key was charged what it spent, and its reservations are gone too.
    assert sum(adm._budgets.account(k).spend for k in keys) == spent
    assert all(adm._budgets.account(k).reserved == 0 for k in keys)


async def test_an_organization_budget_holds_over_two_teams() -> None:
    adm = local()
    org = payer(ORG, "o1", BUDGET)
    teams = [payer(TEAM, "t1", 10**9), payer(TEAM, "t2", 10**9)]
    served, spent = await burst(adm, [demand(f"r{i}", key(i % 4), teams[i % 2], org)
                                      for i in range(40)])
    assert spent <= BUDGET and served >= 8
    assert adm._budgets.account_of(org).spend == spent
    assert adm._budgets.account_of(teams[0]).spend + \
        adm._budgets.account_of(teams[1]).spend == spent


async def test_an_end_user_budget_holds_over_two_keys() -> None:
    adm = local()
    customer = payer(END_USER, "c1", BUDGET)
    served, spent = await burst(adm, [demand(f"r{i}", key(i % 2), customer)
                                      for i in range(40)])
    assert spent <= BUDGET and served >= 8
    assert adm._budgets.account_of(customer).spend == spent


async def test_the_tightest_of_all_levels_binds_each_request() -> None:
    """A member's budget in the team is smaller than the team's: it binds first, and the team
    is charged only what the member spent."""
    adm = local()
    team, member = payer(TEAM, "t1", BUDGET), payer(MEMBER, "t1:u1", 300)
    served, spent = await burst(adm, [demand(f"r{i}", key(i % 3), team, member)
                                      for i in range(20)])
    assert spent <= 300 and served >= 2
    assert adm._budgets.account_of(team).spend == spent


# all or nothing


async def test_a_refusal_by_one_level_reserves_nothing_on_the_others() -> None:
    adm = local()
    k = key(1, max_budget=10_000)
    team = payer(TEAM, "t1", 100, spend_nanos=95)
    with pytest.raises(BudgetExceeded):
        await adm.admit(demand("r1", k, team))
    assert adm._budgets.account(k).reserved == 0
    assert adm._budgets.account_of(team).reserved == 0


async def test_the_grant_is_the_smallest_room_and_is_booked_on_every_level() -> None:
    adm = local()
    k = key(1, max_budget=1_000)
    team, org = payer(TEAM, "t1", 500, spend_nanos=380), payer(ORG, "o1", 10_000)
    admitted = await adm.admit(demand("r1", k, team, org))
    assert admitted.grant == 120                 # the team's room, < most (150)
    for account in (adm._budgets.account(k), adm._budgets.account_of(team),
                    adm._budgets.account_of(org)):
        assert account.reserved == 120
    await adm.settle(admitted, 70, 0)
    for account in (adm._budgets.account(k), adm._budgets.account_of(team),
                    adm._budgets.account_of(org)):
        assert account.reserved == 0
    assert adm._budgets.account_of(team).spend == 450
    assert adm._budgets.account_of(org).spend == 70


async def test_a_request_waits_for_a_shared_payers_reservations_then_is_served() -> None:
    """Two keys of one team: the second waits for the first's reservation on the team (not
    refused), and is served from what the first left."""
    adm = local()
    team = payer(TEAM, "t1", 200)
    first = await adm.admit(demand("r1", key(1), team, least=150, most=150))
    second = asyncio.create_task(adm.admit(demand("r2", key(2), team, least=60, most=100)))
    await asyncio.sleep(0.01)
    assert not second.done()
    await adm.settle(first, 120, 0)
    assert (await asyncio.wait_for(second, 2.0)).grant == 80


# rate limits and parallel slots of a level above the key


async def test_a_team_tpm_limit_holds_under_concurrency() -> None:
    """LiteLLM let 663 tokens through a 100-TPM team under concurrency (its issue 18730)."""
    adm = local()
    team = payer(TEAM, "t1", tpm_limit=100)
    d = Deployment(model_name="m", provider="openai", upstream_model="m", api_base="http://x",
                   api_key=None, input_femtos=0, output_femtos=0, max_output_tokens=100,
                   prompt_overhead_tokens=0, per_message_overhead_tokens=0, timeout_s=1.0)
    admitted_tokens = 0
    refused = 0

    async def one(i: int) -> None:
        nonlocal admitted_tokens, refused
        k = key(i % 5)
        ask = demand_for(f"r{i}", k, "0", d, 10, 20, 1, payers=(key_payer(k), team))
        try:
            admitted = await adm.admit(ask)
        except RateLimited as exc:
            assert "tpm_limit=100 of team t1" in exc.message
            refused += 1
            return
        admitted_tokens += 30
        await asyncio.sleep(0.001)
        await adm.settle(admitted, 0, 30)

    await asyncio.gather(*(one(i) for i in range(40)))
    assert admitted_tokens <= 100
    assert admitted_tokens == 90 and refused == 37


async def test_an_organizations_parallel_limit_spans_its_keys() -> None:
    adm = local()
    org = payer(ORG, "o1", max_parallel_requests=2)
    first = await adm.admit(demand("r1", key(1), org, least=0, most=0))
    await adm.admit(demand("r2", key(2), org, least=0, most=0))
    with pytest.raises(RateLimited, match="in flight on org o1"):
        await adm.admit(demand("r3", key(3), org, least=0, most=0))
    await adm.settle(first, 0, 0)
    await adm.admit(demand("r4", key(3), org, least=0, most=0))


# every level's period


@pytest.mark.parametrize("level", [KEY, USER, TEAM, MEMBER, ORG, END_USER])
async def test_every_levels_budget_resets_on_schedule(level: str) -> None:
    clock, periods = Clock(), Periods()
    adm = local(clock, periods)
    terms = {"spend_nanos": 100, "budget_duration": "1d",
             "budget_reset_at": T0 + timedelta(days=1)}
    if level == KEY:
        k = key(1, max_budget=100, **terms)
        spent: Payer = key_payer(k)
        above: tuple[Payer, ...] = ()
    else:
        k = key(1)
        spent = payer(level, "p1", 100, **terms)
        above = (spent,)
    with pytest.raises(BudgetExceeded):
        await adm.admit(demand("r1", k, *above))
    clock.t += timedelta(days=1)
    admitted = await adm.admit(demand("r2", k, *above))
    assert admitted.grant == 100                 # the whole budget again
    assert periods == [(spent.scope, 100, T0 + timedelta(days=2))]
    await adm.settle(admitted, 30, 0)
    assert adm._budgets.account_of(spent).spend - adm._budgets.account_of(spent).period_base \
        == 30


async def test_a_month_rolls_on_the_calendar_for_a_team() -> None:
    clock, periods = Clock(datetime(2024, 1, 31, tzinfo=UTC)), Periods()
    adm = local(clock, periods)
    team = payer(TEAM, "t1", 100, spend_nanos=100, budget_duration="1mo",
                 budget_reset_at=datetime(2024, 1, 31, tzinfo=UTC))
    await adm.admit(demand("r1", key(1), team))
    assert periods == [("team:t1", 100, datetime(2024, 2, 29, tzinfo=UTC))]


# refusals name the level


@pytest.mark.parametrize(("level", "words"), [
    (USER, "ExceededBudget: User=p1 over budget. Spend=0.000000100, Budget=0.000000100."),
    (TEAM, "Budget has been exceeded! Team=p1 Current cost: 0.000000100, Max budget: "
           "0.000000100."),
    (MEMBER, "Budget has been exceeded! TeamMember=p1 Current cost:"),
    (ORG, "Budget has been exceeded! Organization=p1 Current cost:"),
    (END_USER, "ExceededBudget: End User=p1 over budget. Spend="),
])
async def test_a_refusal_names_the_level_that_refused(level: str, words: str) -> None:
    adm = local()
    k = key(1, max_budget=10**9)
    with pytest.raises(BudgetExceeded) as info:
        await adm.admit(demand("r1", k, payer(ORG, "roomy", 10**9),
                               payer(level, "p1", 100, spend_nanos=100)))
    assert info.value.message.startswith(words)
    assert info.value.status == 429 and info.value.type == "budget_exceeded"
    assert "needs at least" in info.value.message


async def test_a_keys_refusal_names_its_alias_and_name() -> None:
    adm = local()
    k = key(7, max_budget=100, spend_nanos=100, key_alias="billing")
    with pytest.raises(BudgetExceeded, match=r"^Budget has been exceeded! "
                                             r"Key=billing \(sk-\.\.\.0007\) Current cost"):
        await adm.admit(demand("r1", k))

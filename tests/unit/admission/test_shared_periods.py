"""RedisAdmission (real Redis) rolls a budget period on the same calendar as the in-process
store: a month is a calendar month, the end computed by periods.next_reset, never 30 days."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from faregate.admission import periods
from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand, key_scope
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.records import KeyRecord

REDIS_URL = "redis://127.0.0.1:6379/0"


def past_month_anchor(now: datetime) -> datetime:
    """A period end 40-80 days ago where calendar months and 30-day months part ways."""
    for days in range(40, 80):
        anchor = (now - timedelta(days=days)).replace(microsecond=0)
        thirty = anchor
        while thirty <= now:
            thirty += timedelta(days=30)
        if periods.next_reset(anchor, "1mo", now) != thirty:
            return anchor
    raise AssertionError("no anchor found")


@pytest.fixture
async def redis_admission():
    token = "periodtest" + os.urandom(6).hex()
    now = datetime.now(UTC)
    anchor = past_month_anchor(now)
    key = KeyRecord(token=token, key_name="sk-...test", max_budget_nanos=1_000,
                    spend_nanos=700, period_base_nanos=100, budget_duration="1mo",
                    budget_reset_at=anchor)
    started: list[tuple[str, int, datetime | None]] = []
    stored = {token: key}           # the database row the script is initialised from

    async def load_key(t: str) -> KeyRecord | None:
        return stored.get(t)

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    adm = RedisAdmission(REDIS_URL, load_key, lambda *a: started.append(a), 1.0,
                         "fail_closed", local, 1)
    yield adm, key, started, stored
    await adm.client.delete(*[f"fg:{{{token}}}:{n}" for n in
                              ("budget", "leases", "held", "parallel", "version")])
    await adm.close()


async def test_a_due_month_rolls_to_the_calendar_end(redis_admission) -> None:
    adm, key, started, _ = redis_admission
    before = datetime.now(UTC)
    admitted = await adm.admit(Demand("r1", key, least=10, most=900))
    # The period rolled: the whole budget is available again (spend 700 since base 100 was
    # 600 of 1000 before; now 0), and the new end is the calendar's.
    assert admitted.grant == 900
    assert len(started) == 1
    token, base, reset_at = started[0]
    assert (token, base) == (key_scope(key.token), 700)
    assert reset_at is not None
    expected = {periods.next_reset(key.budget_reset_at, "1mo", at)
                for at in (before, datetime.now(UTC))}
    assert reset_at in expected
    raw = await adm.client.hget(f"fg:{{{key.token}}}:budget", "reset_at")
    assert int(raw) == int(reset_at.timestamp() * 1000)
    await adm.settle(admitted, 5, 0)
    await adm.settle(admitted, 5, 0)            # settling twice settles once
    await adm.drain()
    assert int(await adm.client.hget(f"fg:{{{key.token}}}:budget", "spend")) == 705


async def test_a_period_not_yet_due_does_not_roll(redis_admission) -> None:
    adm, key, started, stored = redis_admission
    key = stored[key.token] = key.evolve(budget_reset_at=datetime.now(UTC) + timedelta(days=3))
    admitted = await adm.admit(Demand("r2", key, least=10, most=900))
    assert started == [] and admitted.grant == 400       # 1000 - (700 - 100)

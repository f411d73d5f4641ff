"""A key whose left-behind spend rows are not in the database yet is not read (so not admitted)
until they are; other keys never wait (spend/holds.py, keys/directory.py, admission/budgets.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest

from faregate.admission.budgets import Budgets
from faregate.errors import ServiceUnavailable
from faregate.keys.directory import KeyDirectory
from faregate.records import KeyRecord, SpendRow
from faregate.spend.holds import KeyHolds

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
HELD, FREE = "h" * 64, "f" * 64


class Rows:
    """A KeyStore whose spend moves when the held rows 'reach the database'."""

    def __init__(self) -> None:
        self.spend = {HELD: 100, FREE: 0}
        self.reads: list[str] = []

    async def get_key(self, token: str) -> KeyRecord | None:
        self.reads.append(token)
        return KeyRecord(token=token, key_name="sk-...x", spend_nanos=self.spend[token],
                         max_budget_nanos=1000)


def left_row(token: str, spend: int) -> SpendRow:
    return SpendRow(f"left-{spend}", token, None, "m", "u", "chat_completion", 1, 1, spend, T0,
                    T0, "success")


def directory(store: Rows, holds: KeyHolds, wait_s: float = 5.0) -> KeyDirectory:
    return KeyDirectory(store, lambda: 0.0, 60.0, holds=holds,  # type: ignore[arg-type]
                        hold_wait_s=wait_s)


async def test_a_held_key_is_read_only_after_its_rows_are_written() -> None:
    store, holds = Rows(), KeyHolds()
    holds.add(Counter({HELD: 1}))
    keys = directory(store, holds)
    assert (await keys.get(FREE)) is not None            # not held: no wait
    lookup = asyncio.ensure_future(keys.get(HELD))
    await asyncio.sleep(0.05)
    assert not lookup.done() and HELD not in store.reads
    store.spend[HELD] += 900                              # the writer wrote the row...
    holds.written([left_row(HELD, 900)], {HELD: 900})     # ...and says so
    record = await asyncio.wait_for(lookup, 5)
    assert record is not None and record.spend_nanos == 1000


async def test_a_key_whose_rows_cannot_be_written_gets_the_documented_503() -> None:
    holds = KeyHolds()
    holds.add(Counter({HELD: 2}))
    keys = directory(Rows(), holds, wait_s=0.05)
    with pytest.raises(ServiceUnavailable) as refused:
        await keys.get(HELD)
    assert refused.value.code == "database_unavailable"
    with pytest.raises(ServiceUnavailable):
        await keys.read_settled(HELD)                     # the Redis admission's loader


async def test_a_cached_key_is_read_again_after_its_hold() -> None:
    store, holds = Rows(), KeyHolds()
    keys = directory(store, holds)
    assert (await keys.get(HELD)).spend_nanos == 100      # type: ignore[union-attr]
    holds.add(Counter({HELD: 1}))                         # orphans adopted while running
    store.spend[HELD] = 150
    holds.written([left_row(HELD, 50)], {HELD: 50})
    assert (await keys.get(HELD)).spend_nanos == 100      # type: ignore[union-attr]
    holds.add(Counter({HELD: 1}))
    lookup = asyncio.ensure_future(keys.get(HELD))
    await asyncio.sleep(0.01)
    store.spend[HELD] = 170
    holds.written([left_row(HELD, 20)], {HELD: 20})
    assert (await lookup).spend_nanos == 170              # type: ignore[union-attr]


def test_an_account_already_admitting_is_credited() -> None:
    budgets = Budgets(lambda: T0, 1.0, lambda *_: None)
    holds = KeyHolds()
    holds.on_written(budgets.credit)
    key = KeyRecord(token=HELD, key_name="sk-...x", spend_nanos=100, max_budget_nanos=1000)
    budgets.account(key)
    holds.add(Counter({HELD: 1}))
    holds.written([left_row(HELD, 300)], {HELD: 300})
    assert budgets.lifetime_spend(key) == 400
    holds.written([], {FREE: 5})                          # no account yet: its row will say
    assert budgets.lifetime_spend(KeyRecord(token=FREE, key_name="x")) == 0

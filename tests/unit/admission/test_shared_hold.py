"""Redis mode: a key's spend is loaded from the database only once the spend rows a stopped
process left for it are there (issue 13, finding 1): otherwise Redis would start the key from a
total that misses them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from support import free_port, stop, wait_for_port

from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import BudgetExceeded, ServiceUnavailable
from faregate.keys.directory import KeyDirectory
from faregate.records import KeyRecord, SpendRow
from faregate.spend.holds import KeyHolds

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
TOKEN = "holdtest"


class Rows:
    def __init__(self) -> None:
        self.spend = 100

    async def get_key(self, token: str) -> KeyRecord | None:
        return KeyRecord(token=token, key_name="sk-...x", max_budget_nanos=1_000,
                         spend_nanos=self.spend)


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


async def test_redis_loads_a_held_key_only_after_its_left_rows_are_written(
        redis_url: str) -> None:
    rows, holds = Rows(), KeyHolds()
    holds.add(Counter({TOKEN: 1}))
    keys = KeyDirectory(rows, lambda: 0.0, 60.0, holds=holds,  # type: ignore[arg-type]
                        hold_wait_s=0.05)
    local = LocalAdmission(Budgets(lambda: T0, 1.0, lambda *_: None), 1.0)
    adm = RedisAdmission(redis_url, keys.read_settled, lambda *_: None, 0.2, "fail_closed",
                         local, 1)
    key = await rows.get_key(TOKEN)
    assert key is not None
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            await adm.admit(Demand("r1", key, least=500, most=500))
        assert refused.value.code == "database_unavailable"
        # The rows reach the database: the key's spend there is now 700.
        rows.spend = 700
        holds.written([SpendRow("left", TOKEN, None, "m", "u", "chat_completion", 1, 1, 600,
                                T0, T0, "success")], {TOKEN: 600})
        admitted = await adm.admit(Demand("r2", key, least=300, most=300))
        await adm.settle(admitted, 300, 0)
        await asyncio.sleep(0.1)                          # the settlement is flushed
        with pytest.raises(BudgetExceeded):               # 1,000 spent: nothing left
            await adm.admit(Demand("r3", key, least=1, most=1))
    finally:
        await adm.close()

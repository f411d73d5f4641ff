"""After Redis comes back, RedisAdmission's first calls do not fail on connections the pool
opened before the outage (a private real redis-server, stopped and started on its port): a
restarted Redis closed them, and a call that picks one up must reconnect, not answer 503."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from support import free_port, stop, wait_for_port

from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord

KEY = KeyRecord(token="recoverytest", key_name="sk-...test", max_budget_nanos=10**12)


class RedisOnAPort:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def redis_server() -> Iterator[RedisOnAPort]:
    server = RedisOnAPort()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def admission(port: int) -> RedisAdmission:
    async def load_key(token: str) -> KeyRecord | None:
        return KEY

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    return RedisAdmission(f"redis://127.0.0.1:{port}/0", load_key, lambda *_: None, 1.0,
                          "fail_closed", local, 1)


async def test_the_first_calls_after_a_restart_reconnect_instead_of_failing(
        redis_server: RedisOnAPort, caplog: pytest.LogCaptureFixture) -> None:
    adm = admission(redis_server.port)
    ids = iter(range(10_000))

    async def call() -> str:
        try:
            admitted = await adm.admit(Demand(f"r{next(ids)}", KEY, least=1, most=10))
        except ServiceUnavailable:
            return "503"
        await adm.settle(admitted, 1, 0)
        return "ok"

    try:
        # Eight calls at once: the pool keeps eight connections open.
        assert await asyncio.gather(*[call() for _ in range(8)]) == ["ok"] * 8
        await asyncio.sleep(0.1)                    # their settlements flushed
        redis_server.stop()
        assert await call() == "503"                # the outage: fail closed
        redis_server.start()                        # back, on the same port, empty
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="faregate.redis"):
            first = await asyncio.gather(*[call() for _ in range(8)])
            await asyncio.sleep(0.1)
            later = await asyncio.gather(*[call() for _ in range(8)])
            await asyncio.sleep(0.1)
        assert first == ["ok"] * 8 and later == ["ok"] * 8
        # one "reachable again", no second "unreachable", no settlement lost to a dead socket
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "unreachable" in m or "could not settle" in m], \
            messages
    finally:
        await adm.close()

"""In-process admission that admits only while this process is the one admitting on its
database (storage/replicas.py decides; without Redis two processes would each enforce every
budget alone).

While older processes are still there, a request waits up to `hold_s` for them to go (a
rolling deploy's handover: the old process leaves at the start of its drain), then gets a 503
naming REDIS_URL. The common case, alone, costs one attribute read.
"""

from __future__ import annotations

from datetime import datetime

from faregate.admission.demand import Admitted, Demand
from faregate.admission.local import LocalAdmission
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord
from faregate.storage.replicas import ReplicaHeartbeat

# A handover lasts the old pod's preStop sleep (5 s in the chart) and a beat.
HOLD_S = 10.0


class SoleAdmission:
    def __init__(self, inner: LocalAdmission, heartbeat: ReplicaHeartbeat,
                 hold_s: float = HOLD_S) -> None:
        self._inner = inner
        self._heartbeat = heartbeat
        self._hold_s = hold_s

    async def admit(self, demand: Demand) -> Admitted:
        if not self._heartbeat.standing.admitting:
            standing = await self._heartbeat.wait_admitting(self._hold_s)
            if not standing.admitting:
                raise ServiceUnavailable(standing.reason or "Another faregate process uses "
                                         "this database without REDIS_URL",
                                         code="replicas_without_redis",
                                         headers={"Retry-After": "5"})
        return await self._inner.admit(demand)

    async def settle(self, admitted: Admitted, cost: int, tokens: int) -> None:
        await self._inner.settle(admitted, cost, tokens)

    def period_spend(self, key: KeyRecord) -> int:
        return self._inner.period_spend(key)

    def lifetime_spend(self, key: KeyRecord) -> int:
        return self._inner.lifetime_spend(key)

    def forget(self, scope: str) -> None:
        self._inner.forget(scope)

    def change_period(self, scope: str, reset_at: datetime | None) -> None:
        self._inner.change_period(scope, reset_at)

"""Health routes as raw ASGI (probes hit them every few seconds; they need no framework).

Liveness says the process serves HTTP, nothing more: a database outage must not get every
replica restarted. Readiness says whether this replica should get traffic: with the database
down it is not ready, unless general_settings.allow_requests_on_db_unavailable says to serve
through the outage (then it reports "degraded" and stays in the Service).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from faregate.api.asgi_io import JSON_HEADERS, Scope, send_bytes
from faregate.spend.ledger import LedgerWriter
from faregate.storage.health import DatabaseHealth

log = logging.getLogger("faregate.health")

Handler = Callable[[Scope, Any, Any], Awaitable[None]]
_ALIVE = b'"I\'m alive!"'


class HealthRoutes:
    def __init__(self, database: DatabaseHealth, ledger: LedgerWriter) -> None:
        self._database = database
        self._ledger = ledger
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health/liveliness"): self._alive,
            ("GET", "/health/liveness"): self._alive,
            ("GET", "/health/readiness"): self._ready,
        }

    async def _alive(self, scope: Scope, receive: Any, send: Any) -> None:
        await send_bytes(send, 200, _ALIVE, JSON_HEADERS)

    async def _ready(self, scope: Scope, receive: Any, send: Any) -> None:
        up = await self._database.probe()
        if up:
            status, code = "healthy", 200
        elif self._database.serve_while_down:
            status, code = "degraded", 200
        else:
            status, code = "unhealthy", 503
        body = {"status": status, "db": "connected" if up else "disconnected",
                "spend_rows_waiting": self._ledger.pending,
                "allow_requests_on_db_unavailable": self._database.serve_while_down}
        await send_bytes(send, code, orjson.dumps(body), JSON_HEADERS)

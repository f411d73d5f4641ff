"""Health routes as raw ASGI (probes hit them every few seconds; they need no framework).

Liveness says the process serves HTTP, nothing more: a database outage must not get every
replica restarted. Readiness says whether this replica should get traffic: with the database
down it is not ready, unless general_settings.allow_requests_on_db_unavailable says to serve
through the outage (then it reports "degraded" and stays in the Service). It also lists the
other processes on the database and, for one refusing because another admits without shared
admission, why (storage/replicas.py): not ready once the handover grace is over.

/health/deployments (a proxy_admin or proxy_admin_viewer, api/admin_auth.py) shows what the
router saw of each deployment on this replica: no upstream is called. /health (the same callers)
is LiteLLM's: it calls every deployment once (upstream_probes.py says what that costs).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import orjson

from faregate.api.admin_auth import Roles, refused
from faregate.api.asgi_io import JSON_HEADERS, Scope, send_bytes, send_error
from faregate.api.call_record import credentials
from faregate.api.upstream_probes import UpstreamProbes
from faregate.catalog.routing import DeploymentHealth
from faregate.config import without_credentials
from faregate.spend.ledger import LedgerWriter
from faregate.storage.health import DatabaseHealth
from faregate.storage.replicas import ReplicaHeartbeat, shown

log = logging.getLogger("faregate.health")

Handler = Callable[[Scope, Any, Any], Awaitable[None]]
_ALIVE = b'"I\'m alive!"'


class HealthRoutes:
    def __init__(self, database: DatabaseHealth, ledger: LedgerWriter, roles: Roles,
                 deployments: Callable[[], Iterable[DeploymentHealth]],
                 replicas: ReplicaHeartbeat,
                 sealed: Callable[[], tuple[Mapping[str, str], Collection[str]]],
                 probes: UpstreamProbes | None = None) -> None:
        self._probes = probes
        self._database = database
        self._sealed = sealed           # (stored models not opened: id -> why, those kept)
        self._ledger = ledger
        self._roles = roles
        self._deployments = deployments
        self._replicas = replicas
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/health/liveliness"): self._alive,
            ("GET", "/health/liveness"): self._alive,
            ("GET", "/health/readiness"): self._ready,
            ("GET", "/health/deployments"): self._per_deployment,
        }
        if probes is not None:
            self.routes["GET", "/health"] = self._probe_all

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
        body: dict[str, Any] = {
            "status": status, "db": "connected" if up else "disconnected",
            "spend_rows_waiting": self._ledger.pending,
            # Counted in the key's spend as a storable copy; still 200: see operations.md.
            "spend_rows_dead_lettered": self._ledger.dead_lettered,
            "allow_requests_on_db_unavailable": self._database.serve_while_down}
        unopened, kept = self._sealed()
        if unopened:
            # A sealed model this process cannot open is a model it would answer 400 for:
            # not ready, unless it still serves the credential it opened before (say so).
            body["stored_models_unopened"] = dict(unopened)
            body["stored_models_kept_from_memory"] = sorted(kept)
            if set(unopened) - set(kept):
                status, code = "unhealthy", 503
                body["status"] = status
        standing = self._replicas.standing
        body["other_replicas"] = [shown(r) for r in standing.others]
        if not standing.admitting:
            # Another process on this database without shared admission: see storage/replicas.
            body["admission_refused"] = standing.reason
            if not self._replicas.ready():
                status, code = "unhealthy", 503
                body["status"] = status
        await send_bytes(send, code, orjson.dumps(body), JSON_HEADERS)

    async def _per_deployment(self, scope: Scope, receive: Any, send: Any) -> None:
        if not await self._admins_only(scope, send):
            return
        body = [_shown(d) for d in self._deployments()]
        await send_bytes(send, 200, orjson.dumps(body), JSON_HEADERS)

    async def _probe_all(self, scope: Scope, receive: Any, send: Any) -> None:
        """LiteLLM's GET /health: every deployment asked once (the upstream bills it)."""
        if self._probes is None or not await self._admins_only(scope, send):
            return
        await send_bytes(send, 200, orjson.dumps(await self._probes.run()), JSON_HEADERS)

    async def _admins_only(self, scope: Scope, send: Any) -> bool:
        """True for a proxy_admin or proxy_admin_viewer (the master key is one); else the
        error is sent (401, or 403 naming the role, api/admin_auth.py)."""
        authorization, api_key, _ = credentials(scope)
        error = await refused(self._roles, authorization, api_key, scope["path"])
        if error is not None:
            await send_error(send, error)
            return False
        return True


def _shown(d: DeploymentHealth) -> dict[str, Any]:
    api_base = without_credentials(d.api_base)
    # Upstream errors quote the URL they called: never with its credentials.
    last_error = None if d.last_error is None else d.last_error.replace(d.api_base, api_base)
    return {"model_name": d.model_name, "deployment_id": d.deployment_id, "api_base": api_base,
            "state": d.state, "cooldown_left_s": round(d.cooldown_left_s, 3),
            "fails_last_minute": d.fails_last_minute, "last_error": last_error,
            "in_flight": d.in_flight,
            "latency_s": None if d.latency_s is None else round(d.latency_s, 4)}

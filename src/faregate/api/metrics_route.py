"""GET /metrics: the Prometheus exposition. Open by default, like LiteLLM's (Kubernetes scrapes
it in-cluster); `require_auth_for_metrics_endpoint` makes it ask for the master key."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from faregate.api.asgi_io import Scope, send_bytes, send_error
from faregate.api.call_record import credentials
from faregate.errors import AdminOnly, GatewayError
from faregate.keys.auth import Authenticator
from faregate.observe.metrics import Metrics

_HEADERS = [(b"content-type", CONTENT_TYPE_LATEST.encode())]


class MetricsRoute:
    def __init__(self, metrics: Metrics, auth: Authenticator | None) -> None:
        self._metrics = metrics
        self._auth = auth          # None: open to anyone who can reach the port

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._auth is not None:
            authorization, api_key, _ = credentials(scope)
            try:
                caller = await self._auth.caller(authorization, api_key)
                if not caller.is_master:
                    raise AdminOnly("/metrics needs the master key "
                                    "(general_settings.require_auth_for_metrics_endpoint)",
                                    code="admin_only")
            except GatewayError as exc:
                await send_error(send, exc)
                return
        await send_bytes(send, 200, await self._metrics.exposition(), _HEADERS)

"""GET /metrics: the Prometheus exposition. It names key aliases with their spend, so it asks
for a bearer token by default: the metrics token (general_settings.metrics_token or
FAREGATE_METRICS_TOKEN, what a scraper holds) or the master key.
`require_auth_for_metrics_endpoint: false` opens it to anyone who can reach the port."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from faregate.api.asgi_io import Scope, send_bytes, send_error
from faregate.api.call_record import credentials
from faregate.errors import AdminOnly, GatewayError
from faregate.keys.auth import Authenticator
from faregate.observe.metrics import Metrics
from faregate.secret import Secret

_HEADERS = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
_BEARER = "bearer "


class MetricsRoute:
    def __init__(self, metrics: Metrics, auth: Authenticator | None,
                 token: Secret | None = None) -> None:
        self._metrics = metrics
        self._auth = auth          # None: open to anyone who can reach the port
        self._token = token

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self._auth is not None:
            authorization, api_key, _ = credentials(scope)
            if not self._is_metrics_token(authorization):
                try:
                    caller = await self._auth.caller(authorization, api_key)
                    if not caller.is_master:
                        raise AdminOnly(
                            "/metrics needs the metrics token (general_settings.metrics_token "
                            "or FAREGATE_METRICS_TOKEN) or the master key as a bearer token; "
                            "set general_settings.require_auth_for_metrics_endpoint: false to "
                            "open it", code="admin_only")
                except GatewayError as exc:
                    await send_error(send, exc)
                    return
        await send_bytes(send, 200, await self._metrics.exposition(), _HEADERS)

    def _is_metrics_token(self, authorization: str | None) -> bool:
        if self._token is None or authorization is None \
                or authorization[:len(_BEARER)].lower() != _BEARER:
            return False
        return self._token.matches(authorization[len(_BEARER):].strip())

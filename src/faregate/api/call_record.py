"""What every hot route (OpenAI's and Anthropic's) does around the gateway call: read the
credentials, give the call its request id, count it in flight, answer a failure in the route's
own error shape, and record the call once, however it ends (metrics, the optional access line).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import Any

from faregate.api.asgi_io import ClientGone, Scope, send_bytes
from faregate.errors import GatewayError
from faregate.observe.logs import REQUEST_TRACE
from faregate.observe.metrics import Metrics
from faregate.observe.trace import RequestTrace, sane_client_request_id

log = logging.getLogger("faregate.api")
access_log = logging.getLogger("faregate.access")

Headers = list[tuple[bytes, bytes]]
# An error in a route's shape: (status, body, headers).
RenderError = Callable[[GatewayError], tuple[int, bytes, Headers]]


def credentials(scope: Scope) -> tuple[str | None, str | None, bytes | None]:
    """(Authorization, x-api-key or api-key, the caller's x-request-id) as sent."""
    authorization = api_key = client_id = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name in (b"x-api-key", b"api-key"):
            api_key = value.decode("latin-1")
        elif name == b"x-request-id":
            client_id = value
    return authorization, api_key, client_id


def id_headers(trace: RequestTrace, with_own: bool) -> Headers:
    """x-request-id (the gateway's own, unless the reply has it already) and the caller's
    id echoed as x-client-request-id: the ledger keys on ours, never on the caller's."""
    headers = [(b"x-request-id", trace.request_id.encode())] if with_own else []
    if trace.client_request_id is not None:
        headers.append((b"x-client-request-id", trace.client_request_id.encode()))
    return headers


def new_trace(request_id: str, client_id: bytes | None) -> RequestTrace:
    return RequestTrace(request_id, perf_counter(),
                        sane_client_request_id(client_id) if client_id else None)


class CallRecord:
    """`with CallRecord(...) as call:` around one call; set `call.status` as it is answered."""

    __slots__ = ("_context", "_log_requests", "_metrics", "error", "status", "trace")

    def __init__(self, trace: RequestTrace, metrics: Metrics, log_requests: bool) -> None:
        self.trace = trace
        self._metrics = metrics
        self._log_requests = log_requests
        self.status = 500
        self.error: GatewayError | None = None

    def __enter__(self) -> CallRecord:
        self._context = REQUEST_TRACE.set(self.trace)
        self._metrics.in_flight.inc()
        return self

    def __exit__(self, *_: object) -> None:
        self._metrics.in_flight.dec()
        self._metrics.finished(self.trace, self.status, self.error)
        if self._log_requests:
            _log_request(self.trace, self.status)
        REQUEST_TRACE.reset(self._context)

    async def failed(self, exc: Exception, scope: Scope, send: Any,
                     render: RenderError, extra: Headers | None = None) -> None:
        """Answer a call that failed before its reply: the route's error (with `extra`
        headers), or nothing at all to a client that already left."""
        if isinstance(exc, ClientGone):
            self.status = 499       # nginx's "client closed request": nothing was answered
            return
        if not isinstance(exc, GatewayError):
            log.error("unexpected error on %s", scope["path"], exc_info=exc)
            exc = GatewayError("Internal error in the gateway; see its logs")
        self.error = exc
        self.status, body, headers = render(exc)
        await send_bytes(send, self.status, body,
                         headers + id_headers(self.trace, True) + (extra or []))


def _log_request(trace: RequestTrace, status: int) -> None:
    access_log.info("request", extra={
        "model": trace.model or None, "key_alias": trace.key_alias or None, "status": status,
        "latency_ms": round((perf_counter() - trace.started) * 1000, 3),
        "upstream_ms": None if trace.upstream_s is None else round(trace.upstream_s * 1000, 3),
        "prompt_tokens": trace.prompt_tokens, "completion_tokens": trace.completion_tokens,
        "outcome": trace.outcome or None, "attempts": trace.attempts, "error": trace.error})

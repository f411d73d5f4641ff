"""Any OpenAI-compatible upstream (vLLM, an inference gateway, OpenAI) over the pooled session
(UpstreamSession: plain http through the lean HTTP/1.1 client, https through aiohttp).

The body goes out as the bytes the gateway hands over; responses come back as bytes. Failures
become UpstreamError (base.py says how). A 2xx whose body is not a JSON object is a failure too
(502, retryable): the gateway reads the usage it bills from that body.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from faregate.config import Deployment
from faregate.errors import UpstreamError
from faregate.providers.base import (
    CONNECTION_ERRORS,
    PerDeployment,
    UpstreamHeaders,
    UpstreamReply,
    UpstreamSession,
    connection_failure,
    sse_blocks,
    upstream_failure,
    upstream_timeout,
    with_retry_after,
)

Prepared = tuple[UpstreamHeaders, aiohttp.ClientTimeout, aiohttp.ClientTimeout]


def _prepared(d: Deployment) -> Prepared:
    """A deployment's headers, its timeout and its streams' timeout."""
    headers = {"Content-Type": "application/json"}
    if d.api_key is not None:
        headers["Authorization"] = "Bearer " + d.api_key.reveal()
    # stream_timeout bounds each wait for a stream's next bytes (the first included).
    return (UpstreamHeaders(headers), aiohttp.ClientTimeout(total=d.timeout_s),
            aiohttp.ClientTimeout(total=d.timeout_s, sock_read=d.stream_timeout_s))


class OpenAICompatible:
    def __init__(self) -> None:
        self._session: UpstreamSession | None = None
        self._prepared = PerDeployment(_prepared)

    def use(self, session: UpstreamSession) -> None:
        """Send through `session` (the process's pooled one; its owner closes it)."""
        self._session = session

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        """Nothing to check: the body goes to the upstream as it is."""

    @property
    def _http(self) -> UpstreamSession:
        assert self._session is not None, "OpenAICompatible.use(session) was not called"
        return self._session

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply:
        """POST; return the body of a 2xx answer and its usage (parsed once, here)."""
        headers, timeout, _ = self._prepared(d)
        try:
            async with self._http.post(d.api_base + path, data=body, headers=headers,
                                       timeout=timeout) as resp:
                data = await resp.read()
                if resp.status >= 300:
                    raise with_retry_after(upstream_failure(d, resp.status, data), resp.headers)
        except TimeoutError:        # first: aiohttp's read timeouts are ClientErrors too
            raise upstream_timeout(d, d.timeout_s, "timeout") from None
        except CONNECTION_ERRORS as exc:
            raise connection_failure(d, exc) from None
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"The upstream for model '{d.model_name}' answered "
                                f"HTTP {resp.status} with a body that is not a JSON object",
                                status=502, code="upstream_malformed_reply", retryable=True,
                                upstream_status=resp.status)
        return UpstreamReply(data, parsed.get("usage"))

    async def stream(self, d: Deployment, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """POST a streaming request; yield blocks of complete server-sent events (sse_blocks),
        then whatever followed the last blank line, as one more event."""
        headers, _, timeout = self._prepared(d)
        try:
            async with self._http.post(d.api_base + path, data=body, headers=headers,
                                       timeout=timeout) as resp:
                if resp.status >= 300:
                    raise with_retry_after(upstream_failure(d, resp.status, await resp.read()),
                                           resp.headers)
                async with contextlib.aclosing(
                        sse_blocks(resp.content.iter_any(), tail=True)) as blocks:
                    async for block in blocks:
                        yield block
        except TimeoutError:        # first: aiohttp's read timeouts are ClientErrors too
            if d.stream_timeout_s is not None:
                raise upstream_timeout(d, min(d.stream_timeout_s, d.timeout_s),
                                       "stream_timeout or timeout") from None
            raise upstream_timeout(d, d.timeout_s, "timeout") from None
        except CONNECTION_ERRORS as exc:
            raise connection_failure(d, exc) from None

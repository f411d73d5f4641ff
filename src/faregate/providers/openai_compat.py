"""Any OpenAI-compatible upstream (vLLM, an inference gateway, OpenAI) over pooled aiohttp.

The body goes out as the bytes the gateway hands over; responses come back as bytes. Failures
become UpstreamError with the status the caller should see: the client's own mistakes (4xx) keep
their status, the upstream's (5xx, bad credentials, timeouts, refused connections) become 502/504.
Each UpstreamError says whether another attempt may succeed (`retryable`) and what status the
upstream sent (`upstream_status`); the gateway's retry decision reads only those and `code`.
A 2xx whose body is not a JSON object is a failure too (502, retryable): the gateway reads the
usage it bills from that body.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from faregate.config import Deployment
from faregate.errors import UpstreamError


@dataclass(slots=True)
class UpstreamReply:
    body: bytes
    usage: object       # the reply's "usage" member, unchecked (None when absent)


class UpstreamClient(Protocol):
    """What the gateway needs of a provider's client (this module's, the Anthropic one)."""

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply: ...

    def stream(self, d: Deployment, path: str, body: bytes) -> AsyncGenerator[bytes, None]: ...

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        """Raise InvalidRequest now, before anything is reserved, if `d` cannot take `body`."""


class OpenAICompatible:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[int, dict[str, str]] = {}
        self._timeouts: dict[int, aiohttp.ClientTimeout] = {}
        self._stream_timeouts: dict[int, aiohttp.ClientTimeout] = {}

    async def open(self) -> None:
        # One pooled session per process: keep-alive connections to every upstream.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                         ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        """Nothing to check: the body goes to the upstream as it is."""

    @property
    def _http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "OpenAICompatible.open() was not called"
        return self._session

    def _prepared(self, d: Deployment) -> tuple[dict[str, str], aiohttp.ClientTimeout]:
        headers = self._headers.get(id(d))
        if headers is None:
            headers = {"Content-Type": "application/json"}
            if d.api_key is not None:
                headers["Authorization"] = "Bearer " + d.api_key.reveal()
            self._headers[id(d)] = headers
            self._timeouts[id(d)] = aiohttp.ClientTimeout(total=d.timeout_s)
            # stream_timeout bounds each wait for a stream's next bytes (the first included).
            self._stream_timeouts[id(d)] = aiohttp.ClientTimeout(
                total=d.timeout_s, sock_read=d.stream_timeout_s)
        return headers, self._timeouts[id(d)]

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply:
        """POST; return the body of a 2xx answer and its usage (parsed once, here)."""
        headers, timeout = self._prepared(d)
        try:
            async with self._http.post(d.api_base + path, data=body, headers=headers,
                                          timeout=timeout) as resp:
                data = await resp.read()
                if resp.status >= 300:
                    raise with_retry_after(upstream_failure(d, resp.status, data), resp.headers)
        except TimeoutError:        # first: aiohttp's read timeouts are ClientErrors too
            raise _timeout(d, d.timeout_s, "timeout") from None
        except aiohttp.ClientError as exc:
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
        """POST a streaming request; yield blocks of complete server-sent events.

        A block holds every event that arrived together (each ending in a blank line), so a
        fast upstream costs one relay step per network read, not one per token.
        """
        headers, _ = self._prepared(d)
        try:
            async with self._http.post(d.api_base + path, data=body, headers=headers,
                                       timeout=self._stream_timeouts[id(d)]) as resp:
                if resp.status >= 300:
                    raise with_retry_after(upstream_failure(d, resp.status, await resp.read()),
                                           resp.headers)
                pending = b""
                async for chunk in resp.content.iter_any():
                    if b"\r" in chunk:
                        chunk = chunk.replace(b"\r\n", b"\n")
                    pending += chunk
                    end = pending.rfind(b"\n\n")
                    if end >= 0:
                        yield pending[:end + 2]
                        pending = pending[end + 2:]
                if pending.strip():
                    yield pending + b"\n\n"
        except TimeoutError:        # first: aiohttp's read timeouts are ClientErrors too
            if d.stream_timeout_s is not None:
                raise _timeout(d, min(d.stream_timeout_s, d.timeout_s),
                               "stream_timeout or timeout") from None
            raise _timeout(d, d.timeout_s, "timeout") from None
        except aiohttp.ClientError as exc:
            raise connection_failure(d, exc) from None


def with_retry_after(error: UpstreamError, headers: Mapping[str, str]) -> UpstreamError:
    """Keep the upstream's Retry-After (seconds; the HTTP-date form is ignored): the router
    cools the deployment down at least that long, and a 429 passes it on to the caller."""
    try:
        seconds = float(headers.get("Retry-After") or 0)
    except ValueError:
        return error
    if seconds > 0 and math.isfinite(seconds):
        error.retry_after_s = seconds
        if error.status == 429:
            error.headers["retry-after"] = str(math.ceil(seconds))
    return error


def upstream_failure(d: Deployment, status: int, data: bytes) -> UpstreamError:
    message = _upstream_message(data)
    where = f"upstream for model '{d.model_name}'"
    if status in (401, 403):
        return UpstreamError(f"The {where} rejected the gateway's credentials ({status}): "
                             f"{message}. Check litellm_params.api_key.", status=502,
                             code="upstream_auth_error", upstream_status=status)
    if status == 429:
        return UpstreamError(f"The {where} is rate limiting: {message}", status=429,
                             type="rate_limit_error", code="upstream_rate_limited",
                             retryable=True, upstream_status=status)
    if status == 408:
        return UpstreamError(f"The {where} timed out: {message}", status=504, type="timeout",
                             code="upstream_timeout", retryable=True, upstream_status=status)
    if 400 <= status < 500:
        return UpstreamError(f"The {where} refused the request: {message}", status=status,
                             type="invalid_request_error", code=str(status),
                             upstream_status=status)
    return UpstreamError(f"The {where} failed with HTTP {status}: {message}", status=502,
                         code="upstream_error", retryable=True, upstream_status=status)


def _upstream_message(data: bytes) -> str:
    try:
        parsed = orjson.loads(data)
        message = parsed["error"]["message"] if isinstance(parsed.get("error"), dict) \
            else parsed.get("error") or parsed.get("detail") or parsed.get("message")
        if message:
            return str(message)[:500]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        pass
    return data[:200].decode(errors="replace") or "(empty body)"


def connection_failure(d: Deployment, exc: Exception, upstream: str = "the upstream"
                       ) -> UpstreamError:
    """A connection that failed (retryable): `upstream` names the provider in the message."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Never connected (refused, no route, DNS): nothing reached the upstream.
        return UpstreamError(f"Cannot reach {upstream} for model '{d.model_name}' at "
                             f"{d.shown_base}: {type(exc).__name__}", status=502,
                             code="upstream_unreachable", retryable=True)
    return UpstreamError(f"{upstream[0].upper()}{upstream[1:]} for model '{d.model_name}' at "
                         f"{d.shown_base} dropped the connection: {type(exc).__name__}",
                         status=502, code="upstream_disconnected", retryable=True)


def _timeout(d: Deployment, seconds: float, setting: str) -> UpstreamError:
    return UpstreamError(f"The upstream for model '{d.model_name}' did not answer within "
                         f"{seconds:g}s (litellm_params.{setting})", status=504,
                         type="timeout", code="upstream_timeout", retryable=True)

"""What every provider's client shares.

- the interface the gateway calls (`UpstreamClient`, answering `UpstreamReply`);
- the one pooled HTTP session of the process (`pooled_session`), which the composition root
  makes and hands to every client;
- `PerDeployment`: what a client derives from a deployment (headers holding its credential,
  timeouts), built once per `Deployment` object and never served to another one;
- `sse_blocks`: a response body cut into blocks of complete server-sent events;
- upstream failures as the UpstreamError the caller sees: the client's own mistakes (4xx)
  keep their status, the upstream's (5xx, bad credentials, timeouts, refused connections)
  become 502/504. Each says whether another attempt may succeed (`retryable`) and what status
  the upstream sent (`upstream_status`); the gateway's retry decision reads only those and
  `code`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import orjson

from faregate.config import Deployment
from faregate.errors import UpstreamError

T = TypeVar("T")


@dataclass(slots=True)
class UpstreamReply:
    body: bytes
    usage: object       # the reply's "usage" member, unchecked (None when absent)


class UpstreamClient(Protocol):
    """What the gateway needs of a provider's client (OpenAICompatible, AnthropicClient)."""

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply: ...

    def stream(self, d: Deployment, path: str, body: bytes) -> AsyncGenerator[bytes, None]: ...

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        """Raise InvalidRequest now, before anything is reserved, if `d` cannot take `body`."""


def pooled_session() -> aiohttp.ClientSession:
    """The process's one HTTP session, shared by every provider's client: keep-alive
    connections to every upstream in one pool. Make it in the running event loop; its owner
    (ProviderClients) closes it once, at shutdown.

    Answers are decompressed (aiohttp's default). aiohttp asks every upstream for gzip or
    deflate (Accept-Encoding), and no client relays an upstream's bytes with its
    Content-Encoding: the OpenAI-compatible client parses the body and frames its events, the
    Anthropic one translates or meters them, so a compressed answer is of use only
    decompressed. An answer sent uncompressed (vLLM, llama.cpp, the mocks) is read as it
    came, byte for byte."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                     ttl_dns_cache=60)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))


class PerDeployment(Generic[T]):
    """`build(d)` computed once per Deployment object: a client's prepared headers (with the
    upstream credential) and timeouts.

    Kept by `deployment_id`, and an entry serves only the very object it was built from: the
    catalog makes new Deployment objects whenever a stored model changes (the same id may
    come back with another key or api_base, and CPython gives a freed object's id() to the
    next), so an entry built for another object is rebuilt, never reused. An entry goes when
    its Deployment is freed (a weak reference's callback): a deleted model's credential does
    not stay behind here, and the table holds only live deployments."""

    __slots__ = ("_build", "_entries")

    def __init__(self, build: Callable[[Deployment], T]) -> None:
        self._build = build
        self._entries: dict[str, tuple[weakref.ref[Deployment], T]] = {}

    def __call__(self, d: Deployment) -> T:
        entry = self._entries.get(d.deployment_id)
        if entry is not None and entry[0]() is d:
            return entry[1]
        return self._rebuilt(d)

    def __len__(self) -> int:
        return len(self._entries)

    def _rebuilt(self, d: Deployment) -> T:
        key, entries = d.deployment_id, self._entries

        def gone(ref: weakref.ref[Deployment]) -> None:
            # Only this entry: a newer Deployment may hold the id by now.
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                del entries[key]

        value = self._build(d)
        entries[key] = (weakref.ref(d, gone), value)
        return value


async def sse_blocks(chunks: AsyncIterable[bytes], *, tail: bool
                     ) -> AsyncGenerator[bytes, None]:
    """`chunks` (a response body as the network delivered it) as blocks of complete
    server-sent events: after each read, everything up to the last blank line so far, line
    ends normalised to \\n. A block holds every event that arrived together, so a fast
    upstream costs one relay step per network read, not one per token.

    Bytes after the last blank line when the body ends: with `tail`, one more block (ended by
    a blank line) unless they are only whitespace; without it, dropped (the caller judges a
    stream that ended early)."""
    pending = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        pending += chunk
        end = pending.rfind(b"\n\n")
        if end >= 0:
            yield pending[:end + 2]
            pending = pending[end + 2:]
    if tail and pending.strip():
        yield pending + b"\n\n"


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


def upstream_timeout(d: Deployment, seconds: float, setting: str) -> UpstreamError:
    """No answer within `seconds`, the limit `setting` (litellm_params) sets (retryable)."""
    return UpstreamError(f"The upstream for model '{d.model_name}' did not answer within "
                         f"{seconds:g}s (litellm_params.{setting})", status=504,
                         type="timeout", code="upstream_timeout", retryable=True)

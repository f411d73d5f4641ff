"""What every provider's client shares.

- the interface the gateway calls (`UpstreamClient`, answering `UpstreamReply`);
- the one pooled HTTP session of the process (`pooled_session`, an `UpstreamSession`), which
  the composition root makes and hands to every client: plain-http upstreams through the lean
  HTTP/1.1 client (http1.py), the rest (https, ...) through aiohttp;
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
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from faregate.config import Deployment
from faregate.errors import UpstreamError
from faregate.providers.http1 import ConnectFailed, Http1Error, Http1Pool, Target

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


# What a failed connection raises, whichever client carried the request.
CONNECTION_ERRORS = (aiohttp.ClientError, Http1Error)


class Body(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class Answer(Protocol):
    """An upstream's answer as either client gives it (aiohttp's ClientResponse, http1's
    Exchange): headers readable in any case."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> Body: ...

    async def read(self) -> bytes: ...


class UpstreamSession:
    """The process's one HTTP session, shared by every provider's client. A URL
    `http://host[:port]/path` goes through the lean HTTP/1.1 client (http1.Http1Pool);
    https, credentials in the URL, a path that is not plain ASCII, or `lean=False`
    (FAREGATE_UPSTREAM_HTTP_CLIENT=aiohttp) go through aiohttp, as every request did before.
    `post` takes aiohttp's arguments and timeouts for both.

    Compression: the lean client sends no Accept-Encoding (so upstreams answer uncompressed),
    aiohttp asks for gzip or deflate; both decode a compressed answer. No client relays an
    upstream's bytes with its Content-Encoding (the OpenAI-compatible client parses the body
    and frames its events, the Anthropic one translates or meters them), so a compressed
    answer is of use only decompressed; one sent uncompressed (vLLM, llama.cpp, the mocks) is
    read as it came, byte for byte."""

    def __init__(self, session: aiohttp.ClientSession, lean: Http1Pool | None) -> None:
        self.aiohttp = session
        self.lean = lean
        self._targets: dict[str, Target | None] = {}

    @property
    def closed(self) -> bool:
        return self.aiohttp.closed

    def post(self, url: str, *, data: bytes, headers: Mapping[str, str],
             timeout: aiohttp.ClientTimeout) -> AbstractAsyncContextManager[Answer]:
        target = self._targets.get(url, _UNSEEN) if self.lean is not None else None
        if target is _UNSEEN:
            target = self._target(url)
        if target is None or self.lean is None:
            return self.aiohttp.post(url, data=data, headers=headers, timeout=timeout)
        lines = headers.http1_lines() if type(headers) is UpstreamHeaders \
            else _http1_lines(headers)
        head = b"%s%sContent-Length: %d\r\n\r\n" % (target.head, lines, len(data))
        connect = timeout.sock_connect if timeout.connect is None else timeout.connect
        return self.lean.post(target, head, data, timeout.total, timeout.sock_read, connect)

    def _target(self, url: str) -> Target | None:
        """Where the lean client sends `url`'s requests, or None: aiohttp's to send."""
        if len(self._targets) >= 1024:      # api_base churn (stored models): stay bounded
            self._targets.clear()
        self._targets[url] = target = _lean_target(url)
        return target

    async def close(self) -> None:
        if self.lean is not None:
            await self.lean.close()
        await self.aiohttp.close()

    async def __aenter__(self) -> UpstreamSession:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


_UNSEEN = Target("", 0, b"")


class UpstreamHeaders(dict[str, str]):
    """A deployment's request headers as a client prepares them once (in PerDeployment's
    build): the lean client's header lines are encoded and checked on first use and kept, not
    redone per request. Not to be changed once used."""

    __slots__ = ("_lines",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__(headers)
        self._lines: bytes | None = None

    def http1_lines(self) -> bytes:
        lines = self._lines
        if lines is None:
            lines = self._lines = _http1_lines(self)
        return lines


def _http1_lines(headers: Mapping[str, str]) -> bytes:
    """`headers` as HTTP/1.1 header lines; ValueError if one would break a line."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise ValueError("a header name or value holds a line break")
    return lines.encode()


def _lean_target(url: str) -> Target | None:
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme != "http" or not parts.hostname or "@" in parts.netloc \
            or not (path.isascii() and path.isprintable() and parts.netloc.isascii()) \
            or " " in path:
        return None
    return Target(parts.hostname, port,
                  f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode())


def pooled_session(lean: bool = True) -> UpstreamSession:
    """The process's one HTTP session (UpstreamSession): keep-alive connections to every
    upstream, plain-http ones in the lean client's pool (unless `lean` is False), the rest in
    aiohttp's. Make it in the running event loop; its owner (ProviderClients) closes it once,
    at shutdown."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                     ttl_dns_cache=60)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
    return UpstreamSession(session, Http1Pool(keepalive_s=30) if lean else None)


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
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectFailed)):
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

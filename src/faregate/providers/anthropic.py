"""Anthropic's Messages API behind the OpenAI-compatible client's interface.

`AnthropicClient` has `OpenAICompatible`'s methods (`use`, `check`, `send`, `stream`): it takes
an OpenAI chat request's bytes, sends `POST {api_base}/v1/messages` (headers `x-api-key`,
`anthropic-version`), and answers with an OpenAI chat.completion (or OpenAI SSE chunks ending in
a usage chunk and `data: [DONE]`), so the gateway's path is the same for every provider.
A request it cannot translate raises InvalidRequest (400, before anything is sent); an Anthropic
error becomes an UpstreamError in OpenAI's shape: 529 overloaded -> 503 and 429 -> 429, both
retryable; 400 keeps its status and is not retried; 401/403 -> 502 upstream_auth_error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aiohttp
import orjson

from faregate.config import Deployment
from faregate.errors import InvalidRequest, UpstreamError
from faregate.providers.anthropic_passthrough import read_message, send_message, stream_message
from faregate.providers.anthropic_translate import (
    ANTHROPIC_VERSION,
    AnthropicStreamError,
    StreamTranslator,
    chunk_bytes,
    from_message,
    sse_events,
    to_messages_request,
)
from faregate.providers.base import (
    CONNECTION_ERRORS,
    PerDeployment,
    UpstreamReply,
    UpstreamSession,
    connection_failure,
    sse_blocks,
    upstream_failure,
    with_retry_after,
)

CHAT_PATH = "/chat/completions"
MESSAGES_PATH = "/messages"     # a /v1/messages body, passed through (anthropic_passthrough)
# The HTTP status Anthropic gives each error type: an error event inside a stream is judged
# (retryable or not) as the same error answered before the stream would be.
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401,
                "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                "rate_limit_error": 429, "api_error": 500, "timeout_error": 504,
                "overloaded_error": 529}
OVERLOADED = 529


def _headers(d: Deployment) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
    if d.api_key is not None:
        headers["x-api-key"] = d.api_key.reveal()
    return headers


class AnthropicClient:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._session: UpstreamSession | None = None
        self._headers_for = PerDeployment(_headers)
        self._now = now

    def use(self, session: UpstreamSession) -> None:
        """Send through `session` (the process's pooled one; its owner closes it)."""
        self._session = session

    @property
    def _http(self) -> UpstreamSession:
        assert self._session is not None, "AnthropicClient.use(session) was not called"
        return self._session

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        """Translate once before admission, so that a request Anthropic cannot take is a 400
        with nothing reserved or recorded (the real translation runs again on the capped body).
        A /v1/messages body passes through as it is."""
        if path == MESSAGES_PATH:
            return
        if path != CHAT_PATH:
            raise _unsupported_endpoint(d)
        to_messages_request(body, d.upstream_model, d.max_output_tokens)

    def _prepared(self, d: Deployment, path: str, body: bytes, stream: bool
                  ) -> tuple[dict[str, str], bytes, bool]:
        if path != CHAT_PATH:
            raise _unsupported_endpoint(d)
        headers = self._headers_for(d)
        request = orjson.loads(body)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        translated = to_messages_request(request, d.upstream_model, d.max_output_tokens)
        if stream:
            translated["stream"] = True
        return headers, orjson.dumps(translated), include_usage

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply:
        """POST one Messages request; return an OpenAI chat.completion and its usage."""
        if path == MESSAGES_PATH:
            return await send_message(self._http, d, self._headers_for(d), body,
                                      anthropic_failure, _connection_failure,
                                      lambda d, _: _timeout(d, d.timeout_s))
        headers, payload, _ = self._prepared(d, path, body, stream=False)
        try:
            async with self._http.post(d.api_base + "/v1/messages", data=payload,
                                       headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=d.timeout_s)) as resp:
                data = await resp.read()
                if resp.status >= 300:
                    raise with_retry_after(anthropic_failure(d, resp.status, data),
                                           resp.headers)
        except TimeoutError:
            raise _timeout(d, d.timeout_s) from None
        except CONNECTION_ERRORS as exc:
            raise _connection_failure(d, exc) from None
        completion = from_message(read_message(d, resp.status, data), int(self._now()))
        return UpstreamReply(orjson.dumps(completion), completion["usage"])

    async def stream(self, d: Deployment, path: str, body: bytes) -> AsyncGenerator[bytes, None]:
        """POST a streaming Messages request; yield OpenAI SSE blocks, one per network read
        that completed events worth sending, then the usage chunk and `data: [DONE]`."""
        if path == MESSAGES_PATH:
            async for block in stream_message(
                    self._http, d, self._headers_for(d), body, anthropic_failure,
                    _connection_failure, lambda d, _: _timeout(
                        d, min(d.stream_timeout_s or d.timeout_s, d.timeout_s)),
                    ERROR_STATUS):
                yield block
            return
        headers, payload, include_usage = self._prepared(d, path, body, stream=True)
        translator = StreamTranslator(int(self._now()), include_usage)
        timeout = aiohttp.ClientTimeout(total=d.timeout_s, sock_read=d.stream_timeout_s)
        try:
            async with self._http.post(d.api_base + "/v1/messages", data=payload,
                                       headers=headers, timeout=timeout) as resp:
                if resp.status >= 300:
                    raise with_retry_after(anthropic_failure(d, resp.status,
                                                             await resp.read()), resp.headers)
                async with contextlib.aclosing(
                        sse_blocks(resp.content.iter_any(), tail=False)) as blocks:
                    async for complete in blocks:
                        chunks, failure = _translated(d, translator, complete)
                        if chunks:
                            # Chunks before an error event go out first: whether the caller
                            # has received anything (and a retry is still possible) depends
                            # only on the order of events, not on how they were split into
                            # reads.
                            yield chunk_bytes(chunks) + (b"data: [DONE]\n\n"
                                                         if translator.done else b"")
                        if failure is not None:
                            raise failure
                        if translator.done:
                            return
        except TimeoutError:
            raise _timeout(d, min(d.stream_timeout_s or d.timeout_s, d.timeout_s)) from None
        except CONNECTION_ERRORS as exc:
            raise _connection_failure(d, exc) from None
        raise UpstreamError(f"The Anthropic upstream for model '{d.model_name}' ended the "
                            "stream before message_stop", status=502,
                            code="upstream_bad_stream", retryable=True)


def _translated(d: Deployment, translator: StreamTranslator, events: bytes
                ) -> tuple[list[dict[str, Any]], UpstreamError | None]:
    """The OpenAI chunks for `events`, up to the first error event or malformed event (and
    that failure)."""
    chunks: list[dict[str, Any]] = []
    try:
        for event in sse_events(events):
            chunks += translator.feed(event)
    except AnthropicStreamError as exc:
        return chunks, anthropic_failure(d, ERROR_STATUS.get(exc.error_type, 500),
                                         orjson.dumps({"error": {"message": str(exc)}}))
    except orjson.JSONDecodeError as exc:
        return chunks, UpstreamError(f"The Anthropic upstream for model '{d.model_name}' sent "
                                     f"a malformed stream event: {exc}", status=502,
                                     code="upstream_bad_stream", retryable=True)
    return chunks, None


def anthropic_failure(d: Deployment, status: int, data: bytes) -> UpstreamError:
    """An Anthropic error answer (`{"type": "error", "error": {"type", "message"}}`) as the
    UpstreamError the caller sees, in OpenAI's shape."""
    if status == OVERLOADED:
        failure = upstream_failure(d, 503, data)
        return UpstreamError(f"Anthropic is overloaded (529) for model '{d.model_name}': "
                             f"{failure.message.split(': ', 1)[-1]}", status=503,
                             code="upstream_overloaded", retryable=True,
                             upstream_status=OVERLOADED)
    return upstream_failure(d, status, data)


def _unsupported_endpoint(d: Deployment) -> InvalidRequest:
    return InvalidRequest(f"Model '{d.model_name}' is an Anthropic model: it serves "
                          "/v1/chat/completions and /v1/messages only", param="model",
                          code="unsupported_endpoint")


def _connection_failure(d: Deployment, exc: Exception) -> UpstreamError:
    return connection_failure(d, exc, "Anthropic")


def _timeout(d: Deployment, seconds: float) -> UpstreamError:
    return UpstreamError(f"Anthropic did not answer within {seconds:g}s for model "
                         f"'{d.model_name}' (litellm_params.timeout / stream_timeout)",
                         status=504, type="timeout", code="upstream_timeout", retryable=True)

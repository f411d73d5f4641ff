"""THE request path, top-down: authenticate -> parse -> route -> bound -> reserve -> upstream
-> settle -> ledger. No web framework here: the API, the CLI and the tests share this path.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from faregate.config import Deployment
from faregate.errors import (
    GatewayError,
    InvalidRequest,
    ModelAccessDenied,
    ServiceUnavailable,
    UpstreamError,
)
from faregate.keys.auth import Authenticator, Caller
from faregate.limits.demand import Admission, Admitted, Demand, StaleKey, Window
from faregate.money import tokens_affordable
from faregate.openai_request import CallType, ParsedRequest, parse
from faregate.providers.openai_compat import OpenAICompatible
from faregate.records import SpendRow
from faregate.routing import Router
from faregate.spend.ledger import LedgerWriter
from faregate.spend.pricing import PromptBound, cost

log = logging.getLogger("faregate.gateway")

UPSTREAM_PATHS = {CallType.CHAT: "/chat/completions", CallType.COMPLETION: "/completions",
                  CallType.EMBEDDING: "/embeddings"}
# OpenAI's legacy completions produce 16 tokens when max_tokens is not given.
COMPLETION_DEFAULT_MAX_TOKENS = 16
_DONE = b"data: [DONE]"
_ADMISSION_ATTEMPTS = 3


@dataclass(slots=True)
class Reply:
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int = 200


@dataclass(slots=True)
class StreamReply:
    """Send `head`, then `events`; always `aclose()` events (that settles the request)."""

    head: bytes                             # complete SSE events, each ending in a blank line
    events: AsyncGenerator[bytes, None]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    """What one admitted request carries from reservation to settlement."""

    request_id: str
    caller: Caller
    request: ParsedRequest
    deployment: Deployment
    admitted: Admitted
    prompt_bound: int
    started: datetime
    settled: bool = False


class Gateway:
    def __init__(self, router: Router, auth: Authenticator,
                 admission: Admission, bound: PromptBound, upstream: OpenAICompatible,
                 ledger: LedgerWriter, now: Callable[[], datetime]) -> None:
        self._router = router
        self._auth = auth
        self._admission = admission
        self._bound = bound
        self._upstream = upstream
        self._ledger = ledger
        self._now = now
        # Unique across processes and restarts (the ledger is idempotent by request id), and
        # cheaper than uuid4: a random per-process prefix and a counter.
        prefix = os.urandom(8).hex()
        counter = itertools.count(1)
        self._next_request_id = lambda: f"{prefix}{next(counter):016x}"

    async def handle(self, call_type: CallType, raw: bytes, authorization: str | None,
                     api_key: str | None) -> Reply | StreamReply:
        caller = await self._auth.caller(authorization, api_key)
        request = parse(raw, call_type)
        if call_type is CallType.EMBEDDING and request.stream:
            raise InvalidRequest("Embeddings cannot be streamed", param="stream")
        request_id = self._next_request_id()
        for attempt in range(_ADMISSION_ATTEMPTS):
            deployment = self._route(request.model, caller)
            prompt_bound = self._bound.tokens(deployment, request)
            wanted = self._wanted_output(request, deployment)
            demand = Demand(
                request_id=request_id, key=caller.key,
                least=cost(deployment, prompt_bound, request.n if wanted else 0),
                most=cost(deployment, prompt_bound, wanted),
                windows=_windows(caller, deployment, prompt_bound + wanted),
                parallel_limit=caller.key.max_parallel_requests,
                lease_s=deployment.timeout_s + 60, key_version=caller.version)
            try:
                admitted = await self._admission.admit(demand)
                break
            except StaleKey:
                # Changed on another replica since this one cached it: read it again, decide
                # again (it may now be blocked, deleted, or have new limits).
                self._auth.forget(caller.key.token)
                if attempt + 1 == _ADMISSION_ATTEMPTS:
                    raise ServiceUnavailable("The key is being changed; retry",
                                             code="key_changing") from None
                caller = await self._auth.caller(authorization, api_key)
        call = _Call(request_id, caller, request, deployment, admitted, prompt_bound,
                     self._now())
        try:
            allowed = self._allowed_output(call, wanted)
            body = self._upstream_body(raw, call, allowed)
            headers = [(b"x-request-id", call.request_id.encode()), *admitted.headers]
            if allowed < wanted and request.max_tokens is not None:
                headers.append((b"x-faregate-max-tokens-capped", str(allowed // request.n)
                                .encode()))
            path = UPSTREAM_PATHS[call_type]
            if request.stream:
                # Wait for the first event so that an upstream that fails at once gives the
                # caller a real HTTP error status rather than a 200 with an error event.
                blocks = self._upstream.stream(deployment, path, body)
                first = await anext(blocks, None)
                relay = self._relay(call, first, blocks)
                # Started, the relay settles in its `finally` however the stream ends.
                head = await anext(relay, b"")
                return StreamReply(head, relay, headers)
            data = await self._upstream.send(deployment, path, body)
        except BaseException:
            await self._finish(call, 0, 0, "failure")
            raise
        await self._settle_reply(call, data)
        return Reply(data, headers)

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Caller:
        return await self._auth.caller(authorization, api_key)

    def models(self, caller: Caller) -> bytes:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "faregate"}
                for name in self._router.names() if caller.may_use(name)]
        return orjson.dumps({"object": "list", "data": data})

    def _route(self, model: str, caller: Caller) -> Deployment:
        deployments = self._router.deployments(model)
        if not deployments:
            raise InvalidRequest(f"Invalid model name passed in model={model}. Call /v1/models "
                                 "to see the models your key may use", param="model",
                                 code="model_not_found")
        if not caller.may_use(model):
            raise ModelAccessDenied(f"Key {caller.key.key_name} may not use model {model}; it "
                                    f"may use: {', '.join(caller.key.models)}",
                                    code="model_access_denied")
        return deployments[0]

    @staticmethod
    def _wanted_output(request: ParsedRequest, deployment: Deployment) -> int:
        if request.call_type is CallType.EMBEDDING:
            return 0
        if request.max_tokens is not None:
            per_choice = request.max_tokens
        elif request.call_type is CallType.COMPLETION:
            per_choice = COMPLETION_DEFAULT_MAX_TOKENS
        else:
            per_choice = deployment.max_output_tokens
        return per_choice * request.n

    def _allowed_output(self, call: _Call, wanted: int) -> int:
        """Output tokens the grant pays for: all that was wanted unless the budget is short."""
        if call.admitted.grant == 0 or wanted == 0:
            return wanted
        d = call.deployment
        prompt_cost = cost(d, call.prompt_bound, 0)
        affordable = tokens_affordable(call.admitted.grant - prompt_cost, d.output_femtos)
        return min(wanted, affordable // call.request.n * call.request.n)

    def _upstream_body(self, raw: bytes, call: _Call, allowed: int) -> bytes:
        """The client's bytes, unless the gateway must change a field."""
        request, d = call.request, call.deployment
        body, changed = request.body, False
        if d.upstream_model != request.model:
            body["model"], changed = d.upstream_model, True
        budgeted = call.admitted.grant > 0
        if request.call_type is not CallType.EMBEDDING and budgeted and (
                request.max_tokens is None or allowed < request.max_tokens * request.n):
            # The reservation only bounds the cost if the upstream is held to it.
            body[request.max_tokens_field or "max_tokens"] = allowed // request.n
            changed = True
        if request.stream and not request.usage_requested:
            body["stream_options"] = {**(body.get("stream_options") or {}),
                                      "include_usage": True}
            changed = True
        return orjson.dumps(body) if changed else raw

    async def _settle_reply(self, call: _Call, data: bytes) -> None:
        try:
            reported = self._reported(call, orjson.loads(data).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            reported = None
        if reported is None:
            log.warning("upstream %s answered without a readable usage; charging the bound",
                        call.deployment.api_base)
            reported = call.prompt_bound, self._wanted_output(call.request, call.deployment)
        await self._finish(call, *reported, "success")

    def _reported(self, call: _Call, usage: object) -> tuple[int, int] | None:
        """(prompt, completion) tokens from an upstream's usage, or None if unreadable; a
        reported prompt teaches the prompt bound its template overhead."""
        try:
            prompt = int(usage.get("prompt_tokens") or 0)           # type: ignore[attr-defined]
            completion = int(usage.get("completion_tokens") or 0)   # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError):
            return None
        if prompt:
            self._bound.observe(call.deployment, call.request, prompt)
        return prompt, completion

    async def _relay(self, call: _Call, first: bytes | None,
                     blocks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """Pass a stream through, read its usage, and settle whatever way it ends."""
        meter = _StreamMeter(call.request.usage_requested)
        try:
            if first is not None:
                yield meter.pass_on(first)
                async for block in blocks:
                    yield meter.pass_on(block)
        except GatewayError as exc:
            yield b"data: " + exc.body() + b"\n\n"
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            meter.broken = True
            err = UpstreamError(f"The upstream sent a malformed stream event: {exc}")
            yield b"data: " + err.body() + b"\n\n"
        finally:
            await blocks.aclose()     # closes the upstream response: frees its GPU slot
            reported = self._reported(call, meter.usage) \
                if meter.usage is not None and meter.done and not meter.broken else None
            if reported is not None:
                (prompt, completion), status = reported, "success"
            elif meter.produced:
                # Cut short: charge the chunks produced, the prompt at its bound (never less
                # than what the upstream may have counted).
                prompt, completion, status = call.prompt_bound, meter.produced, "partial"
            else:
                prompt, completion = 0, 0
                status = "success" if meter.done else "failure"
            await self._finish(call, prompt, completion, status)

    async def _finish(self, call: _Call, prompt: int, completion: int, status: str) -> None:
        if call.settled:
            return
        call.settled = True
        spend = cost(call.deployment, prompt, completion)
        d = call.deployment
        self._ledger.record(SpendRow(
            request_id=call.request_id, api_key=call.caller.key.token,
            key_alias=call.caller.key.key_alias, model=d.model_name,
            upstream=f"{d.api_base}#{d.upstream_model}", call_type=call.request.call_type.value,
            prompt_tokens=prompt, completion_tokens=completion, spend_nanos=spend,
            start_time=call.started, end_time=self._now(), status=status))
        await self._admission.settle(call.admitted, spend, prompt + completion)


def _windows(caller: Caller, d: Deployment, tokens: int) -> tuple[Window, ...]:
    """Every rate limit this request counts against: its key's, its key's for this model,
    and its deployment's (which protects a self-hosted upstream as a whole)."""
    key = caller.key
    limits = ((key.rpm_limit, False, "rpm_limit"), (key.tpm_limit, True, "tpm_limit"),
              (key.model_rpm_limit.get(d.model_name), False, "model_rpm_limit"),
              (key.model_tpm_limit.get(d.model_name), True, "model_tpm_limit"),
              (d.rpm, False, "rpm"), (d.tpm, True, "tpm"))
    if all(limit is None for limit, _, _ in limits):
        return ()                   # the common case: no counter names to format
    scopes = (f"k:{key.token}:rpm", f"k:{key.token}:tpm",
              f"k:{key.token}:m:{d.model_name}:rpm", f"k:{key.token}:m:{d.model_name}:tpm",
              f"d:{d.deployment_id}:rpm", f"d:{d.deployment_id}:tpm")
    return tuple(Window(scope, is_tokens, limit, tokens if is_tokens else 1, setting)
                 for scope, (limit, is_tokens, setting) in zip(scopes, limits, strict=True)
                 if limit is not None)


class _StreamMeter:
    """Reads a relayed stream's usage and counts what it produced, touching JSON only when an
    event carries usage; hides the usage chunk from a client that did not ask for it."""

    __slots__ = ("_want_usage", "broken", "done", "produced", "usage")

    def __init__(self, want_usage: bool) -> None:
        self._want_usage = want_usage
        self.usage: dict[str, int] | None = None
        self.produced = 0
        self.done = False
        self.broken = False

    def pass_on(self, block: bytes) -> bytes:
        if _DONE in block:
            self.done = True
        if b'"usage"' not in block or (b'"usage":{' not in block
                                        and b'"usage": {' not in block):
            self.produced += block.count(b"data: {")
            return block
        out = []
        for event in block.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                if event:
                    out.append(event)
                continue
            if b'"usage":{' in event or b'"usage": {' in event:
                chunk = orjson.loads(event[6:])
                self.usage = chunk.get("usage") or self.usage
                if not self._want_usage:
                    if not chunk.get("choices"):
                        continue            # the usage chunk the client did not ask for
                    chunk.pop("usage", None)
                    event = b"data: " + orjson.dumps(chunk)
            if b'"choices":[]' not in event and b'"choices": []' not in event:
                self.produced += 1
            out.append(event)
        return b"\n\n".join(out) + b"\n\n" if out else b""

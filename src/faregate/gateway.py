"""THE request path, top-down: authenticate -> parse -> route -> bound -> reserve -> upstream
-> settle -> ledger. No web framework here: the API, the CLI and the tests share this path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from time import perf_counter

import orjson

from faregate.admission.demand import Admission, Admitted, Demand, StaleKey, Window
from faregate.catalog.routing import Router
from faregate.config import Deployment
from faregate.errors import (
    GatewayError,
    InvalidRequest,
    ModelAccessDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
)
from faregate.keys.auth import Authenticator, Caller
from faregate.money import tokens_affordable
from faregate.observe.trace import RequestTrace
from faregate.providers.openai_compat import UpstreamClient
from faregate.records import SpendRow
from faregate.spend.ledger import LedgerWriter
from faregate.spend.pricing import PromptBound, bound_cost, cost
from faregate.wire.openai_request import CallType, ParsedRequest, parse

log = logging.getLogger("faregate.gateway")

UPSTREAM_PATHS = {CallType.CHAT: "/chat/completions", CallType.COMPLETION: "/completions",
                  CallType.EMBEDDING: "/embeddings", CallType.MESSAGES: "/messages"}
# OpenAI's legacy completions produce 16 tokens when max_tokens is not given.
COMPLETION_DEFAULT_MAX_TOKENS = 16
_DONE = b"data: [DONE]"
_ADMISSION_ATTEMPTS = 3
# Admission's refusal codes for a deployment's own windows (litellm_params rpm / tpm).
_DEPLOYMENT_WINDOWS = ("rpm", "tpm")


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
    trace: RequestTrace
    settled: bool = False
    wanted: int = 0                 # output tokens asked for (before a budget cap)
    cache_read: int = 0             # prompt tokens the upstream read from its prompt cache
    cache_write: int = 0            # prompt tokens the upstream wrote to it


class Gateway:
    def __init__(self, router: Router, auth: Authenticator,
                 admission: Admission, bound: PromptBound, upstream: UpstreamClient,
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
        self.new_request_id = lambda: f"{prefix}{next(counter):016x}"

    async def handle(self, call_type: CallType, raw: bytes, authorization: str | None,
                     api_key: str | None, trace: RequestTrace,
                     parsed: ParsedRequest | None = None) -> Reply | StreamReply:
        """Serve one request; `trace` brings its request id and takes what it did.
        `parsed`: the request already read by the edge (another dialect's body)."""
        caller = await self._auth.caller(authorization, api_key)
        trace.key_alias = caller.key.key_alias or ""
        request = parse(raw, call_type) if parsed is None else parsed
        if call_type is CallType.EMBEDDING and request.stream:
            raise InvalidRequest("Embeddings cannot be streamed", param="stream")
        deployment = self._route(request.model, caller)
        trace.model = deployment.model_name   # a configured name: bounded label values
        path = UPSTREAM_PATHS[call_type]
        # A body this provider cannot take is refused before anything is reserved or recorded.
        self._upstream.check(deployment, path, request.body)
        call = await self._admit_with_room(trace.request_id, caller, request, deployment,
                                           authorization, api_key, trace)
        try:
            return await self._answer(call, raw, path)
        except UpstreamError as exc:
            self._router.failed(call.deployment, exc)
            failure = exc
        except BaseException:
            await self._finish(call, 0, 0, "failure")
            raise
        return await self._recover(call, raw, path, failure, authorization, api_key)

    async def _admit_with_room(self, request_id: str, caller: Caller, request: ParsedRequest,
                               deployment: Deployment, authorization: str | None,
                               api_key: str | None, trace: RequestTrace) -> _Call:
        """Admit on `deployment`, or, if its own rpm/tpm window is full, on another deployment
        of the model that has room: a full deployment is no reason to refuse the request."""
        started, tried = self._now(), set[str]()
        while True:
            try:
                return await self._admit(request_id, request_id, caller, request, deployment,
                                         authorization, api_key, trace, started)
            except RateLimited as exc:
                if exc.code not in _DEPLOYMENT_WINDOWS:
                    raise
                tried.add(deployment.deployment_id)
                other = self._router.pick(deployment.model_name, tried)
                if other is None or other.deployment_id in tried:
                    raise           # every deployment is full: the caller gets the 429
                deployment = other

    async def _admit(self, request_id: str, demand_id: str, caller: Caller,
                     request: ParsedRequest, deployment: Deployment, authorization: str | None,
                     api_key: str | None, trace: RequestTrace, started: datetime) -> _Call:
        """Reserve budget and limits for `request` on `deployment`'s terms."""
        # A reservation outlives every attempt it may cover (a crashed process's lease).
        s = self._router.settings
        lease_s = (deployment.timeout_s + s.retry_backoff_max_s) * (s.num_retries + 1) + 60
        for attempt in range(_ADMISSION_ATTEMPTS):
            prompt_bound = self._bound.tokens(deployment, request)
            wanted = self._wanted_output(request, deployment)
            demand = Demand(
                request_id=demand_id, key=caller.key,
                least=bound_cost(deployment, prompt_bound, request.n if wanted else 0),
                most=bound_cost(deployment, prompt_bound, wanted),
                windows=_windows(caller, deployment, prompt_bound + wanted),
                parallel_limit=caller.key.max_parallel_requests,
                lease_s=lease_s, key_version=caller.version)
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
                self._check_access(request.model, deployment.model_name, caller)
        return _Call(request_id, caller, request, deployment, admitted, prompt_bound,
                     started, trace, wanted=wanted)

    async def _answer(self, call: _Call, raw: bytes, path: str) -> Reply | StreamReply:
        """One attempt on `call.deployment`. Raises UpstreamError before anything reached the
        client; from the first stream event on, the relay owns the request."""
        request, trace, wanted = call.request, call.trace, call.wanted
        allowed = self._allowed_output(call, wanted)
        body = self._upstream_body(raw, call, allowed)
        headers = [(b"x-request-id", call.request_id.encode()), *call.admitted.headers]
        if allowed < wanted and request.max_tokens is not None:
            headers.append((b"x-faregate-max-tokens-capped", str(allowed // request.n)
                            .encode()))
        trace.upstream_started = perf_counter()
        d, relayed = call.deployment, False
        self._router.begin(d)
        try:
            if request.stream:
                # Wait for the first event so that an upstream that fails at once gives the
                # caller a real HTTP error status (or a retry) rather than a 200 with an error
                # event.
                blocks = self._upstream.stream(d, path, body)
                first = await anext(blocks, None)
                _check_first_event(d, first)
                trace.first_token_s = perf_counter() - trace.upstream_started
                self._router.succeeded(d, trace.first_token_s)
                relay = self._relay(call, first, blocks)
                # Started, the relay settles (and ends the attempt) in its `finally` however
                # the stream ends.
                relayed = True
                head = await anext(relay, b"")
                return StreamReply(head, relay, headers)
            reply = await self._upstream.send(d, path, body)
            trace.upstream_s = perf_counter() - trace.upstream_started
            self._router.succeeded(d, trace.upstream_s)
        finally:
            if not relayed:
                self._router.end(d)
        await self._settle_reply(call, reply.usage)
        return Reply(reply.body, headers)

    async def _recover(self, call: _Call, raw: bytes, path: str, failure: UpstreamError,
                       authorization: str | None, api_key: str | None
                       ) -> Reply | StreamReply:
        """After a failed first attempt: up to num_retries more on the model's deployments
        (another deployment first; backoff before trying one again), then each fallback model
        the key may use, with as many. One ledger row in the end, whatever happened."""
        attempts, tried = 1, {call.deployment.deployment_id}
        retries = self._router.settings.num_retries
        model = call.deployment.model_name      # the model served (an alias is resolved)
        groups = [model, *(m for m in self._router.fallbacks(model) if call.caller.may_use(m))]
        try:
            for group_index, group in enumerate(groups):
                for retry in range(1, retries + 1) if group_index == 0 else range(retries + 1):
                    if not failure.retryable:
                        break
                    d = self._router.pick(group, tried)
                    if d is None:
                        break               # the model left the table meanwhile
                    if d.deployment_id in tried:
                        await asyncio.sleep(self._router.backoff_s(retry))
                    tried.add(d.deployment_id)
                    attempts += 1
                    try:
                        call = await self._switch(call, d, attempts, authorization, api_key)
                    except RateLimited as exc:
                        if exc.code in _DEPLOYMENT_WINDOWS:
                            attempts -= 1   # no upstream call; another deployment may have room
                            continue
                        break
                    except GatewayError:
                        break               # not affordable or not allowed now: next fallback
                    try:
                        reply = await self._answer(call, raw, path)
                    except UpstreamError as exc:
                        self._router.failed(call.deployment, exc)
                        failure = exc
                        continue
                    reply.headers += [(b"x-faregate-attempts", str(attempts).encode()),
                                      (b"x-faregate-model-group", group.encode())]
                    return reply
                if not failure.retryable:
                    break
        except BaseException:
            await self._finish(call, 0, 0, "failure")       # cancelled while retrying
            raise
        await self._finish(call, 0, 0, "failure")
        failure.headers["x-faregate-attempts"] = str(attempts)
        raise failure

    async def _switch(self, call: _Call, d: Deployment, attempt: int,
                      authorization: str | None, api_key: str | None) -> _Call:
        """`call` moved to deployment `d`: the same admission if `d` has the same terms, else a
        new one on `d`'s terms (a fallback may cost more, or have other limits).

        Re-admitting, rather than reserving for the dearest candidate up front, keeps the common
        case (first attempt answers) as cheap and as permissive as before. The first admission
        is released (settled at 0) before the new one is asked for, so a small budget is not
        blocked by this request's own failed attempt; it leaves `call` holding a no-op
        admission, so that if the new one is refused, the final failure row settles nothing
        twice. The demand id changes per admission: a shared store settles asynchronously.
        """
        if self._same_terms(call, d):
            call.deployment = d
            return call
        await self._admission.settle(call.admitted, 0, 0)
        call.admitted = _released(call.admitted)
        return await self._admit(call.request_id, f"{call.request_id}.{attempt}", call.caller,
                                 call.request, d, authorization, api_key, call.trace,
                                 call.started)

    def _same_terms(self, call: _Call, d: Deployment) -> bool:
        """Would admission decide the same for `d` as it did for the call's deployment?"""
        a = call.deployment
        return (not _is_released(call.admitted) and a.model_name == d.model_name
                and a.input_femtos == d.input_femtos
                and a.output_femtos == d.output_femtos
                and (a.cache_read_femtos, a.cache_write_femtos)
                == (d.cache_read_femtos, d.cache_write_femtos)
                and a.max_output_tokens == d.max_output_tokens
                and a.rpm is None and d.rpm is None and a.tpm is None and d.tpm is None
                and self._bound.tokens(d, call.request) == call.prompt_bound)

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Caller:
        return await self._auth.caller(authorization, api_key)

    async def prompt_bound(self, raw: bytes, authorization: str | None,
                           api_key: str | None, parsed: ParsedRequest | None = None) -> int:
        """The prompt tokens the budget would reserve for chat request `raw` (or `parsed`) on
        the deployment it would be routed to: an upper bound, not a count. Nothing is admitted
        or charged."""
        caller = await self._auth.caller(authorization, api_key)
        request = parse(raw, CallType.CHAT) if parsed is None else parsed
        return self._bound.tokens(self._route(request.model, caller), request)

    def provider(self, model: str, caller: Caller) -> str | None:
        """The provider of every deployment that may serve `model` for `caller` (the model's
        own and its fallbacks'), or None when they differ or there is none. A request in a
        provider's own dialect keeps that provider's extras only if no attempt can reach
        another provider."""
        aliases = caller.key.aliases
        served = aliases.get(model, model) if aliases else model
        providers = {d.provider for name in (served, *self._router.fallbacks(served))
                     for d in self._router.deployments(name)}
        return providers.pop() if len(providers) == 1 else None

    def models(self, caller: Caller) -> bytes:
        """The models the key may ask for: the gateway's, then the key's own aliases."""
        served = self._router.names()
        names = [name for name in served if caller.may_use(name)]
        names += [alias for alias, target in caller.key.aliases.items()
                  if target in served and alias not in names and caller.may_use(target)]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "faregate"}
                for name in names]
        return orjson.dumps({"object": "list", "data": data})

    def _route(self, model: str, caller: Caller) -> Deployment:
        """A deployment for `model` as the caller named it: a key's alias is resolved first,
        so that routing, budgets, limits and the ledger all see the model actually served."""
        aliases = caller.key.aliases
        served = aliases.get(model, model) if aliases else model
        deployment = self._router.pick(served)
        if deployment is None:
            shown = model if len(model) <= 200 else model[:200] + "..."    # don't echo 1 MB
            via = f" (your key's alias for model {served}, which is gone)" \
                if served != model else ""
            raise InvalidRequest(f"Invalid model name passed in model={shown}{via}. Call "
                                 "/v1/models to see the models your key may use",
                                 param="model", code="model_not_found")
        self._check_access(model, served, caller)
        return deployment

    @staticmethod
    def _check_access(asked: str, served: str, caller: Caller) -> None:
        """As LiteLLM decides: an alias is resolved first and the key must be allowed to use
        the model it points at; aliases never widen what a key may use."""
        if not caller.may_use(served):
            raise ModelAccessDenied(f"Key {caller.key.key_name} may not use model {asked}; it "
                                    f"may use: {', '.join(caller.key.models)}",
                                    code="model_access_denied")

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
        prompt_cost = bound_cost(d, call.prompt_bound, 0)
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

    async def _settle_reply(self, call: _Call, usage: object) -> None:
        reported = self._reported(call, usage)
        if reported is None:
            log.warning("upstream %s answered without a readable usage; charging the bound",
                        call.deployment.shown_base)
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
        call.cache_read, call.cache_write = _cache_tokens(usage)
        return prompt, completion

    async def _relay(self, call: _Call, first: bytes | None,
                     blocks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """Pass a stream through, read its usage, and settle whatever way it ends."""
        meter = _StreamMeter(call.request.usage_requested,
                             anthropic_events=call.request.call_type is CallType.MESSAGES)
        try:
            if first is not None:
                yield meter.pass_on(first)
                async for block in blocks:
                    yield meter.pass_on(block)
        except GatewayError as exc:
            if isinstance(exc, UpstreamError):
                self._router.failed(call.deployment, exc)     # counts towards its cooldown
            yield b"data: " + exc.body() + b"\n\n"
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            meter.broken = True
            err = UpstreamError(f"The upstream sent a malformed stream event: {exc}")
            yield b"data: " + err.body() + b"\n\n"
        finally:
            self._router.end(call.deployment)
            await blocks.aclose()     # closes the upstream response: frees its GPU slot
            trace = call.trace
            if trace.upstream_started is not None:
                trace.upstream_s = perf_counter() - trace.upstream_started
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
        spend = cost(call.deployment, prompt, completion, call.cache_read, call.cache_write)
        d = call.deployment
        self._ledger.record(SpendRow(
            request_id=call.request_id, api_key=call.caller.key.token,
            key_alias=call.caller.key.key_alias, model=d.model_name,
            upstream=f"{d.shown_base}#{d.upstream_model}", call_type=call.request.call_type.value,
            prompt_tokens=prompt, completion_tokens=completion, spend_nanos=spend,
            start_time=call.started, end_time=self._now(), status=status))
        trace = call.trace
        trace.prompt_tokens, trace.completion_tokens = prompt, completion
        trace.spend_nanos, trace.outcome = spend, status
        await self._admission.settle(call.admitted, spend, prompt + completion)


def _cache_tokens(usage: object) -> tuple[int, int]:
    """(read, written) prompt-cache tokens: Anthropic's counts, or OpenAI's cached_tokens."""
    try:
        read = usage.get("cache_read_input_tokens")                 # type: ignore[attr-defined]
        if read is None:
            read = (usage.get("prompt_tokens_details")              # type: ignore[attr-defined]
                    or {}).get("cached_tokens")
        written = usage.get("cache_creation_input_tokens")          # type: ignore[attr-defined]
        return int(read or 0), int(written or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0


def _check_first_event(d: Deployment, first: bytes | None) -> None:
    """Raise a retryable UpstreamError if a stream fails at its first event: nothing has been
    sent to the client yet, so another attempt is still possible. One small parse per stream."""
    problem = "ended the stream before its first event" if first is None else None
    if first is not None and first.startswith(b"data: {"):
        end = first.find(b"\n\n")
        try:
            event = orjson.loads(first[6:end if end >= 0 else None])
        except orjson.JSONDecodeError:
            problem = "sent a malformed first stream event"
        else:
            if isinstance(event, dict) and event.get("error") and not event.get("choices"):
                problem = f"sent an error as its first stream event: {str(event['error'])[:300]}"
    if problem is not None:
        raise UpstreamError(f"The upstream for model '{d.model_name}' {problem}", status=502,
                            code="upstream_bad_stream", retryable=True)


def _released(admitted: Admitted) -> Admitted:
    """A stand-in for an admission already settled: settling it reserves and frees nothing
    (an id no store holds, no windows, no parallel slot, cost 0)."""
    demand = replace(admitted.demand, request_id=admitted.demand.request_id + ".released",
                     windows=(), parallel_limit=None)
    return Admitted(demand, 0, admitted.second)


def _is_released(admitted: Admitted) -> bool:
    """Settled by `_switch` before a refused re-admission: the call holds nothing any more."""
    return admitted.demand.request_id.endswith(".released")


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

    __slots__ = ("_produces", "_want_usage", "broken", "done", "produced", "usage")

    def __init__(self, want_usage: bool, anthropic_events: bool = False) -> None:
        self._want_usage = want_usage
        # What marks one produced chunk: an OpenAI chunk, or (a /v1/messages pass-through)
        # Anthropic's content_block_delta; message_start, pings and the like produce nothing.
        self._produces = b"event: content_block_delta" if anthropic_events else b"data: {"
        self.usage: dict[str, int] | None = None
        self.produced = 0
        self.done = False
        self.broken = False

    def pass_on(self, block: bytes) -> bytes:
        if _DONE in block:
            self.done = True
        if b'"usage"' not in block or (b'"usage":{' not in block
                                        and b'"usage": {' not in block):
            self.produced += block.count(self._produces)
            return block
        out = []
        for event in block.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                if event:
                    self.produced += event.startswith(self._produces)
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

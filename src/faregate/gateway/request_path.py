"""THE request path, top-down: route -> bound -> admit -> upstream -> settle -> ledger.

The edge authenticates and hands over a `Caller`; no web framework here, so the API, the CLI
and the tests share this path. Retries and fallbacks are retries.py's policy, a stream's
metering is stream_meter.py's; admission (admission/) makes the one budget-and-limits decision.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from datetime import datetime
from time import perf_counter

import orjson

from faregate.admission.demand import (
    Admission,
    Payer,
    StaleKey,
    demand_for,
    output_allowed,
    same_terms,
)
from faregate.admission.payers import PayersByKey, end_user_payer
from faregate.catalog.routing import Router
from faregate.config import Deployment, is_wildcard
from faregate.errors import (
    GatewayError,
    InvalidRequest,
    ModelAccessDenied,
    ServiceUnavailable,
    UpstreamError,
)
from faregate.gateway.call import Ask, Call
from faregate.gateway.replies import Reply, StreamReply
from faregate.gateway.retries import Retries
from faregate.gateway.stream_meter import StreamMeter, check_first_event
from faregate.gateway.usage import read_usage
from faregate.keys.auth import SPECIAL_MODEL_NAMES, Authenticator, Caller
from faregate.keys.end_users import EndUsers
from faregate.observe.trace import RequestTrace
from faregate.providers.base import UpstreamClient
from faregate.records import EndUserRecord, SpendRow
from faregate.spend.checkpoints import INTERRUPTED, OpenStream, StreamCheckpoints
from faregate.spend.ledger import LedgerWriter
from faregate.spend.pricing import PromptBound, cost
from faregate.spend.row_error import row_error
from faregate.wire.openai_request import CallType, ParsedRequest, end_user_id, parse

log = logging.getLogger("faregate.gateway")

UPSTREAM_PATHS = {CallType.CHAT: "/chat/completions", CallType.COMPLETION: "/completions",
                  CallType.EMBEDDING: "/embeddings", CallType.MESSAGES: "/messages"}
# OpenAI's legacy completions produce 16 tokens when max_tokens is not given.
COMPLETION_DEFAULT_MAX_TOKENS = 16
_ADMISSION_ATTEMPTS = 3
MAX_END_USER_PAYERS = 100_000


class Gateway:
    def __init__(self, router: Router, auth: Authenticator,
                 admission: Admission, bound: PromptBound, upstream: UpstreamClient,
                 ledger: LedgerWriter, checkpoints: StreamCheckpoints,
                 now: Callable[[], datetime], end_users: EndUsers | None = None) -> None:
        """`end_users`: where a request's end user is read (created on first use); without
        it an end user is only named in the request's row."""
        self._router = router
        self._end_users = end_users
        self._auth = auth
        self._admission = admission
        self._bound = bound
        self._upstream = upstream
        self._ledger = ledger
        self._checkpoints = checkpoints
        self._now = now
        self._retries = Retries(router, self)
        self._payers = PayersByKey()
        # An end user's Payer, built once per loaded record (the cache hands the same object
        # until it reads the end user again), not once per request.
        self._end_user_payers: dict[str, tuple[EndUserRecord, str, Payer]] = {}
        # Unique across processes and restarts (the ledger is idempotent by request id), and
        # cheaper than uuid4: a random per-process prefix and a counter.
        prefix = os.urandom(8).hex()
        counter = itertools.count(1)
        self.new_request_id: Callable[[], str] = lambda: f"{prefix}{next(counter):016x}"

    async def handle(self, call_type: CallType, raw: bytes, caller: Caller,
                     trace: RequestTrace, parsed: ParsedRequest | None = None,
                     end_user: str | None = None) -> Reply | StreamReply:
        """Serve one request of an authenticated `caller`; `trace` brings its request id and
        takes what it did. `parsed`: the request already read by the edge (another dialect).
        `end_user`: the end user a header names (before the body's `user`)."""
        trace.key_alias = caller.key.key_alias or ""
        request = parse(raw, call_type) if parsed is None else parsed
        if end_user is not None:
            request.end_user = end_user_id(end_user, "x-litellm-end-user-id")
        if call_type is CallType.EMBEDDING and request.stream:
            raise InvalidRequest("Embeddings cannot be streamed", param="stream")
        deployment = self._route(request.model, caller)
        trace.model = deployment.group     # a configured name (a wildcard's pattern): bounded
        path = UPSTREAM_PATHS[call_type]
        # A body this provider cannot take is refused before anything is reserved or recorded.
        self._upstream.check(deployment, path, request.body)
        ask = Ask(trace.request_id, request, trace, self._now(),
                  await self._end_user(request.end_user))
        call = await self._retries.admit_with_room(ask, caller, deployment)
        try:
            return await self.answer(call, raw, path)
        except UpstreamError as exc:
            self._router.failed(call.deployment, exc)
            failure = exc
        except BaseException as exc:
            await self.finish(call, 0, 0, "failure", error=exc)
            raise
        return await self._retries.recover(call, raw, path, failure)

    async def admit(self, ask: Ask, caller: Caller, d: Deployment, demand_id: str) -> Call:
        """Reserve budget and limits for `ask` on `d`'s terms: one decision, re-asked with the
        key read again if another replica changed it meanwhile."""
        for attempt in range(_ADMISSION_ATTEMPTS):
            prompt_bound, wanted = self._bounds(ask.request, d)
            demand = demand_for(demand_id, caller.key, caller.version, d, prompt_bound, wanted,
                                ask.request.n, self._payers_of(caller, ask))
            try:
                admitted = await self._admission.admit(demand)
                return Call(ask, caller, d, admitted, prompt_bound, wanted)
            except StaleKey as stale:
                # It may now be blocked, deleted, or have new limits: the key and everything
                # above it are read again (the key's entry holds them), an end user too.
                if attempt + 1 == _ADMISSION_ATTEMPTS:
                    raise ServiceUnavailable("The key is being changed; retry",
                                             code="key_changing") from None
                if ask.end_user is not None and stale.args == (ask.end_user.scope,):
                    ask = replace(ask, end_user=await self._end_user(ask.request.end_user,
                                                                     fresh=True))
                else:
                    caller = await self._auth.reload(caller)
                self._check_access(ask.request.model, d.model_name, caller)
        raise AssertionError("unreachable")

    async def move(self, call: Call, d: Deployment, attempt: int) -> Call:
        """`call` moved to deployment `d`: the same admission if admission would decide the
        same for `d`, else a new one on `d`'s terms (a fallback may cost more, or have other
        limits). Re-admitting, rather than reserving for the dearest candidate up front, keeps
        the common case (first attempt answers) cheap and permissive. The first admission is
        settled at 0 before the new one is asked for, so that a small budget is not blocked by
        this request's own failed attempt; the demand id changes per admission (a shared store
        settles asynchronously)."""
        prompt_bound, wanted = self._bounds(call.request, d)
        if (prompt_bound, wanted) == (call.prompt_bound, call.wanted) and same_terms(
                call.admitted, demand_for(call.admitted.demand.request_id, call.caller.key,
                                          call.caller.version, d, prompt_bound, wanted,
                                          call.request.n,
                                          self._payers_of(call.caller, call.ask))):
            call.deployment = d
            return call
        await self._admission.settle(call.admitted, 0, 0)
        return await self.admit(call.ask, call.caller, d, f"{call.ask.request_id}.{attempt}")

    async def answer(self, call: Call, raw: bytes, path: str) -> Reply | StreamReply:
        """One attempt on `call.deployment`. Raises UpstreamError before anything reached the
        client; from the first stream event on, the relay owns the request."""
        request, trace, wanted = call.request, call.ask.trace, call.wanted
        allowed = output_allowed(call.admitted, call.deployment, call.prompt_bound, wanted,
                                 request.n)
        body = self._upstream_body(raw, call, allowed)
        headers = [(b"x-request-id", call.ask.request_id.encode()), *call.admitted.headers]
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
                check_first_event(d, first)
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

    async def finish(self, call: Call, prompt: int, completion: int, status: str,
                     stream: OpenStream | None = None,
                     error: BaseException | None = None) -> None:
        """Settle once: the ledger row and the admission's real cost. A relayed `stream`'s
        checkpoints end with its row. `error`: what the request ended with, if it did not
        succeed (its row keeps a short, storable, redacted text of it)."""
        if call.settled:
            if stream is not None:
                self._checkpoints.closed(stream)
            return
        call.settled = True
        if error is not None:
            call.error = row_error(error, _secrets(call.deployment))
        spend = cost(call.deployment, prompt, completion, call.cache_read, call.cache_write)
        self._ledger.record(self._row(call, prompt, completion, spend, status))
        if stream is not None:
            # Right after the row, no await between: a crash in between leaves both on disk,
            # and the ledger writes the dead process's journal (this row) first.
            self._checkpoints.closed(stream)
        trace = call.ask.trace
        trace.prompt_tokens, trace.completion_tokens = prompt, completion
        trace.spend_nanos, trace.outcome = spend, status
        trace.attempts, trace.error = call.attempts, call.error
        await self._admission.settle(call.admitted, spend, prompt + completion)

    def _payers_of(self, caller: Caller, ask: Ask) -> tuple[Payer, ...]:
        return self._payers.of(caller.key, caller.version, caller.payers, ask.end_user,
                               caller.payer_versions)

    async def _end_user(self, end_user: str | None, fresh: bool = False) -> Payer | None:
        """The end user's payer (created on first use), or a 400 if it is blocked; None for
        no end user, or no store of them."""
        if end_user is None or self._end_users is None:
            return None
        if fresh:
            self._end_users.forget(end_user)
        record, version = await self._end_users.get(end_user)
        if record.blocked:
            raise InvalidRequest(f"End user {end_user} is blocked from making LLM API calls. "
                                 "An admin can lift it with /customer/unblock",
                                 param="user", code="end_user_blocked")
        known = self._end_user_payers.get(end_user)
        if known is not None and known[0] is record and known[1] == version:
            return known[2]
        payer = end_user_payer(record, version)
        if len(self._end_user_payers) >= MAX_END_USER_PAYERS:
            self._end_user_payers.clear()        # a bound on memory, as PayersByKey's
        self._end_user_payers[end_user] = (record, version, payer)
        return payer

    def _row(self, call: Call, prompt: int, completion: int, spend: int,
             status: str) -> SpendRow:
        d, key, above = call.deployment, call.caller.key, call.caller.payers
        # The organization that pays: the team's; a key without a team, its own.
        if above is not None and above.team is not None:
            org = above.team.organization_id
        else:
            org = key.organization_id if key.team_id is None else None
        return SpendRow(
            request_id=call.ask.request_id, api_key=key.token,
            key_alias=key.key_alias, model=d.model_name,
            upstream=f"{d.shown_base}#{d.upstream_model}", call_type=call.request.call_type.value,
            prompt_tokens=prompt, completion_tokens=completion, spend_nanos=spend,
            start_time=call.ask.started, end_time=self._now(), status=status,
            user_id=key.user_id, team_id=key.team_id, organization_id=org,
            end_user=call.request.end_user, attempts=call.attempts, error=call.error)

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Caller:
        return await self._auth.caller(authorization, api_key)

    def key_spend(self, caller: Caller) -> int:
        """The key's spend this budget period as admission knows it (for the answer's headers;
        no store round trip)."""
        return self._admission.period_spend(caller.key)

    async def prompt_bound(self, raw: bytes, caller: Caller,
                           parsed: ParsedRequest | None = None) -> int:
        """The prompt tokens the budget would reserve for chat request `raw` (or `parsed`) on
        the deployment it would be routed to: an upper bound, not a count. Nothing is admitted
        or charged."""
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

    def models(self, caller: Caller, wildcard_routes: bool = False) -> bytes:
        """The models the key may ask for: the gateway's, the names its `models` lists that a
        wildcard serves, then its own aliases. A wildcard's pattern itself ("openai/*") only
        with `wildcard_routes` (LiteLLM's return_wildcard_routes): faregate knows no
        provider's catalogue to expand it into."""
        router = self._router
        names = [name for name in router.names() if caller.may_use(name, router.groups(name))]
        groups = router.access_groups()
        names += [name for name in caller.key.models if name not in names
                  and not is_wildcard(name) and name not in SPECIAL_MODEL_NAMES
                  and name not in groups
                  and router.deployments(name) and caller.may_use(name, router.groups(name))]
        if wildcard_routes:
            names += [p for p in router.patterns() if caller.may_use(p, router.groups(p))]
        names += [alias for alias, target in caller.key.aliases.items()
                  if router.deployments(target) and alias not in names
                  and caller.may_use(target, router.groups(target))]
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

    def _check_access(self, asked: str, served: str, caller: Caller) -> None:
        """As LiteLLM decides: an alias is resolved first and the key must be allowed to use
        the model it points at; aliases never widen what a key may use. Access groups are
        those of the entry that serves the model."""
        if not caller.may_use(served, self._router.groups(served)):
            team = caller.payers.team if caller.payers is not None else None
            if team is not None and caller.team_models and replace(
                    caller, team_models=None).may_use(served, self._router.groups(served)):
                raise ModelAccessDenied(
                    f"Team {team.team_id} may not use model {asked}; it may use: "
                    f"{', '.join(caller.team_models)}", code="team_model_access_denied")
            raise ModelAccessDenied(f"Key {caller.key.key_name} may not use model {asked}; it "
                                    f"may use: {', '.join(caller.key.models)}",
                                    code="model_access_denied")

    def _bounds(self, request: ParsedRequest, d: Deployment) -> tuple[int, int]:
        """(prompt bound, output tokens wanted) of `request` on `d`."""
        return self._bound.tokens(d, request), self._wanted_output(request, d)

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

    def _upstream_body(self, raw: bytes, call: Call, allowed: int) -> bytes:
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


    async def _settle_reply(self, call: Call, usage: object) -> None:
        reported = self._reported(call, usage)
        if reported is None:
            log.warning("upstream %s answered without a readable usage; charging the bound",
                        call.deployment.shown_base)
            reported = call.prompt_bound, self._wanted_output(call.request, call.deployment)
        await self.finish(call, *reported, "success")

    def _reported(self, call: Call, usage: object) -> tuple[int, int] | None:
        """(prompt, completion) tokens from an upstream's usage, or None if unreadable; a
        reported prompt teaches the prompt bound its template overhead."""
        read = read_usage(usage)
        if read is None:
            return None
        if read.prompt:
            self._bound.observe(call.deployment, call.request, read.prompt)
        call.cache_read, call.cache_write = read.cache_read, read.cache_write
        return read.prompt, read.completion

    async def _relay(self, call: Call, first: bytes | None,
                     blocks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        """Pass a stream through, read its usage, and settle whatever way it ends. What it has
        delivered is checkpointed on the way (spend/checkpoints.py), so that a crash before
        its row leaves it charged."""
        meter = StreamMeter(call.request.usage_requested,
                            anthropic_events=call.request.call_type is CallType.MESSAGES)
        # Charged as if cut now: the prompt at its bound, the chunks delivered so far.
        stream = self._checkpoints.open(self._row(call, call.prompt_bound, 0, 0, INTERRUPTED),
                                        call.deployment)
        failure: GatewayError | None = None
        try:
            if first is not None:
                yield meter.pass_on(first)
                # Back here, the edge has handed the previous block to the client's socket.
                stream.reached(meter.produced)
                async for block in blocks:
                    yield meter.pass_on(block)
                    stream.reached(meter.produced)
        except GatewayError as exc:
            failure = exc
            if isinstance(exc, UpstreamError):
                self._router.failed(call.deployment, exc)     # counts towards its cooldown
            yield b"data: " + exc.body() + b"\n\n"
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            meter.broken = True
            failure = UpstreamError(f"The upstream sent a malformed stream event: {exc}")
            yield b"data: " + failure.body() + b"\n\n"
        finally:
            self._router.end(call.deployment)
            await blocks.aclose()     # closes the upstream response: frees its GPU slot
            trace = call.ask.trace
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
            await self.finish(call, prompt, completion, status, stream,
                              failure if status != "success" else None)


def _secrets(d: Deployment) -> tuple[str, ...]:
    """What an upstream's error message must not bring into the ledger: the deployment's key,
    and its api_base where that carries credentials (user:password@, ?key=)."""
    key = (d.api_key.reveal(),) if d.api_key is not None else ()
    return key + ((d.api_base,) if d.api_base != d.shown_base else ())

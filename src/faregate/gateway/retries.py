"""Retries and fallbacks: which deployment a request tries next, and when it gives up.

The policy only; each attempt's admission, upstream call and settlement are the request path's
(`Attempts`, implemented by `Gateway`). A request keeps one admission and writes one ledger row
however many attempts it takes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from faregate.catalog.routing import Router
from faregate.config import Deployment
from faregate.errors import GatewayError, RateLimited, UpstreamError
from faregate.gateway.call import Ask, Call
from faregate.gateway.replies import Reply, StreamReply
from faregate.keys.auth import Caller

# Admission's refusal codes for a deployment's own windows (litellm_params rpm / tpm).
DEPLOYMENT_WINDOWS = ("rpm", "tpm")


class Attempts(Protocol):
    """What the retry policy asks of the request path."""

    async def admit(self, ask: Ask, caller: Caller, d: Deployment, demand_id: str) -> Call: ...

    async def move(self, call: Call, d: Deployment, attempt: int) -> Call: ...

    async def answer(self, call: Call, raw: bytes, path: str) -> Reply | StreamReply: ...

    async def finish(self, call: Call, prompt: int, completion: int, status: str,
                     *, error: BaseException | None = None) -> None: ...


class Retries:
    def __init__(self, router: Router, attempts: Attempts) -> None:
        self._router = router
        self._attempts = attempts

    async def admit_with_room(self, ask: Ask, caller: Caller, deployment: Deployment) -> Call:
        """Admit on `deployment`, or, if its own rpm/tpm window is full, on another deployment
        of the model that has room: a full deployment is no reason to refuse the request."""
        tried = set[str]()
        while True:
            try:
                return await self._attempts.admit(ask, caller, deployment, ask.request_id)
            except RateLimited as exc:
                if exc.code not in DEPLOYMENT_WINDOWS:
                    raise
                tried.add(deployment.deployment_id)
                other = self._router.pick(deployment.model_name, tried)
                if other is None or other.deployment_id in tried:
                    raise           # every deployment is full: the caller gets the 429
                deployment = other

    async def recover(self, call: Call, raw: bytes, path: str, failure: UpstreamError
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
                    try:
                        call = await self._attempts.move(call, d, attempts + 1)
                    except RateLimited as exc:
                        if exc.code in DEPLOYMENT_WINDOWS:
                            continue        # no upstream call; another deployment may have room
                        break
                    except GatewayError:
                        break               # not affordable or not allowed now: no call made
                    attempts += 1           # counted once it goes upstream, as its row counts
                    call.attempts = attempts
                    try:
                        reply = await self._attempts.answer(call, raw, path)
                    except UpstreamError as exc:
                        self._router.failed(call.deployment, exc)
                        failure = exc
                        continue
                    reply.headers += [(b"x-faregate-attempts", str(attempts).encode()),
                                      (b"x-faregate-model-group", group.encode())]
                    return reply
                if not failure.retryable:
                    break
        except BaseException as exc:
            await self._attempts.finish(call, 0, 0, "failure", error=exc)  # cancelled meanwhile
            raise
        await self._attempts.finish(call, 0, 0, "failure", error=failure)
        failure.headers["x-faregate-attempts"] = str(attempts)
        raise failure

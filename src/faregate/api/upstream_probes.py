"""GET /health's probes: one minimal request to every deployment, as LiteLLM's /health makes.

Each deployment gets one call of at most one output token: a chat completion with the message
"ping" (a text completion with the prompt "ping" for text-completion-openai/ models, translated
to a Messages call for Anthropic ones). A wildcard entry is asked for its
model_info.health_check_model and is skipped without one (no model to ask for). Probes run at
most PROBE_CONCURRENCY at once, each bounded by PROBE_TIMEOUT_S (or the deployment's timeout,
if shorter), and one round at a time: a second /health waits for the round under way. Nothing
is charged to any key or recorded in the ledger, and the router's cooldowns are not touched: a
probe is an operator's question, not traffic. The upstream does bill it (a few prompt tokens and
one output token per deployment, per call of /health).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from faregate.config import TEXT_COMPLETION_PROVIDER, Deployment
from faregate.errors import GatewayError
from faregate.providers.base import UpstreamClient

PROBE_TIMEOUT_S = 15.0
PROBE_CONCURRENCY = 8
PROBE_TEXT = "ping"


@dataclass(frozen=True)
class ProbeResult:
    deployment: Deployment
    error: str | None           # None: it answered
    skipped: str | None = None  # why it was not asked (a wildcard without health_check_model)


class UpstreamProbes:
    def __init__(self, deployments: Callable[[], Iterable[Deployment]],
                 upstream: UpstreamClient) -> None:
        self._deployments = deployments
        self._upstream = upstream
        self._round = asyncio.Lock()

    async def run(self) -> dict[str, Any]:
        """Probe every deployment; LiteLLM's /health shape (plus the ones skipped)."""
        async with self._round:
            limit = asyncio.Semaphore(PROBE_CONCURRENCY)
            results = await asyncio.gather(*(self._probe(d, limit)
                                             for d in self._deployments()))
        healthy = [_shown(r) for r in results if r.error is None and r.skipped is None]
        unhealthy = [_shown(r) for r in results if r.error is not None]
        skipped = [_shown(r) for r in results if r.skipped is not None]
        return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
                "healthy_count": len(healthy), "unhealthy_count": len(unhealthy),
                "skipped_endpoints": skipped}

    async def _probe(self, d: Deployment, limit: asyncio.Semaphore) -> ProbeResult:
        if d.is_wildcard:
            asked = d.serving(d.health_check_model) if d.health_check_model else None
            if asked is None:
                return ProbeResult(d, None, "a wildcard deployment is probed only with "
                                   "model_info.health_check_model (a name its pattern matches)")
            target = asked
        else:
            target = d
        if d.provider == TEXT_COMPLETION_PROVIDER:
            path, body = "/completions", {"model": target.upstream_model, "prompt": PROBE_TEXT,
                                          "max_tokens": 1}
        else:
            path, body = "/chat/completions", {
                "model": target.upstream_model, "max_tokens": 1,
                "messages": [{"role": "user", "content": PROBE_TEXT}]}
        async with limit:
            try:
                await asyncio.wait_for(self._upstream.send(target, path, orjson.dumps(body)),
                                       min(PROBE_TIMEOUT_S, d.timeout_s))
            except TimeoutError:
                return ProbeResult(d, f"no answer within {min(PROBE_TIMEOUT_S, d.timeout_s):g}s")
            except GatewayError as exc:
                return ProbeResult(d, exc.message.replace(d.api_base, d.shown_base)[:500])
        return ProbeResult(d, None)


def _shown(r: ProbeResult) -> dict[str, Any]:
    """A deployment as /health shows it: never its credentials."""
    d = r.deployment
    out: dict[str, Any] = {"model": f"{d.provider}/{d.upstream_model}",
                           "model_name": d.model_name, "api_base": d.shown_base,
                           "deployment_id": d.deployment_id}
    if d.health_check_model:
        out["health_check_model"] = d.health_check_model
    if r.error is not None:
        out["error"] = r.error
    if r.skipped is not None:
        out["reason"] = r.skipped
    return out

"""Prices and the prompt bound: what a request may cost before it runs, and what it did cost.

The prompt bound is text bytes + a per-message overhead + a per-model overhead (chat templates,
default system prompts). Upstreams report the real prompt tokens; when they show a larger
template overhead than configured, the bound learns it (it only ever grows), so budgets hold
even for a model whose template nobody measured.

A prompt the deployment has already counted is bound by that count: the same input on the same
deployment is the same number of tokens. The byte bound is loose (English runs ~4 bytes a
token, and the default overheads are a guess), and on a small budget that slack is what the
last requests cannot spend: a repeated prompt no longer pays for it (docs/budgets.md).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import orjson

from faregate.config import Deployment
from faregate.money import token_cost
from faregate.wire.openai_request import CallType, ParsedRequest

log = logging.getLogger("faregate.pricing")

# A vision model may spend thousands of tokens on an image whatever its URL's length.
IMAGE_TOKENS = 4096
# Prompts whose upstream count is remembered (least recently used go first), and the largest
# prompt looked up (its key costs ~0.7 us per KB of body, twice per request).
COUNTED_PROMPTS = 4096
COUNTED_MAX_BYTES = 32 * 1024
_KEY_AS_IS_BYTES = 256
# Body fields that do not reach the prompt's tokens (the gateway itself rewrites some).
_NOT_PROMPT = frozenset({
    "model", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n",
    "temperature", "top_p", "top_k", "seed", "stop", "stop_sequences", "user", "metadata",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs"})


def cost(deployment: Deployment, prompt_tokens: int, completion_tokens: int,
         cache_read_tokens: int = 0, cache_write_tokens: int = 0) -> int:
    """Nano-dollars for the tokens an upstream reports. `prompt_tokens` counts every input
    token; of those, the cache reads and writes are priced at their own prices (the input
    price when the deployment sets none)."""
    d = deployment
    read = min(max(cache_read_tokens, 0), prompt_tokens)
    written = min(max(cache_write_tokens, 0), prompt_tokens - read)
    return (token_cost(prompt_tokens - read - written, d.input_femtos)
            + token_cost(read, _or_input(d.cache_read_femtos, d))
            + token_cost(written, _or_input(d.cache_write_femtos, d))
            + token_cost(completion_tokens, d.output_femtos))


def bound_cost(deployment: Deployment, prompt_tokens: int, completion_tokens: int) -> int:
    """The most `prompt_tokens` + `completion_tokens` can cost: a budget reservation. Any
    prompt token may turn out to be a cache write, so the prompt is priced at the dearest of
    the input, cache read and cache write prices."""
    d = deployment
    dearest = max(d.input_femtos, _or_input(d.cache_read_femtos, d),
                  _or_input(d.cache_write_femtos, d))
    return token_cost(prompt_tokens, dearest) + token_cost(completion_tokens, d.output_femtos)


def _or_input(price: int | None, d: Deployment) -> int:
    return d.input_femtos if price is None else price


class PromptBound:
    def __init__(self) -> None:
        # deployment_id -> template overhead seen. By id, not id(deployment): the catalog makes
        # new Deployment objects on every change, and a freed object's id() is reused. What is
        # learned survives a refresh; it only ever raises the bound, so it errs on the safe side.
        self._learned: dict[str, int] = {}
        # (deployment, call type, body length, body hash) -> prompt tokens the upstream counted
        self._counted_prompts: OrderedDict[tuple[str, CallType, bytes], int] = OrderedDict()

    def _counted(self, deployment: Deployment, request: ParsedRequest) -> int:
        return (request.text_bytes + request.messages * deployment.per_message_overhead_tokens
                + request.images * IMAGE_TOKENS)

    def overhead(self, deployment: Deployment) -> int:
        return max(deployment.prompt_overhead_tokens,
                   self._learned.get(deployment.deployment_id, 0))

    def tokens(self, deployment: Deployment, request: ParsedRequest) -> int:
        """An upper bound on the prompt tokens the upstream will count for this request: its
        own count when it has counted this very prompt, else the byte bound."""
        bound = self._counted(deployment, request) + self.overhead(deployment)
        key = _prompt_key(deployment, request)
        if key is not None:
            seen = self._counted_prompts.get(key)
            if seen is not None:
                self._counted_prompts.move_to_end(key)
                return min(seen, bound)
        return bound

    def observe(self, deployment: Deployment, request: ParsedRequest, prompt_tokens: int) -> None:
        key = _prompt_key(deployment, request)
        if key is not None:
            # The largest count seen: a prompt never binds below what it was charged.
            self._counted_prompts[key] = max(prompt_tokens, self._counted_prompts.get(key, 0))
            self._counted_prompts.move_to_end(key)
            if len(self._counted_prompts) > COUNTED_PROMPTS:
                self._counted_prompts.popitem(last=False)
        self._learn_overhead(deployment, request, prompt_tokens)

    def _learn_overhead(self, deployment: Deployment, request: ParsedRequest,
                        prompt_tokens: int) -> None:
        excess = prompt_tokens - self._counted(deployment, request)
        if excess > self.overhead(deployment):
            log.warning("model %s: upstream counted %d prompt tokens, %d more than the bound's "
                        "overhead of %d; raising the overhead (set model_info."
                        "prompt_overhead_tokens to at least %d)", deployment.model_name,
                        prompt_tokens, excess - self.overhead(deployment),
                        self.overhead(deployment), excess)
            self._learned[deployment.deployment_id] = excess


def _prompt_key(deployment: Deployment, request: ParsedRequest
                ) -> tuple[str, CallType, bytes] | None:
    """What identifies a prompt: the body less the fields that do not reach it, on one
    deployment; by SHA-256, so that no client can make a dear prompt pass for a cheap one."""
    if request.text_bytes > COUNTED_MAX_BYTES:
        return None
    try:
        text = orjson.dumps({k: v for k, v in request.body.items() if k not in _NOT_PROMPT})
    except orjson.JSONEncodeError:
        return None
    # A short body is its own key (exact, and cheaper than hashing it).
    digest = text if len(text) <= _KEY_AS_IS_BYTES else hashlib.sha256(text).digest()
    return deployment.deployment_id, request.call_type, digest

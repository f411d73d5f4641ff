"""Prices and the prompt bound: what a request may cost before it runs, and what it did cost.

The prompt bound is text bytes + a per-message overhead + a per-model overhead (chat templates,
default system prompts). Upstreams report the real prompt tokens; when they show a larger
template overhead than configured, the bound learns it (it only ever grows), so budgets hold
even for a model whose template nobody measured.
"""

from __future__ import annotations

import logging

from faregate.config import Deployment
from faregate.money import token_cost
from faregate.wire.openai_request import ParsedRequest

log = logging.getLogger("faregate.pricing")

# A vision model may spend thousands of tokens on an image whatever its URL's length.
IMAGE_TOKENS = 4096


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

    def _counted(self, deployment: Deployment, request: ParsedRequest) -> int:
        return (request.text_bytes + request.messages * deployment.per_message_overhead_tokens
                + request.images * IMAGE_TOKENS)

    def overhead(self, deployment: Deployment) -> int:
        return max(deployment.prompt_overhead_tokens,
                   self._learned.get(deployment.deployment_id, 0))

    def tokens(self, deployment: Deployment, request: ParsedRequest) -> int:
        """An upper bound on the prompt tokens the upstream will count for this request."""
        return self._counted(deployment, request) + self.overhead(deployment)

    def observe(self, deployment: Deployment, request: ParsedRequest, prompt_tokens: int) -> None:
        excess = prompt_tokens - self._counted(deployment, request)
        if excess > self.overhead(deployment):
            log.warning("model %s: upstream counted %d prompt tokens, %d more than the bound's "
                        "overhead of %d; raising the overhead (set model_info."
                        "prompt_overhead_tokens to at least %d)", deployment.model_name,
                        prompt_tokens, excess - self.overhead(deployment),
                        self.overhead(deployment), excess)
            self._learned[deployment.deployment_id] = excess

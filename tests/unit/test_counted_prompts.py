"""The prompt bound of a prompt the deployment has already counted is that count (never above
the byte bound): what lets a small budget spend its last requests (issue 13, docs/budgets.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from faregate.config import Deployment
from faregate.money import price_to_femtos
from faregate.spend import pricing
from faregate.spend.pricing import PromptBound
from faregate.wire.openai_request import CallType, ParsedRequest, parse


def deployment(**changes: Any) -> Deployment:
    changes.setdefault("deployment_id", f"{changes.get('model_name', 'm')}#0")
    base = Deployment(
        model_name="m", provider="openai", upstream_model="up", api_base="http://up/v1",
        api_key=None, input_femtos=price_to_femtos("0.000001"),
        output_femtos=price_to_femtos("0.000002"), max_output_tokens=1000,
        prompt_overhead_tokens=64, per_message_overhead_tokens=8, timeout_s=60.0)
    return replace(base, **changes)


def request(content: str = "ping", **fields: Any) -> ParsedRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    return parse(orjson.dumps(body), CallType.CHAT)


def test_a_counted_prompt_is_bound_by_its_count() -> None:
    bound, d = PromptBound(), deployment()
    byte_bound = 4 + 8 + 64
    assert bound.tokens(d, request()) == byte_bound
    bound.observe(d, request(), 29)
    assert bound.tokens(d, request()) == 29
    # the same prompt with other output settings is the same prompt
    assert bound.tokens(d, request(max_tokens=5, stream=True, temperature=0.2, n=2)) == 29


def test_the_gateways_own_rewrites_do_not_change_the_prompt() -> None:
    """The gateway swaps the model and sets max_tokens in the body it parsed before the
    upstream's count comes back."""
    bound, d = PromptBound(), deployment()
    sent = request()
    sent.body["model"] = "upstream-name"
    sent.body["max_tokens"] = 24
    sent.body["stream_options"] = {"include_usage": True}
    bound.observe(d, sent, 29)
    assert bound.tokens(d, request()) == 29


def test_another_prompt_deployment_or_call_type_is_not_this_one() -> None:
    bound, d = PromptBound(), deployment()
    bound.observe(d, request(), 29)
    assert bound.tokens(d, request("pong")) == 4 + 8 + 64
    assert bound.tokens(d, request(tools=[{"type": "function",
                                           "function": {"name": "f"}}])) > 29
    assert bound.tokens(deployment(model_name="other"), request()) == 4 + 8 + 64
    completion = parse(orjson.dumps({"model": "m", "prompt": "ping"}), CallType.COMPLETION)
    assert bound.tokens(d, completion) == 4 + 8 + 64


def test_never_above_the_byte_bound_and_never_below_a_count_seen() -> None:
    bound, d = PromptBound(), deployment()
    bound.observe(d, request(), 29)
    bound.observe(d, request(), 20)             # a lower count later does not lower the bound
    assert bound.tokens(d, request()) == 29
    bound.observe(d, request(), 30)
    assert bound.tokens(d, request()) == 30
    # an upstream counting more than the byte bound: the overhead is learned, bound = count
    bound.observe(d, request(), 500)
    assert bound.tokens(d, request()) == 500


def test_the_memory_of_counts_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(pricing, "COUNTED_PROMPTS", 3)
    bound, d = PromptBound(), deployment()
    for word in ("a", "b", "c", "d"):
        bound.observe(d, request(word), 10)
    assert [bound.tokens(d, request(w)) for w in ("a", "b", "c", "d")] == [1 + 8 + 64, 10, 10,
                                                                           10]


def test_large_prompts_are_not_looked_up(monkeypatch: Any) -> None:
    monkeypatch.setattr(pricing, "COUNTED_MAX_BYTES", 10)
    bound, d = PromptBound(), deployment()
    long = request("x" * 11)
    bound.observe(d, long, 20)
    assert bound.tokens(d, long) == 11 + 8 + 64

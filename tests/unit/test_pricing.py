"""faregate.spend.pricing: the prompt bound and the cost of reported tokens."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import orjson
import pytest

from faregate.config import Deployment
from faregate.money import price_to_femtos
from faregate.spend.pricing import IMAGE_TOKENS, PromptBound, cost
from faregate.wire.openai_request import CallType, ParsedRequest, parse


def deployment(**changes: Any) -> Deployment:
    """A deployment with its own id, as config.py gives every model_list entry one."""
    changes.setdefault("deployment_id", f"{changes.get('model_name', 'm')}#0")
    base = Deployment(
        model_name="m", provider="openai", upstream_model="up", api_base="http://up/v1",
        api_key=None, input_femtos=price_to_femtos("0.000001"),
        output_femtos=price_to_femtos("0.000002"), max_output_tokens=1000,
        prompt_overhead_tokens=64, per_message_overhead_tokens=8, timeout_s=60.0)
    return replace(base, **changes)


def chat(*contents: Any) -> ParsedRequest:
    messages = [{"role": "user", "content": c} for c in contents]
    return parse(orjson.dumps({"model": "m", "messages": messages}), CallType.CHAT)


def test_bound_is_bytes_plus_message_and_model_overhead() -> None:
    bound = PromptBound()
    d = deployment(prompt_overhead_tokens=64, per_message_overhead_tokens=8)
    req = chat("héllo", "wörld!")                          # 6 + 7 bytes, 2 messages
    assert req.text_bytes == 13
    assert bound.tokens(d, req) == 13 + 2 * 8 + 64
    assert bound.overhead(d) == 64


def test_bound_uses_each_deployments_own_overheads() -> None:
    bound = PromptBound()
    req = chat("abc")
    assert bound.tokens(deployment(prompt_overhead_tokens=0,
                                   per_message_overhead_tokens=0), req) == 3
    assert bound.tokens(deployment(prompt_overhead_tokens=100,
                                   per_message_overhead_tokens=5), req) == 3 + 5 + 100


def test_images_add_a_fixed_allowance() -> None:
    bound = PromptBound()
    d = deployment()
    parts = [{"type": "image_url", "image_url": {"url": "http://x/1.png"}},
             {"type": "image_url", "image_url": {"url": "http://x/2.png"}},
             {"type": "text", "text": "hi"}]
    req = chat(parts)
    assert req.images == 2
    assert bound.tokens(d, req) == 2 + 8 + 2 * IMAGE_TOKENS + 64


def test_completion_prompt_counts_as_one_message() -> None:
    req = parse(orjson.dumps({"model": "m", "prompt": "abcd"}), CallType.COMPLETION)
    assert PromptBound().tokens(deployment(), req) == 4 + 8 + 64


def test_observe_raises_the_overhead(caplog: pytest.LogCaptureFixture) -> None:
    bound = PromptBound()
    d = deployment(prompt_overhead_tokens=64, per_message_overhead_tokens=8)
    req = chat("x" * 10)                                   # counted: 10 + 8 = 18
    with caplog.at_level(logging.WARNING, logger="faregate.pricing"):
        bound.observe(d, req, 18 + 100)                    # the template cost 100
    assert bound.overhead(d) == 100
    assert bound.tokens(d, req) == 118
    assert "prompt_overhead_tokens" in caplog.text
    # and the new bound covers the same request next time
    assert bound.tokens(d, req) >= 118


def test_observe_never_lowers_the_overhead(caplog: pytest.LogCaptureFixture) -> None:
    bound = PromptBound()
    d = deployment(prompt_overhead_tokens=64)
    req = chat("x" * 10)
    bound.observe(d, req, 18 + 90)
    assert bound.overhead(d) == 90
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="faregate.pricing"):
        bound.observe(d, req, 18 + 20)                     # a cheaper template run
        bound.observe(d, req, 0)                           # an upstream that reports 0
        bound.observe(d, req, 18 + 90)                     # equal: nothing to learn
    assert bound.overhead(d) == 90
    assert caplog.records == []


def test_observe_below_configured_overhead_changes_nothing() -> None:
    bound = PromptBound()
    d = deployment(prompt_overhead_tokens=64)
    req = chat("x" * 10)
    bound.observe(d, req, 18 + 63)
    assert bound.overhead(d) == 64


def test_learning_is_per_deployment() -> None:
    bound = PromptBound()
    a, b = deployment(model_name="a"), deployment(model_name="b")
    req = chat("x")
    bound.observe(a, req, 1 + 8 + 500)
    assert bound.overhead(a) == 500
    assert bound.overhead(b) == 64


def test_learning_is_kept_by_deployment_id_not_by_object() -> None:
    """The catalog makes new Deployment objects on every change: what was learned stays with
    the deployment's id, and a new deployment that gets a freed object's address (id()) starts
    from its own configured overhead."""
    bound = PromptBound()
    req = chat("x")
    learned = deployment(model_name="a")
    bound.observe(learned, req, 1 + 8 + 500)
    assert bound.overhead(replace(learned)) == 500          # the same model, rebuilt
    del learned             # one of these likely takes its address (not promised)
    others = [deployment(model_name=f"n{i}") for i in range(50)]
    assert [bound.overhead(d) for d in others] == [64] * 50


def test_cost_rounds_each_side_up() -> None:
    d = deployment(input_femtos=price_to_femtos("0.000001"),
                   output_femtos=price_to_femtos("0.000002"))
    assert cost(d, 0, 0) == 0
    assert cost(d, 1000, 0) == 1_000_000                  # $0.001
    assert cost(d, 0, 1000) == 2_000_000
    assert cost(d, 1000, 500) == 2_000_000
    cheap = deployment(input_femtos=price_to_femtos("0.0000000375"),
                       output_femtos=price_to_femtos("0.0000000375"))
    assert cost(cheap, 1, 1) == 38 + 38                    # 37.5 up, on each side


def test_cost_of_a_free_model_is_zero() -> None:
    assert cost(deployment(input_femtos=0, output_femtos=0), 10**6, 10**6) == 0


def test_bound_cost_covers_the_real_cost_of_any_tokenisation() -> None:
    """The bound's cost is an upper bound of the prompt cost (bytes >= tokens)."""
    bound = PromptBound()
    d = deployment()
    req = chat("The quick brown fox ⚡ jumps", "over the lazy dog")
    worst_real_prompt = req.text_bytes + 64 + 2 * 8
    assert cost(d, bound.tokens(d, req), 0) >= cost(d, worst_real_prompt, 0)

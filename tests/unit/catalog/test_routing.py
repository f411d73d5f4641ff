"""Router: weighted picking, cooldowns on a moved clock, retries' backoff, health."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from faregate.catalog.routing import Router
from faregate.config import Deployment, RouterSettings
from faregate.errors import UpstreamError

BASE = Deployment(model_name="m", provider="openai", upstream_model="u",
                  api_base="http://127.0.0.1:1/v1", api_key=None, input_femtos=1,
                  output_femtos=1, max_output_tokens=16, prompt_overhead_tokens=0,
                  per_message_overhead_tokens=0, timeout_s=1.0)


def dep(i: int, model: str = "m", weight: float = 1.0) -> Deployment:
    return replace(BASE, model_name=model, deployment_id=f"{model}#{i}", weight=weight,
                   api_base=f"http://127.0.0.1:{i + 1}/v1")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


SERVER_ERROR = UpstreamError("boom", status=502, retryable=True, upstream_status=500)
RATE_LIMITED = UpstreamError("slow down", status=429, retryable=True, upstream_status=429)
REFUSED = UpstreamError("refused", code="upstream_unreachable", retryable=True)


def router(deployments: list[Deployment], clock: Clock | None = None, **settings: object
           ) -> Router:
    return Router(deployments, RouterSettings(**settings),  # type: ignore[arg-type]
                  monotonic=clock or Clock(), rng=random.Random(7))


def test_one_deployment_is_always_picked_even_while_cooling_down() -> None:
    clock = Clock()
    r = router([dep(0)], clock, allowed_fails=0)
    r.failed(dep(0), SERVER_ERROR)
    assert r.health()[0].cooling_down
    assert r.pick("m") == dep(0)
    assert r.pick("m", tried={"m#0"}) == dep(0)
    assert r.pick("other") is None


def test_weights_are_honoured_over_many_picks() -> None:
    r = router([dep(0, weight=3), dep(1, weight=1)])
    picks = Counter(r.pick("m").deployment_id for _ in range(4000))  # type: ignore[union-attr]
    assert 2700 < picks["m#0"] < 3300
    assert picks["m#0"] + picks["m#1"] == 4000


def test_untried_deployments_come_first() -> None:
    r = router([dep(0), dep(1), dep(2)])
    for _ in range(50):
        assert r.pick("m", tried={"m#0", "m#1"}) == dep(2)
    # all tried: any of them again
    assert r.pick("m", tried={"m#0", "m#1", "m#2"}) in (dep(0), dep(1), dep(2))


def test_cooldown_starts_after_allowed_fails_and_ends_with_time() -> None:
    clock = Clock()
    r = router([dep(0), dep(1)], clock, allowed_fails=2, cooldown_time_s=5.0)
    for _ in range(2):
        r.failed(dep(0), SERVER_ERROR)
    assert not r.health()[0].cooling_down        # 2 fails allowed
    r.failed(dep(0), SERVER_ERROR)
    health = r.health()[0]
    assert health.cooling_down and health.fails_last_minute == 3
    assert health.cooldown_left_s == pytest.approx(5.0)
    assert health.last_error == "boom"
    assert all(r.pick("m") == dep(1) for _ in range(50))
    clock.t += 5.01
    assert not r.health()[0].cooling_down
    assert {r.pick("m").deployment_id for _ in range(50)} == {"m#0", "m#1"}  # type: ignore[union-attr]


def test_failures_older_than_a_minute_do_not_count() -> None:
    clock = Clock()
    r = router([dep(0), dep(1)], clock, allowed_fails=1)
    r.failed(dep(0), SERVER_ERROR)
    clock.t += 61
    r.failed(dep(0), SERVER_ERROR)
    assert not r.health()[0].cooling_down
    assert r.health()[0].fails_last_minute == 1


@pytest.mark.parametrize("error", [RATE_LIMITED, REFUSED])
def test_a_429_or_a_refused_connection_cools_down_at_once(error: UpstreamError) -> None:
    r = router([dep(0), dep(1)], allowed_fails=100)
    r.failed(dep(0), error)
    assert r.health()[0].cooling_down


def test_when_all_cool_down_the_one_back_first_is_tried() -> None:
    clock = Clock()
    r = router([dep(0), dep(1), dep(2)], clock, allowed_fails=0, cooldown_time_s=10.0)
    r.failed(dep(1), SERVER_ERROR)
    clock.t += 1
    r.failed(dep(0), SERVER_ERROR)
    clock.t += 1
    r.failed(dep(2), SERVER_ERROR)
    assert r.pick("m") == dep(1)
    # the earliest-back one was tried already: an untried cooling one comes first
    assert r.pick("m", tried={"m#1"}) == dep(0)


def test_the_clients_own_mistakes_do_not_count_but_rejected_credentials_do() -> None:
    r = router([dep(0), dep(1)], allowed_fails=0)
    r.failed(dep(0), UpstreamError("bad request", status=400, upstream_status=400))
    assert not r.health()[0].cooling_down and r.health()[0].fails_last_minute == 0
    r.failed(dep(0), UpstreamError("bad key", status=502, upstream_status=401))
    assert r.health()[0].cooling_down


def test_a_success_ends_a_cooldown() -> None:
    r = router([dep(0), dep(1)], allowed_fails=0)
    r.failed(dep(0), SERVER_ERROR)
    assert r.health()[0].cooling_down
    r.succeeded(dep(0))
    assert not r.health()[0].cooling_down


def test_replace_keeps_state_of_deployments_that_stay_and_drops_the_rest() -> None:
    r = router([dep(0), dep(1), dep(0, "x")], allowed_fails=0)
    r.failed(dep(0), SERVER_ERROR)
    r.failed(dep(0, "x"), SERVER_ERROR)
    r.replace([dep(0), dep(1)])
    assert [h.deployment_id for h in r.health()] == ["m#0", "m#1"]
    assert r.health()[0].cooling_down
    assert r.pick("x") is None


def test_backoff_grows_is_capped_and_jittered() -> None:
    r = router([dep(0)], retry_backoff_s=0.1, retry_backoff_max_s=0.3)
    first = [r.backoff_s(1) for _ in range(200)]
    assert all(0.05 <= b <= 0.1 for b in first) and len(set(first)) > 100
    assert all(0.1 <= r.backoff_s(2) <= 0.2 for _ in range(200))
    assert all(0.15 <= r.backoff_s(9) <= 0.3 for _ in range(200))


def test_fallbacks_come_from_the_settings() -> None:
    r = router([dep(0), dep(0, "b")], fallbacks={"m": ("b",)})
    assert r.fallbacks("m") == ("b",)
    assert r.fallbacks("b") == ()


def test_least_busy_picks_the_fewest_in_flight_and_counts_ends() -> None:
    heavy = dep(0, weight=9)
    r = router([heavy, dep(1), dep(2)], routing_strategy="least-busy")
    r.begin(heavy)
    r.begin(dep(1))
    assert all(r.pick("m") == dep(2) for _ in range(20))
    r.begin(dep(2))
    r.begin(dep(2))
    r.end(heavy)
    assert all(r.pick("m") == heavy for _ in range(20))
    assert [h.in_flight for h in r.health()] == [0, 1, 2]
    # ties go by weight; an untried one still comes first after a failure
    r.end(dep(1))
    picks = Counter(r.pick("m").deployment_id for _ in range(1000))  # type: ignore[union-attr]
    assert picks["m#0"] > 800 and picks["m#2"] == 0
    assert r.pick("m", tried={"m#0", "m#1"}) == dep(2)


def test_latency_based_prefers_the_fastest_and_still_explores() -> None:
    r = router([dep(0), dep(1), dep(2)], routing_strategy="latency-based")
    r.succeeded(dep(0), 0.5)
    r.succeeded(dep(1), 0.1)
    assert r.pick("m") == dep(2) or r.pick("m") == dep(2)   # unmeasured first (or exploring)
    r.succeeded(dep(2), 0.3)
    picks = Counter(r.pick("m").deployment_id for _ in range(2000))  # type: ignore[union-attr]
    assert picks["m#1"] > 1700                   # the fastest gets the bulk ...
    assert picks["m#0"] > 20 and picks["m#2"] > 20   # ... the others a small share
    # dep(0) recovers: its average follows, and once below dep(1)'s it takes the lead
    for _ in range(10):
        r.succeeded(dep(0), 0.01)
    assert r.health()[0].latency_s == pytest.approx(0.01, abs=0.02)
    picks = Counter(r.pick("m").deployment_id for _ in range(1000))  # type: ignore[union-attr]
    assert picks.most_common(1)[0][0] == "m#0"


def test_latency_based_skips_cooling_and_tried_deployments() -> None:
    r = router([dep(0), dep(1), dep(2)], routing_strategy="latency-based", allowed_fails=0)
    for i, seconds in enumerate((0.1, 0.2, 0.3)):
        r.succeeded(dep(i), seconds)
    r.failed(dep(0), SERVER_ERROR)
    assert {r.pick("m") for _ in range(200)} <= {dep(1), dep(2)}
    assert r.pick("m", tried={"m#1", "m#2"}) == dep(0)          # all others tried: the cooling one


def test_health_reports_a_state_per_deployment() -> None:
    r = router([dep(0), dep(1), dep(2)], allowed_fails=1)
    r.failed(dep(1), SERVER_ERROR)
    r.failed(dep(2), SERVER_ERROR)
    r.failed(dep(2), SERVER_ERROR)
    assert [h.state for h in r.health()] == ["healthy", "failing", "cooling_down"]
    assert r.health()[0].latency_s is None



@pytest.mark.parametrize(("retry_after", "cooldown"), [(None, 5.0), (2.0, 5.0), (42.0, 42.0),
                                                       (10_000.0, 300.0)])
def test_a_retry_after_lengthens_the_cooldown_within_bounds(retry_after: float | None,
                                                             cooldown: float) -> None:
    clock = Clock()
    r = router([dep(0), dep(1)], clock, cooldown_time_s=5.0)
    error = UpstreamError("slow down", status=429, retryable=True, upstream_status=429)
    error.retry_after_s = retry_after
    r.failed(dep(0), error)
    assert r.health()[0].cooldown_left_s == cooldown
    clock.t += cooldown
    assert not r.health()[0].cooling_down

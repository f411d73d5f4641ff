"""faregate.money: integer money, rounding always in the gateway's disfavour (up)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from faregate.money import (
    FEMTOS_PER_DOLLAR,
    NANOS_PER_DOLLAR,
    dollars_to_nanos,
    nanos_to_dollars,
    price_to_femtos,
    token_cost,
    tokens_affordable,
)

# dollars_to_nanos


@pytest.mark.parametrize(("value", "nanos"), [
    (0, 0),
    (1, 1_000_000_000),
    (10, 10_000_000_000),
    (1.5, 1_500_000_000),
    (0.1, 100_000_000),              # not 100000000.00000000555 (the float's binary error)
    ("0.1", 100_000_000),
    ("2.25", 2_250_000_000),
    (Decimal("0.000000001"), 1),
    ("1e-9", 1),
])
def test_dollars_to_nanos_exact(value: object, nanos: int) -> None:
    assert dollars_to_nanos(value) == nanos


@pytest.mark.parametrize(("value", "nanos"), [
    ("0.0000000001", 1),             # a tenth of a nano-dollar rounds up to one
    ("0.0000000011", 2),
    (1e-10, 1),
    ("1.0000000001", 1_000_000_001),
])
def test_dollars_to_nanos_rounds_up(value: object, nanos: int) -> None:
    assert dollars_to_nanos(value) == nanos


@pytest.mark.parametrize("value", [
    -1, -0.000000001, "-0.5", float("nan"), "NaN", float("inf"), "-inf", "Infinity",
    True, False, None, "", "abc", "1.2.3", "$5", [], {}, object(),
])
def test_dollars_to_nanos_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="max_budget"):
        dollars_to_nanos(value, "max_budget")


def test_dollars_to_nanos_names_the_value() -> None:
    with pytest.raises(ValueError, match="'abc'"):
        dollars_to_nanos("abc")


# price_to_femtos


def test_price_to_femtos_exact_for_real_prices() -> None:
    assert price_to_femtos(0.000001) == 1_000_000_000
    assert price_to_femtos("0.000001") == 1_000_000_000
    assert price_to_femtos(0.0000000375) == 37_500_000          # str() is '3.75e-08'
    assert price_to_femtos("0.0000000375") == 37_500_000
    assert price_to_femtos(0.000015) == 15_000_000_000
    assert price_to_femtos(0) == 0
    assert price_to_femtos(1) == FEMTOS_PER_DOLLAR


def test_price_to_femtos_rounds_up_below_a_femto() -> None:
    assert price_to_femtos("0.0000000000000001") == 1
    assert price_to_femtos("0.0000000000000011") == 2


@pytest.mark.parametrize("value", [-0.000001, "nan", True, None, "cheap"])
def test_price_to_femtos_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="input_cost_per_token"):
        price_to_femtos(value, "input_cost_per_token")


# token_cost


def test_token_cost_exact() -> None:
    per_token = price_to_femtos("0.000001")
    assert token_cost(0, per_token) == 0
    assert token_cost(1, per_token) == 1_000
    assert token_cost(1_000_000, per_token) == NANOS_PER_DOLLAR       # $1 per million tokens


def test_token_cost_rounds_up() -> None:
    per_token = price_to_femtos("0.0000000375")      # 37.5 nano-dollars per token
    assert token_cost(1, per_token) == 38            # 37.5 -> 38
    assert token_cost(2, per_token) == 75            # exactly 75 stays 75
    assert token_cost(3, per_token) == 113           # 112.5 -> 113
    assert token_cost(1_000_000, per_token) == 37_500_000   # $0.0375
    assert token_cost(3, 1) == 1                     # 3 femtos -> 1 nano


def test_token_cost_free_model() -> None:
    assert token_cost(1_000_000, 0) == 0


# tokens_affordable


def test_tokens_affordable_floors() -> None:
    per_token = price_to_femtos("0.000001")          # 1000 nanos per token
    assert tokens_affordable(1_000, per_token) == 1
    assert tokens_affordable(1_999, per_token) == 1
    assert tokens_affordable(2_000, per_token) == 2
    assert tokens_affordable(999, per_token) == 0
    assert tokens_affordable(0, per_token) == 0


def test_tokens_affordable_never_negative() -> None:
    assert tokens_affordable(-5_000, price_to_femtos("0.000001")) == 0


def test_tokens_affordable_consistent_with_token_cost() -> None:
    for price in ("0.0000000375", "0.000001", "0.00003", "0.0000021"):
        per_token = price_to_femtos(price)
        for nanos in (0, 1, 7, 999, 10_000, 123_457):
            n = tokens_affordable(nanos, per_token)
            assert token_cost(n, per_token) <= nanos
            # one more token would cost more than we have (exact, before rounding up)
            assert (n + 1) * per_token > nanos * (FEMTOS_PER_DOLLAR // NANOS_PER_DOLLAR)


def test_tokens_affordable_free_price_is_unbounded() -> None:
    assert tokens_affordable(0, 0) >= 1 << 40
    assert tokens_affordable(1, 0) >= 1 << 40


def test_nanos_to_dollars() -> None:
    assert nanos_to_dollars(1_500_000_000) == 1.5
    assert nanos_to_dollars(0) == 0.0

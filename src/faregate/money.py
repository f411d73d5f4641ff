"""Money is integers: spend in nano-dollars, prices in femto-dollars per token.

Floats never enter the ledger. A price of $0.000001/token is 1_000_000_000 femto-dollars;
the smallest public price ($0.0000000375/token) is still an exact integer (37_500_000).
Costs round *up* to the next nano-dollar so that the gateway never under-charges.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANOS_PER_DOLLAR = 1_000_000_000
FEMTOS_PER_DOLLAR = 10**15
_FEMTOS_PER_NANO = FEMTOS_PER_DOLLAR // NANOS_PER_DOLLAR


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        # str() first: Decimal(0.1) would carry the float's binary error into the ledger.
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{what} must be a number, got {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return amount


def dollars_to_nanos(value: object, what: str = "amount") -> int:
    """Parse a dollar amount (as JSON or YAML gives it) into nano-dollars, rounding up."""
    nanos = _decimal(value, what) * NANOS_PER_DOLLAR
    return int(nanos.to_integral_value(rounding="ROUND_CEILING"))


def price_to_femtos(value: object, what: str = "price") -> int:
    """Parse a per-token dollar price into femto-dollars per token (exact for real prices)."""
    femtos = _decimal(value, what) * FEMTOS_PER_DOLLAR
    return int(femtos.to_integral_value(rounding="ROUND_CEILING"))


def token_cost(tokens: int, femtos_per_token: int) -> int:
    """Cost in nano-dollars of `tokens` at a per-token price, rounded up."""
    return -(-tokens * femtos_per_token // _FEMTOS_PER_NANO)


def tokens_affordable(nanos: int, femtos_per_token: int) -> int:
    """How many whole tokens `nanos` pays for at a per-token price (unbounded if free)."""
    if femtos_per_token <= 0:
        return 1 << 62
    return max(0, nanos * _FEMTOS_PER_NANO // femtos_per_token)


def nanos_to_dollars(nanos: int) -> float:
    """For JSON responses only: LiteLLM's API reports spend as a float of dollars."""
    return nanos / NANOS_PER_DOLLAR

"""Admission's refusals, worded once for every store: what the caller hit and what to do."""

from __future__ import annotations

from faregate.admission.demand import Window
from faregate.errors import BudgetExceeded, RateLimited
from faregate.money import nanos_to_dollars


def rate_limited(window: Window | None, used: int, reset_s: int,
                 parallel: int | None = None) -> RateLimited:
    if window is None:
        return RateLimited(
            f"Rate limit exceeded: max_parallel_requests={parallel} requests are already in "
            "flight on this key. Retry when one finishes.", code="max_parallel_requests",
            headers={"Retry-After": "1"})
    unit = "tokens" if window.tokens else "requests"
    return RateLimited(
        f"Rate limit exceeded: {window.setting}={window.limit} {unit} per minute; "
        f"{used} used in the last 60 s and this request needs {window.cost}. "
        f"Retry after {reset_s} s.", code=window.setting,
        headers={"Retry-After": str(max(1, reset_s))})


def budget_exceeded(spent: int, max_budget: int, reserved: int, least: int) -> BudgetExceeded:
    """The refusal, with the figures a caller needs to understand it (amounts in nanos)."""
    return BudgetExceeded(
        f"Budget has been exceeded! Current spend: ${nanos_to_dollars(spent):.9f}, "
        f"max budget: ${nanos_to_dollars(max_budget):.9f}, "
        f"reserved by requests in flight: ${nanos_to_dollars(reserved):.9f}, "
        f"this request needs at least ${nanos_to_dollars(least):.9f}. "
        "Raise max_budget with /key/update or wait for budget_duration to reset it.")

"""Admission's refusals, worded once for every store: what the caller hit and what to do.

A budget refusal names the payer that refused in LiteLLM's words (its `budget_exceeded`
messages per level: "Budget has been exceeded! Team=<id> Current cost: ..., Max budget: ...",
"ExceededBudget: User=<id> over budget. ..."), so scripts written against LiteLLM read it,
then adds what LiteLLM does not say: the reservations in flight and what this request needs.
Every level answers 429 with type budget_exceeded, as LiteLLM does today (older LiteLLM
releases answered 400 for the levels above the key).
"""

from __future__ import annotations

from faregate.admission.demand import END_USER, KEY, MEMBER, ORG, TEAM, USER, Payer, Window
from faregate.errors import BudgetExceeded, RateLimited
from faregate.money import nanos_to_dollars

# Where each level's budget is raised.
_RAISE_WITH = {KEY: "/key/update", USER: "/user/update", TEAM: "/team/update",
               MEMBER: "/team/member_update (max_budget_in_team)",
               ORG: "/organization/update", END_USER: "/customer/update"}


def rate_limited(window: Window | None, used: int, reset_s: int,
                 parallel: Payer | None = None) -> RateLimited:
    if window is None:
        limit = parallel.max_parallel_requests if parallel is not None else None
        where = "this key" if parallel is None or parallel.level == KEY else \
            f"{parallel.level} {parallel.name}"
        return RateLimited(
            f"Rate limit exceeded: max_parallel_requests={limit} requests are already in "
            f"flight on {where}. Retry when one finishes.", code="max_parallel_requests",
            headers={"Retry-After": "1"})
    unit = "tokens" if window.tokens else "requests"
    owner = f" of {window.owner}" if window.owner else ""
    # OpenAI's x-ratelimit-* of the window that refused (nothing was booked in it)
    return RateLimited(
        f"Rate limit exceeded: {window.setting}={window.limit}{owner} {unit} per minute; "
        f"{used} used in the last 60 s and this request needs {window.cost}. "
        f"Retry after {reset_s} s.", code=window.setting,
        headers={"Retry-After": str(max(1, reset_s)),
                 f"x-ratelimit-limit-{unit}": str(window.limit),
                 f"x-ratelimit-remaining-{unit}": str(max(0, window.limit - used)),
                 f"x-ratelimit-reset-{unit}": f"{max(1, reset_s)}s"})


def budget_exceeded(payer: Payer, spent: int, reserved: int, least: int) -> BudgetExceeded:
    """The refusal by `payer`, with the figures a caller needs to understand it (nanos)."""
    cost = _dollars(spent)
    budget = _dollars(payer.max_budget_nanos or 0)
    level = payer.level
    if level == USER:
        said = f"ExceededBudget: User={payer.name} over budget. Spend={cost}, Budget={budget}."
    elif level == END_USER:
        said = (f"ExceededBudget: End User={payer.name} over budget. Spend={cost}, "
                f"Budget={budget}.")
    else:
        who = {KEY: f"Key={payer.alias} ({payer.name})" if payer.alias else
               f"Key={payer.name}", TEAM: f"Team={payer.name}",
               MEMBER: f"TeamMember={payer.name}",
               ORG: f"Organization={payer.name}"}.get(level, f"{level}={payer.name}")
        said = f"Budget has been exceeded! {who} Current cost: {cost}, Max budget: {budget}."
    return BudgetExceeded(
        f"{said} Reserved by requests in flight: {_dollars(reserved)}; this request needs at "
        f"least {_dollars(least)}. Raise max_budget with {_RAISE_WITH.get(level, 'an admin')} "
        "or wait for budget_duration to reset it.")


def _dollars(nanos: int) -> str:
    return f"{nanos_to_dollars(nanos):.9f}"

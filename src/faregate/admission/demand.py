"""What one request asks of admission, and what admission grants it.

Every limit that applies to a request (key, key+model, deployment) is a Window; admission
checks all of them and the budget in one atomic step, and books them all or none. The gateway
asks one question per request (`demand_for`) and reads one answer (`Admitted`, and
`output_allowed` for the output tokens its grant pays for); the stores (local.py, shared.py)
decide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from faregate.config import Deployment
from faregate.money import tokens_affordable
from faregate.records import KeyRecord
from faregate.spend.pricing import bound_cost

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Window:
    scope: str              # stable name of the counter, e.g. "key:<hash>:rpm"
    tokens: bool            # False: counts requests; True: counts tokens
    limit: int
    cost: int               # 1 request, or the request's token upper bound
    setting: str            # the setting that imposes it, for error messages


@dataclass(frozen=True, slots=True)
class Demand:
    request_id: str
    key: KeyRecord
    least: int              # nano-dollars the request needs at the very least
    most: int               # nano-dollars its full upper bound costs
    windows: tuple[Window, ...] = ()
    parallel_limit: int | None = None
    key_version: str = "0"  # the key's version when it was loaded (shared admission checks it)

    def scaled(self, replicas: int) -> Demand:
        """This replica's share of every limit, for admission without the shared store."""
        if replicas <= 1:
            return self
        share = [replace(w, limit=-(-w.limit // replicas)) for w in self.windows]
        parallel = None if self.parallel_limit is None else -(-self.parallel_limit // replicas)
        return replace(self, windows=tuple(share), parallel_limit=parallel)


@dataclass(slots=True)
class Admitted:
    demand: Demand
    grant: int              # nano-dollars reserved (0 for keys without a budget)
    second: int             # the window second the costs were booked in
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False   # set by the store's settle: settling twice settles once


def demand_for(request_id: str, key: KeyRecord, key_version: str, d: Deployment,
               prompt_bound: int, wanted: int, n: int) -> Demand:
    """The one question a request asks: its cost bounds on `d`'s prices (at least the prompt
    and one token per choice, at most everything `wanted`) and every window it counts in."""
    return Demand(request_id=request_id, key=key,
                  least=bound_cost(d, prompt_bound, n if wanted else 0),
                  most=bound_cost(d, prompt_bound, wanted),
                  windows=_windows(key, d, prompt_bound + wanted),
                  parallel_limit=key.max_parallel_requests, key_version=key_version)


def same_terms(admitted: Admitted, other: Demand) -> bool:
    """Would `other` be decided as `admitted` was? Then a retry elsewhere may keep it."""
    return not admitted.settled and replace(other, request_id=admitted.demand.request_id) \
        == admitted.demand


def output_allowed(admitted: Admitted, d: Deployment, prompt_bound: int, wanted: int,
                   n: int) -> int:
    """Output tokens the grant pays for: all that was wanted unless the budget is short (then
    the gateway caps the upstream's max_tokens to it, a multiple of the n choices)."""
    if admitted.grant == 0 or wanted == 0:
        return wanted
    affordable = tokens_affordable(admitted.grant - bound_cost(d, prompt_bound, 0),
                                   d.output_femtos)
    return min(wanted, affordable // n * n)


def _windows(key: KeyRecord, d: Deployment, tokens: int) -> tuple[Window, ...]:
    """Every rate limit a request counts against: its key's, its key's for this model, and
    its deployment's (which protects a self-hosted upstream as a whole)."""
    limits = ((key.rpm_limit, False, "rpm_limit"), (key.tpm_limit, True, "tpm_limit"),
              (key.model_rpm_limit.get(d.model_name), False, "model_rpm_limit"),
              (key.model_tpm_limit.get(d.model_name), True, "model_tpm_limit"),
              (d.rpm, False, "rpm"), (d.tpm, True, "tpm"))
    if all(limit is None for limit, _, _ in limits):
        return ()                   # the common case: no counter names to format
    scopes = (f"k:{key.token}:rpm", f"k:{key.token}:tpm",
              f"k:{key.token}:m:{d.model_name}:rpm", f"k:{key.token}:m:{d.model_name}:tpm",
              f"d:{d.deployment_id}:rpm", f"d:{d.deployment_id}:tpm")
    return tuple(Window(scope, is_tokens, limit, tokens if is_tokens else 1, setting)
                 for scope, (limit, is_tokens, setting) in zip(scopes, limits, strict=True)
                 if limit is not None)


class StaleKey(Exception):
    """The key changed since this process loaded it: reload it and decide again."""


class Admission(Protocol):
    async def admit(self, demand: Demand) -> Admitted: ...

    async def settle(self, admitted: Admitted, cost: int, tokens: int) -> None:
        """Book the real cost and tokens, free the reservation; a second call does nothing."""

    def period_spend(self, key: KeyRecord) -> int: ...

    def lifetime_spend(self, key: KeyRecord) -> int: ...

    def forget(self, token: str) -> None: ...

    def change_period(self, key: KeyRecord) -> None: ...


def ratelimit_headers(requests: tuple[int, int, int] | None,
                      tokens: tuple[int, int, int] | None) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers from (limit, remaining, reset seconds) of the tightest
    requests window and tokens window."""
    out = []
    for kind, values in (("requests", requests), ("tokens", tokens)):
        if values is not None:
            limit, remaining, reset = values
            out += [(f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
                    (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
                    (f"x-ratelimit-reset-{kind}".encode(), f"{reset}s".encode())]
    return out

"""What one request asks of admission, and what admission grants it.

Every limit that applies to a request (key, key+model, deployment) is a Window; admission
checks all of them and the budget in one atomic step, and books them all or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from faregate.records import KeyRecord

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
    lease_s: float = 900.0  # a crashed process's reservations expire after this
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


class StaleKey(Exception):
    """The key changed since this process loaded it: reload it and decide again."""


class Admission(Protocol):
    async def admit(self, demand: Demand) -> Admitted: ...

    async def settle(self, admitted: Admitted, cost: int, tokens: int) -> None: ...

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

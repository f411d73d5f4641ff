"""What one request asks of admission, and what admission grants it.

A request is paid for by one or more payers (its key first, then the key's user, team, team
membership, organization and end user when it has them): each is a `Payer`, with its own
budget, limits and account. Every limit that applies to a request (each payer's rpm/tpm, the
key's per-model ones, the deployment's) is a Window; admission checks all of them, every
payer's parallel slots and every payer's budget in one atomic step, and books them all or
none. The gateway asks one question per request (`demand_for`) and reads one answer
(`Admitted`, and `output_allowed` for the output tokens its grant pays for); the stores
(local.py, shared.py) decide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from faregate.admission import periods
from faregate.config import Deployment
from faregate.money import tokens_affordable
from faregate.records import KeyRecord
from faregate.spend.pricing import bound_cost

WINDOW_S = 60


# A payer's level, as its scope begins ("team:<team_id>"); the storage layer names accounts the
# same way. A member is a user within a team: "member:<team_id>:<user_id>".
KEY, USER, TEAM, MEMBER, ORG, END_USER = "key", "user", "team", "member", "org", "end_user"


def key_scope(token: str) -> str:
    return f"key:{token}"


@dataclass(frozen=True, slots=True)
class Window:
    scope: str              # stable name of the counter, e.g. "key:<hash>:rpm"
    tokens: bool            # False: counts requests; True: counts tokens
    limit: int
    cost: int               # 1 request, or the request's token upper bound
    setting: str            # the setting that imposes it, for error messages
    owner: str = ""         # whose limit, for messages: "" for the key or deployment, else
    #                         e.g. "team t1"


@dataclass(frozen=True, slots=True)
class Payer:
    """One payer of a request: its account's name, its budget terms and its limits, as its
    record had them when it was loaded (the store keeps the live account)."""

    scope: str                              # "key:<token>", "team:<id>", ...: its account
    level: str                              # KEY, USER, TEAM, MEMBER, ORG or END_USER
    name: str                               # what a refusal calls it: the key's name, the
    #                                         id; a member's "<user_id>:<team_id>" (LiteLLM's)
    max_budget_nanos: int | None = None     # None: no budget at this level
    spend_nanos: int = 0                    # lifetime, when loaded
    period_base_nanos: int = 0              # lifetime spend at the current period's start
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    max_parallel_requests: int | None = None
    rpm_limit: int | None = None            # a key's own are in its windows (demand_for)
    tpm_limit: int | None = None
    version: str = "0"                      # when loaded (shared admission checks it)
    alias: str | None = None                # a key's alias, for its refusal
    # Above the key, its rpm window (a request costs 1 in it), and its tpm window's name and
    # owner: made once with the payer (which lives as long as its key's cache entry), not per
    # request. (A key's own windows are named per deployment and model: _windows.)
    rpm_window: Window | None = field(default=None, init=False, compare=False, repr=False)
    tpm_scope: str = field(default="", init=False, compare=False, repr=False)
    owner: str = field(default="", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        owner = f"{self.level} {self.name}"
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "tpm_scope", f"{self.scope}:tpm")
        if self.rpm_limit is not None:
            object.__setattr__(self, "rpm_window", Window(
                f"{self.scope}:rpm", False, self.rpm_limit, 1, "rpm_limit", owner))

    @property
    def period_spend_nanos(self) -> int:
        return self.spend_nanos - self.period_base_nanos


def key_payer(key: KeyRecord, version: str = "0") -> Payer:
    return Payer(key_scope(key.token), KEY, key.key_name, key.max_budget_nanos,
                 key.spend_nanos, key.period_base_nanos, key.budget_duration,
                 period_end(key.budget_reset_at, key.budget_duration, key.created_at),
                 key.max_parallel_requests, key.rpm_limit, key.tpm_limit, version,
                 key.key_alias)


def period_end(reset_at: datetime | None, duration: str | None,
               created_at: datetime | None) -> datetime | None:
    """A payer's period end. One whose budget_duration comes from its named budget has none
    stored until admission records its first period: its periods count from its creation
    (admission rolls them forward to the one now is in, and records it)."""
    if reset_at is not None or duration is None or created_at is None:
        return reset_at
    return periods.add(created_at, duration)


@dataclass(frozen=True, slots=True)
class Demand:
    request_id: str
    key: KeyRecord
    least: int              # nano-dollars the request needs at the very least
    most: int               # nano-dollars its full upper bound costs
    windows: tuple[Window, ...] = ()
    # Who pays, the key first; left out, the key alone (read from `key`). A budget or
    # parallel limit is each payer's own (Payer.max_budget_nanos, .max_parallel_requests).
    payers: tuple[Payer, ...] = ()

    def __post_init__(self) -> None:
        if not self.payers:
            object.__setattr__(self, "payers", (key_payer(self.key),))

    def scaled(self, replicas: int) -> Demand:
        """This replica's share of every limit, for admission without the shared store."""
        if replicas <= 1:
            return self
        share = [replace(w, limit=-(-w.limit // replicas)) for w in self.windows]
        payers = [p if p.max_parallel_requests is None else
                  replace(p, max_parallel_requests=-(-p.max_parallel_requests // replicas))
                  for p in self.payers]
        return replace(self, windows=tuple(share), payers=tuple(payers))


@dataclass(slots=True)
class Admitted:
    demand: Demand
    grant: int              # nano-dollars reserved (0 for keys without a budget)
    second: int             # the window second the costs were booked in
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    settled: bool = False   # set by the store's settle: settling twice settles once


def demand_for(request_id: str, key: KeyRecord, key_version: str, d: Deployment,
               prompt_bound: int, wanted: int, n: int,
               payers: tuple[Payer, ...] = ()) -> Demand:
    """The one question a request asks: its cost bounds on `d`'s prices (at least the prompt
    and one token per choice, at most everything `wanted`), every window it counts in, and
    who pays. `payers`: the key's own Payer first (key_payer(key, key_version)), then its
    user, team, membership, organization, end user (each with a budget or limits of its
    own), built once per key and reused while the key is (so a request allocates none);
    left out, the key alone."""
    tokens = prompt_bound + wanted
    windows = _windows(key, d, tokens)
    if len(payers) > 1:
        windows += tuple(w for above in payers[1:] for w in _payer_windows(above, tokens))
    return Demand(request_id, key, bound_cost(d, prompt_bound, n if wanted else 0),
                  bound_cost(d, prompt_bound, wanted), windows,
                  payers or (key_payer(key, key_version),))


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


def _payer_windows(payer: Payer, tokens: int) -> tuple[Window, ...]:
    """A payer above the key's own rpm/tpm windows, counted under its scope."""
    rpm = payer.rpm_window
    if payer.tpm_limit is None:
        return () if rpm is None else (rpm,)
    tpm = Window(payer.tpm_scope, True, payer.tpm_limit, tokens, "tpm_limit", payer.owner)
    return (tpm,) if rpm is None else (rpm, tpm)


class StaleKey(Exception):
    """A payer (the key, or one above it: the argument is its scope) changed since this
    process loaded it: reload it and decide again."""


class Admission(Protocol):
    async def admit(self, demand: Demand) -> Admitted: ...

    async def settle(self, admitted: Admitted, cost: int, tokens: int) -> None:
        """Book the real cost and tokens, free the reservation; a second call does nothing."""

    def period_spend(self, key: KeyRecord) -> int: ...

    def lifetime_spend(self, key: KeyRecord) -> int: ...

    def forget(self, scope: str) -> None:
        """The payer changed (an admin's update, a delete): read its record again."""

    def change_period(self, scope: str, reset_at: datetime | None) -> None:
        """Admin changed the payer's budget_duration: its period now ends at `reset_at`."""


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

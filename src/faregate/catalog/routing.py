"""Model name -> deployments. The one place that knows which upstreams serve a public model,
which of them to try next, and which are cooling down after failures.

Every `model_list` entry (and every model stored through /model/new) is a deployment; entries
that share a `model_name` are deployments of one model. `replace` swaps the whole table at once,
so a request sees the table before a change or after it, never half of it.

Picking among the deployments that are neither cooling down nor already tried by this request
(if every one is cooling down, the one whose cooldown ends first: a probe, rather than failing
the request outright), by `routing_strategy`:
- `simple-shuffle`: a weighted random choice;
- `least-busy`: the fewest attempts in flight on this replica (ties: weighted random);
- `latency-based`: the lowest recent latency (an EWMA of whole answers, or of the first event
  for streams); a deployment never measured goes first, and a small share of picks ignores
  latency, so that a slow deployment that recovered is noticed.
The gateway reports each attempt's start (`begin`), end (`end`) and latency (`succeeded`).

Wildcards, as LiteLLM's "provider specific wildcard routing": an entry whose model_name holds
a `*` ("*", "openai/*", "bedrock/claude-*") serves every name it matches that no entry names
exactly. Exact names win; among patterns the most specific (config.wildcard_specificity) wins,
then the first in model_list. The deployment made for a name (Deployment.serving) keeps the
entry's id, so cooldowns, latency and the upstream's rpm/tpm are the entry's, whatever name
reached it; the last MAX_SERVED_NAMES names are kept made, so a busy name costs a dict lookup.

Access groups (model_info.access_groups) are kept per model name: `groups(name)` is what a
key's `models` may name to be allowed `name`.

Cooldown, LiteLLM-like: a deployment with more than `allowed_fails` failures within a minute
cools down for `cooldown_time` seconds; a 429 or a refused connection cools it down at once
(the upstream said plainly that it cannot take more now). A success ends a cooldown early.
One deployment and no failures cost a dict lookup and a length check per pick, whatever the
strategy.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from faregate.config import (
    Deployment,
    RouterSettings,
    is_wildcard,
    wildcard_match,
    wildcard_specificity,
)
from faregate.errors import UpstreamError

FAIL_WINDOW_S = 60.0
MAX_RETRY_AFTER_S = 300.0     # a longer Retry-After still cools down only this long
STRATEGIES = ("simple-shuffle", "least-busy", "latency-based")
LATENCY_WEIGHT = 0.3        # the newest sample's weight in the latency EWMA
LATENCY_EXPLORE = 0.1       # share of latency-based picks that ignore latency
MAX_SERVED_NAMES = 4096     # names served through wildcards kept made (then all forgotten)
# The longest name a wildcard serves: the ledger's model column holds 256 characters, and a
# client's name must not make pattern matching slow.
MAX_WILDCARD_NAME_CHARS = 256


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """One deployment's state, for health endpoints and metrics."""

    deployment_id: str
    model_name: str
    api_base: str
    cooling_down: bool
    cooldown_left_s: float
    fails_last_minute: int
    last_error: str | None
    in_flight: int = 0                  # attempts on it in flight on this replica
    latency_s: float | None = None      # recent average (EWMA); None until it answered once

    @property
    def state(self) -> str:
        if self.cooling_down:
            return "cooling_down"
        return "failing" if self.fails_last_minute else "healthy"


class Router:
    def __init__(self, deployments: Iterable[Deployment],
                 settings: RouterSettings | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.settings = settings or RouterSettings()
        self._clock = monotonic
        self._rng = rng or random.Random()
        self._table: dict[str, tuple[Deployment, ...]] = {}
        self._cum_weights: dict[str, list[float]] = {}     # model -> running sums of weights
        self._wild: dict[str, tuple[Deployment, ...]] = {}  # pattern -> its entries
        self._patterns: tuple[str, ...] = ()            # the patterns, most specific first
        self._groups: dict[str, frozenset[str]] = {}    # model or pattern -> its access groups
        self._served: dict[str, str | None] = {}        # name -> the pattern serving it (or None)
        self._made: dict[str, tuple[Deployment, ...]] = {}  # name -> its deployments, made
        self._cooling: dict[str, float] = {}            # deployment id -> cooldown ends at
        self._fails: dict[str, deque[float]] = {}       # deployment id -> recent failure times
        self._last_error: dict[str, str] = {}
        self._in_flight: dict[str, int] = {}            # deployment id -> attempts in flight
        self._latency: dict[str, float] = {}            # deployment id -> latency EWMA, s
        self._strategy = self.settings.routing_strategy
        if self._strategy not in STRATEGIES:
            raise ValueError(f"unknown routing strategy {self._strategy!r}")
        self.replace(deployments)

    def replace(self, deployments: Iterable[Deployment]) -> None:
        table: dict[str, list[Deployment]] = {}
        groups: dict[str, set[str]] = {}
        for d in deployments:
            table.setdefault(d.model_name, []).append(d)
            groups.setdefault(d.model_name, set()).update(d.access_groups)
        # sorted() is stable: patterns equally specific stay in configuration order.
        self._patterns = tuple(sorted((name for name in table if is_wildcard(name)),
                                      key=wildcard_specificity, reverse=True))
        self._wild = {name: tuple(table.pop(name)) for name in self._patterns}
        self._table = {name: tuple(ds) for name, ds in table.items()}
        self._cum_weights = {name: list(itertools.accumulate(d.weight for d in ds))
                             for name, ds in [*self._table.items(), *self._wild.items()]}
        self._groups = {name: frozenset(g) for name, g in groups.items() if g}
        self._served, self._made = {}, {}
        # Forget the state of deployments that are gone; keep it for those that stay.
        ids = {d.deployment_id for ds in [*self._table.values(), *self._wild.values()]
               for d in ds}
        for state in (self._cooling, self._fails, self._last_error, self._in_flight,
                      self._latency):
            for gone in [i for i in state if i not in ids]:
                del state[gone]

    def names(self) -> list[str]:
        """The models named exactly in model_list (and stored models), in order."""
        return list(self._table)

    def entries(self) -> list[Deployment]:
        """Every deployment as configured (wildcard entries as their patterns), in order."""
        return [d for ds in [*self._table.values(), *self._wild.values()] for d in ds]

    def patterns(self) -> list[str]:
        """The wildcard model_names, most specific first."""
        return list(self._patterns)

    def serves(self, name: str) -> bool:
        """Whether `name` is a model this gateway routes: named exactly, a wildcard entry's own
        pattern, or matched by one."""
        return name in self._table or name in self._wild or self._pattern_of(name) is not None

    def access_groups(self) -> dict[str, list[str]]:
        """Each access group -> the model names and patterns in it, in configuration order."""
        out: dict[str, list[str]] = {}
        for name in [*self._table, *self._patterns]:
            for group in sorted(self._groups.get(name, ())):
                out.setdefault(group, []).append(name)
        return out

    def groups(self, name: str) -> frozenset[str]:
        """The access groups that grant `name`: its own entry's, else (a name served through a
        wildcard) the pattern's."""
        if name in self._table:
            return self._groups.get(name, frozenset())
        pattern = self._pattern_of(name)
        return frozenset() if pattern is None else self._groups.get(pattern, frozenset())

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        """Every deployment of `model` (made from the wildcard entry that serves it, if no
        entry names it), in configuration order; empty if there is none."""
        found = self._table.get(model) or self._made.get(model)
        if found is not None:
            return found
        pattern = self._pattern_of(model)
        if pattern is None:
            return ()
        made = []
        for d in self._wild[pattern]:
            served = d.serving(model)
            assert served is not None, "a name is served only by a pattern that matches it"
            made.append(served)
        # Kept: providers prepare per Deployment object (headers, timeouts), so the same
        # objects serve the name's next requests.
        self._made[model] = found = tuple(made)
        return found

    def _pattern_of(self, name: str) -> str | None:
        """The most specific wildcard pattern matching `name`; remembered per name."""
        if not self._patterns or len(name) > MAX_WILDCARD_NAME_CHARS:
            return None
        try:
            return self._served[name]
        except KeyError:
            pass
        found = next((p for p in self._patterns if wildcard_match(p, name) is not None), None)
        if len(self._served) >= MAX_SERVED_NAMES:     # names are the clients' to invent
            self._served.clear()
            self._made.clear()
        self._served[name] = found
        return found

    def fallbacks(self, model: str) -> tuple[str, ...]:
        """The models to try, in order, when every attempt on `model` failed (for a name a
        wildcard serves without fallbacks of its own: the pattern's)."""
        found = self.settings.fallbacks.get(model)
        if found is None and model not in self._table:
            pattern = self._pattern_of(model)
            found = None if pattern is None else self.settings.fallbacks.get(pattern)
        return found or ()

    def pick(self, model: str, tried: Collection[str] = ()) -> Deployment | None:
        """The deployment of `model` to call next; None if the model has none.

        Prefers, in order: untried and healthy, untried and cooling (earliest end first),
        tried and healthy, tried and cooling. `tried` holds deployment ids.
        """
        ds = self._table.get(model)
        weights = model
        if ds is None:
            ds = self.deployments(model)
            if not ds:
                return None
            weights = ds[0].wildcard
        if len(ds) == 1:
            return ds[0]
        if not tried and not self._cooling:     # the common case: every one is a candidate
            if self._strategy == "simple-shuffle":
                cum = self._cum_weights[weights]
                return ds[min(bisect.bisect(cum, self._rng.random() * cum[-1]), len(ds) - 1)]
            return self._choose(ds)
        now = self._clock() if self._cooling else 0.0
        tiers: tuple[list[Deployment], ...] = ([], [], [], [])
        for d in ds:
            until = self._cooling.get(d.deployment_id)
            cooling = until is not None and until > now
            tiers[(2 if d.deployment_id in tried else 0) + cooling].append(d)
        for i, members in enumerate(tiers):
            if not members:
                continue
            if i % 2:       # all cooling: the one that comes back first
                return min(members, key=lambda d: self._cooling[d.deployment_id])
            if len(members) == 1:
                return members[0]
            return self._choose(members)
        return None     # unreachable: ds is not empty

    def _choose(self, members: Sequence[Deployment]) -> Deployment:
        """One of `members` (two or more, none cooling down) by the routing strategy."""
        if self._strategy == "least-busy":
            busy = self._in_flight
            least = min(busy.get(d.deployment_id, 0) for d in members)
            members = [d for d in members if busy.get(d.deployment_id, 0) == least]
        elif self._strategy == "latency-based" and self._rng.random() >= LATENCY_EXPLORE:
            latency = self._latency
            unmeasured = [d for d in members if d.deployment_id not in latency]
            if not unmeasured:
                return min(members, key=lambda d: latency[d.deployment_id])
            members = unmeasured
        if len(members) == 1:
            return members[0]
        return self._rng.choices(members, weights=[d.weight for d in members])[0]

    def begin(self, d: Deployment) -> None:
        """An attempt on `d` starts (least-busy counts them; health shows them)."""
        self._in_flight[d.deployment_id] = self._in_flight.get(d.deployment_id, 0) + 1

    def end(self, d: Deployment) -> None:
        """An attempt on `d` ended, however it ended (for a stream: when its relay ends)."""
        left = self._in_flight.get(d.deployment_id, 0) - 1
        if left > 0:
            self._in_flight[d.deployment_id] = left
        else:
            self._in_flight.pop(d.deployment_id, None)

    def failed(self, d: Deployment, error: UpstreamError) -> None:
        """Count an upstream failure of `d`; cool it down when it has failed too often.

        The client's own mistakes (a 400 the upstream gave back) say nothing about `d`'s
        health and are not counted; rejected credentials (401/403) are `d`'s fault."""
        if not error.retryable and error.upstream_status not in (401, 403):
            return
        now = self._clock()
        fails = self._fails.setdefault(d.deployment_id, deque())
        fails.append(now)
        while fails and fails[0] <= now - FAIL_WINDOW_S:
            fails.popleft()
        self._last_error[d.deployment_id] = error.message[:200]
        if error.upstream_status == 429 or error.code == "upstream_unreachable" \
                or len(fails) > self.settings.allowed_fails:
            cooldown = self.settings.cooldown_time_s
            if error.retry_after_s:         # the upstream said how long: believe it, bounded
                cooldown = max(cooldown, min(error.retry_after_s, MAX_RETRY_AFTER_S))
            self._cooling[d.deployment_id] = now + cooldown

    def succeeded(self, d: Deployment, latency_s: float | None = None) -> None:
        """An answer proves the deployment is back: end its cooldown. `latency_s`: how long
        the answer took (for a stream, its first event), for latency-based routing."""
        if self._cooling:
            self._cooling.pop(d.deployment_id, None)
        if latency_s is not None:
            before = self._latency.get(d.deployment_id)
            self._latency[d.deployment_id] = latency_s if before is None \
                else before + LATENCY_WEIGHT * (latency_s - before)

    def backoff_s(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...) of a deployment already
        tried: exponential, capped, with jitter so retries of many requests spread out."""
        s = self.settings
        ceiling: float = min(s.retry_backoff_max_s, s.retry_backoff_s * 2 ** (retry - 1))
        return ceiling / 2 + self._rng.random() * ceiling / 2

    def health(self) -> list[DeploymentHealth]:
        """Every deployment's state, in configuration order."""
        now = self._clock()
        out = []
        for ds in [*self._table.values(), *self._wild.values()]:
            for d in ds:
                until = self._cooling.get(d.deployment_id, 0.0)
                fails = self._fails.get(d.deployment_id, ())
                out.append(DeploymentHealth(
                    deployment_id=d.deployment_id, model_name=d.model_name,
                    api_base=d.api_base, cooling_down=until > now,
                    cooldown_left_s=max(0.0, until - now),
                    fails_last_minute=sum(1 for t in fails if t > now - FAIL_WINDOW_S),
                    last_error=self._last_error.get(d.deployment_id),
                    in_flight=self._in_flight.get(d.deployment_id, 0),
                    latency_s=self._latency.get(d.deployment_id)))
        return out

"""Metrics: the Prometheus series of the OpenAI routes, recorded once per request.

Names follow LiteLLM's (`litellm_*` becomes `faregate_*`, same suffixes and label names) so a
LiteLLM dashboard ports with a rename; docs/observability.md has the mapping. Labels are the
model name, the key alias and bounded codes: never the key or its hash.

The request path pays one dict lookup for the label children of (model, alias, status) and a
few increments. Gauges that describe the process (ledger buffer, database and Redis health)
are read at scrape time, never per request. With `PROMETHEUS_MULTIPROC_DIR` set (the
`--workers` supervisor sets it) counters and histograms are summed over all workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from faregate.catalog.routing import DeploymentHealth
from faregate.errors import BudgetExceeded, GatewayError, RateLimited
from faregate.observe.trace import RequestTrace

log = logging.getLogger("faregate.metrics")

PREFIX = "faregate_"
# Seconds; LLM calls span milliseconds (cached, small) to minutes (long generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
HEALTH_CACHE_S = 5.0       # a scrape pings the database and Redis at most this often
HEALTH_TIMEOUT_S = 1.0
NANOS_PER_DOLLAR = 1_000_000_000


@dataclass(slots=True)
class _Series:
    """The label children of one (model, key alias, status code), resolved once."""

    requests: Counter
    total_latency: Histogram
    upstream_latency: Histogram
    first_token: Histogram
    input_tokens: Counter
    output_tokens: Counter
    spend: Counter


class HealthChecks:
    """Database and Redis reachability as gauges, pinged at scrape time at most every
    HEALTH_CACHE_S so that a scrape storm cannot load them."""

    def __init__(self, checks: Mapping[str, Callable[[], Awaitable[object]]],
                 clock: Callable[[], float] = time.monotonic,
                 timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        self._checks = dict(checks)
        self._clock = clock
        self._timeout_s = timeout_s
        self._checked_at: float | None = None
        self.up: dict[str, bool] = {}

    async def refresh(self) -> None:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < HEALTH_CACHE_S:
            return
        self._checked_at = now
        for name, ping in self._checks.items():
            try:
                await asyncio.wait_for(ping(), self._timeout_s)
                self.up[name] = True
            except Exception as exc:     # any failure means down; the type says why
                if self.up.get(name, True):
                    log.warning("metrics: %s check failed: %s", name, type(exc).__name__)
                self.up[name] = False


class _ScrapeTimeGauges:
    """A collector: values read when Prometheus scrapes, not kept up to date per request."""

    def __init__(self, ledger_pending: Callable[[], int], health: HealthChecks,
                 deployments: Callable[[], Iterable[DeploymentHealth]],
                 dead_letters: Callable[[], int] | None = None,
                 replicas: Callable[[], tuple[int, bool]] | None = None) -> None:
        self._ledger_pending = ledger_pending
        self._dead_letters = dead_letters
        self._replicas = replicas           # (other live processes, this one refusing)
        self._health = health
        self._deployments = deployments

    def collect(self) -> Iterator[Metric]:
        # LiteLLM's litellm_deployment_state: 0 healthy, 1 failing lately, 2 cooling down.
        state = GaugeMetricFamily(
            PREFIX + "deployment_state",
            "0 healthy, 1 failed in the last minute, 2 cooling down (tried only as a last "
            "resort)", labels=("model_group", "model_id", "api_base"))
        for d in self._deployments():
            state.add_metric((d.model_name, d.deployment_id, d.api_base),
                             2 if d.cooling_down else 1 if d.fails_last_minute else 0)
        yield state
        yield GaugeMetricFamily(PREFIX + "ledger_pending_rows",
                                "Spend rows accepted but not yet written to the database",
                                value=self._ledger_pending())
        if self._dead_letters is not None:
            yield GaugeMetricFamily(PREFIX + "ledger_dead_letter_rows",
                                    "Spend rows the database refused for their content, kept "
                                    "in the journal's dead-letter file (faregate dead-letters)",
                                    value=self._dead_letters())
        if self._replicas is not None:
            others, refusing = self._replicas()
            yield GaugeMetricFamily(PREFIX + "replicas_other_live",
                                    "Other faregate processes beating in this database",
                                    value=others)
            yield GaugeMetricFamily(PREFIX + "admission_refused",
                                    "1 while this process refuses requests because another "
                                    "uses the database without shared admission (REDIS_URL)",
                                    value=1 if refusing else 0)
        for name, up in self._health.up.items():
            yield GaugeMetricFamily(f"{PREFIX}{name}_up",
                                    f"1 if the {name} answered its last ping, else 0",
                                    value=1 if up else 0)


class Metrics:
    def __init__(self, ledger_pending: Callable[[], int], health: HealthChecks,
                 multiprocess_dir: str | None = None,
                 deployments: Callable[[], Iterable[DeploymentHealth]] = tuple,
                 dead_letters: Callable[[], int] | None = None,
                 replicas: Callable[[], tuple[int, bool]] | None = None) -> None:
        self._health = health
        own = CollectorRegistry(auto_describe=True)
        alias_labels = ("model", "api_key_alias")
        self._requests = Counter(
            PREFIX + "proxy_total_requests_metric", "Requests to the OpenAI routes",
            ("requested_model", "api_key_alias", "status_code"), registry=own)
        self._failed = Counter(
            PREFIX + "proxy_failed_requests_metric", "Requests answered with an error",
            ("requested_model", "api_key_alias", "exception_status", "exception_class"),
            registry=own)
        self._rejected = Counter(
            PREFIX + "rejected_requests_metric",
            "Requests refused by a budget or a rate limit, by the limit that refused them",
            ("reason",), registry=own)
        self._total_latency = Histogram(
            PREFIX + "request_total_latency_metric",
            "Seconds from the request's arrival to its last byte", ("model",),
            buckets=LATENCY_BUCKETS, registry=own)
        self._upstream_latency = Histogram(
            PREFIX + "llm_api_latency_metric", "Seconds spent in the upstream call", ("model",),
            buckets=LATENCY_BUCKETS, registry=own)
        self._first_token = Histogram(
            PREFIX + "llm_api_time_to_first_token_metric",
            "Streams: seconds from the upstream call's start to its first event", ("model",),
            buckets=LATENCY_BUCKETS, registry=own)
        self._input_tokens = Counter(PREFIX + "input_tokens_metric", "Prompt tokens charged",
                                     alias_labels, registry=own)
        self._output_tokens = Counter(PREFIX + "output_tokens_metric",
                                      "Completion tokens charged", alias_labels, registry=own)
        self._spend = Counter(PREFIX + "spend_metric", "Dollars charged", alias_labels,
                              registry=own)
        self.in_flight = Gauge(PREFIX + "in_flight_requests",
                               "Requests on the OpenAI routes not yet answered in full",
                               registry=own, multiprocess_mode="livesum")
        self._series: dict[tuple[str, str, int], _Series] = {}
        scrape_time = _ScrapeTimeGauges(ledger_pending, health, deployments, dead_letters,
                                        replicas)
        if multiprocess_dir:
            # Every worker writes its series to files there; a scrape sums them all.
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=multiprocess_dir)
        else:
            self._exposed = own
        self._exposed.register(scrape_time)

    def finished(self, trace: RequestTrace, status: int, error: GatewayError | None) -> None:
        """Record one request, whatever way it ended; called once, at the edge."""
        labels = (trace.model, trace.key_alias, status)
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = self._new_series(*labels)
        series.requests.inc()
        series.total_latency.observe(time.perf_counter() - trace.started)
        if trace.upstream_s is not None:
            series.upstream_latency.observe(trace.upstream_s)
        if trace.first_token_s is not None:
            series.first_token.observe(trace.first_token_s)
        if trace.prompt_tokens:
            series.input_tokens.inc(trace.prompt_tokens)
        if trace.completion_tokens:
            series.output_tokens.inc(trace.completion_tokens)
        if trace.spend_nanos:
            series.spend.inc(trace.spend_nanos / NANOS_PER_DOLLAR)
        if error is not None:
            self._failed.labels(trace.model, trace.key_alias, str(status), error.type).inc()
            if isinstance(error, BudgetExceeded):
                self._rejected.labels("budget_exceeded").inc()
            elif isinstance(error, RateLimited):
                # The limit's setting name (rpm_limit, tpm_limit, max_parallel_requests...).
                self._rejected.labels(error.code or "rate_limit").inc()

    async def exposition(self) -> bytes:
        await self._health.refresh()
        return generate_latest(self._exposed)

    def _new_series(self, model: str, alias: str, status: int) -> _Series:
        return _Series(
            requests=self._requests.labels(model, alias, str(status)),
            total_latency=self._total_latency.labels(model),
            upstream_latency=self._upstream_latency.labels(model),
            first_token=self._first_token.labels(model),
            input_tokens=self._input_tokens.labels(model, alias),
            output_tokens=self._output_tokens.labels(model, alias),
            spend=self._spend.labels(model, alias))

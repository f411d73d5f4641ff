"""deploy/grafana/faregate-dashboard.json asks only for series that /metrics really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from faregate.errors import BudgetExceeded, RateLimited
from faregate.observe.metrics import HealthChecks, Metrics
from faregate.observe.trace import RequestTrace

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "faregate-dashboard.json"
METRIC_NAME = re.compile(r"\bfaregate_[a-z_]+\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus adds to every series it scrapes (ServiceMonitor targets).
TARGET_LABELS = {"pod", "instance", "job", "namespace", "service", "container"}


async def exposed() -> dict[str, set[str]]:
    """Sample name -> label names, from a Metrics that recorded every kind of request."""
    async def ok() -> None:
        return None

    metrics = Metrics(lambda: 3, HealthChecks({"database": ok, "redis": ok}))
    served = RequestTrace("a", 0.0, model="m", key_alias="k", upstream_s=0.2,
                          first_token_s=0.1, prompt_tokens=5, completion_tokens=7,
                          spend_nanos=1000)
    metrics.finished(served, 200, None)
    metrics.finished(RequestTrace("b", 0.0, model="m"), 429, BudgetExceeded("over"))
    metrics.finished(RequestTrace("c", 0.0, model="m"), 429, RateLimited("x", code="rpm_limit"))
    text = (await metrics.exposition()).decode()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def expressions(node: Any) -> list[str]:
    """Every PromQL string in the dashboard: targets' `expr` and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            promql = key == "expr" or (key == "query" and "faregate_" in str(value))
            if promql and isinstance(value, str):
                found.append(value)
            else:
                found += expressions(value)
    elif isinstance(node, list):
        for item in node:
            found += expressions(item)
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_the_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests/s", "error rate", "latency", "first token", "tokens/s", "spend",
                  "rejections", "ledger", "database", "redis", "in-flight"):
        assert topic in titles, topic
    assert all(p["targets"] for p in dashboard["panels"])


async def test_every_expression_uses_only_exposed_series_and_labels(
        dashboard: dict[str, Any]) -> None:
    series = await exposed()
    exprs = expressions(dashboard)
    assert len(exprs) >= 12
    for expr in exprs:
        names = METRIC_NAME.findall(expr)
        assert names, f"no faregate series in {expr!r}"
        unknown = [n for n in names if n not in series]
        assert not unknown, f"{expr!r} asks for {unknown}, which /metrics does not expose"
        labels = set().union(*(series[n] for n in names)) | TARGET_LABELS
        for group in GROUPING.findall(expr):
            missing = {g.strip() for g in group.split(",") if g.strip()} - labels
            assert not missing, f"{expr!r} groups by {missing}, labels {names} do not have"


async def test_the_check_would_catch_a_misspelt_series() -> None:
    series = await exposed()
    assert "faregate_spend_metric_total" in series
    assert "faregate_spend_metrics_total" not in series
    assert "faregate_request_total_latency_metric_bucket" in series

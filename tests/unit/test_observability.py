"""Units of observability: log formatting and redaction, the request-id bound, the metrics'
scrape-time gauges, and the settings that switch them."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faregate.config import load
from faregate.errors import ConfigError, RateLimited
from faregate.observe.logs import REQUEST_TRACE, JsonFormatter, TextFormatter, redact
from faregate.observe.metrics import HEALTH_CACHE_S, HealthChecks, Metrics
from faregate.observe.trace import RequestTrace, sane_client_request_id

ENV = {"FAREGATE_MASTER_KEY": "sk-master-0123456789"}


def record(message: str, *args: object, exc: bool = False, **extra: object
           ) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("connect to postgresql://gw:hunter2@db/x failed")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("faregate.test", logging.WARNING, __file__, 1, message, args,
                            exc_info)
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize(("text", "hidden"), [
    ("key sk-abcdef0123456789 refused", "sk-abcdef0123456789"),
    ("Authorization: Bearer token-xyz", "token-xyz"),
    ("postgresql://gw:hunter2@db.internal:5432/faregate", "hunter2"),
    ("redis://:s3cret@redis:6379/0", "s3cret"),
])
def test_redact_hides_keys_bearers_and_url_passwords(text: str, hidden: str) -> None:
    assert hidden not in redact(text)


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "upstream http://vllm:8000/v1 answered 502 after 1.2 s (model qwen@2)"
    assert redact(text) == text


def test_json_line_has_the_fields_and_the_request_id() -> None:
    trace = RequestTrace("abc123", 0.0, client_request_id="mine-1")
    token = REQUEST_TRACE.set(trace)
    try:
        line = JsonFormatter().format(record("served %s", "qwen", status=200, model="qwen",
                                             latency_ms=1.5))
    finally:
        REQUEST_TRACE.reset(token)
    out = orjson.loads(line)
    assert out["message"] == "served qwen" and out["level"] == "WARNING"
    assert out["logger"] == "faregate.test" and out["timestamp"].endswith("+00:00")
    assert out["request_id"] == "abc123" and out["client_request_id"] == "mine-1"
    assert (out["status"], out["model"], out["latency_ms"]) == (200, "qwen", 1.5)


def test_json_line_outside_a_request_has_no_request_id_and_redacts_tracebacks() -> None:
    out = orjson.loads(JsonFormatter().format(record("key %s", "sk-secret-value-1", exc=True)))
    assert "request_id" not in out
    assert "sk-secret-value-1" not in out["message"]
    assert "ValueError" in out["exception"] and "hunter2" not in out["exception"]


def test_text_line_is_redacted_and_tagged() -> None:
    token = REQUEST_TRACE.set(RequestTrace("abc123", 0.0))
    try:
        line = TextFormatter().format(record("key %s", "sk-secret-value-1"))
    finally:
        REQUEST_TRACE.reset(token)
    assert "sk-secret-value-1" not in line and line.endswith("[request_id=abc123]")


@pytest.mark.parametrize(("raw", "kept"), [
    (b"client-42.retry:1", True), (b"A" * 128, True), (b"A" * 129, False), (b"", False),
    (b"two words", False), (b"semi;colon", False), (b"new\nline", False),
    ("é".encode(), False),
])
def test_only_sane_client_request_ids_are_kept(raw: bytes, kept: bool) -> None:
    assert (sane_client_request_id(raw) is not None) is kept


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def samples(text: bytes) -> dict[str, float]:
    return {s.name + str(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


async def test_health_is_pinged_at_most_once_per_cache_period_and_reports_failures() -> None:
    calls = {"database": 0, "redis": 0}
    redis_up = True

    async def database() -> None:
        calls["database"] += 1

    async def redis() -> None:
        calls["redis"] += 1
        if not redis_up:
            raise ConnectionError("refused")

    clock = FakeClock()
    metrics = Metrics(lambda: 7, HealthChecks({"database": database, "redis": redis}, clock))
    first = samples(await metrics.exposition())
    assert first["faregate_database_up[]"] == 1 and first["faregate_redis_up[]"] == 1
    assert first["faregate_ledger_pending_rows[]"] == 7
    redis_up = False
    await metrics.exposition()
    assert calls == {"database": 1, "redis": 1}            # cached: no second ping
    clock.t += HEALTH_CACHE_S
    after = samples(await metrics.exposition())
    assert calls == {"database": 2, "redis": 2}
    assert after["faregate_redis_up[]"] == 0 and after["faregate_database_up[]"] == 1


async def test_a_hanging_ping_counts_as_down() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    metrics = Metrics(lambda: 0, HealthChecks({"database": hangs}, FakeClock(), timeout_s=0.01))
    assert samples(await metrics.exposition())["faregate_database_up[]"] == 0


async def test_rate_limit_rejections_are_counted_by_the_limit() -> None:
    async def ok() -> None:
        return None

    metrics = Metrics(lambda: 0, HealthChecks({"database": ok}))
    trace = RequestTrace("r1", 0.0, model="m", key_alias="a")
    metrics.finished(trace, 429, RateLimited("slow down", code="tpm_limit"))
    metrics.finished(trace, 429, RateLimited("slow down", code="max_parallel_requests"))
    out = samples(await metrics.exposition())
    assert out["faregate_rejected_requests_metric_total[('reason', 'tpm_limit')]"] == 1
    assert out["faregate_rejected_requests_metric_total"
               "[('reason', 'max_parallel_requests')]"] == 1


def config(tmp_path: Path, general: str = "", extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent("""\
        model_list:
          - model_name: m
            litellm_params: {model: openai/m, api_base: "http://u/v1",
                             input_cost_per_token: 0, output_cost_per_token: 0}
        general_settings:
          master_key: os.environ/FAREGATE_MASTER_KEY
        """) + textwrap.indent(textwrap.dedent(general), "  ") + textwrap.dedent(extra))
    return path


def test_observability_defaults(tmp_path: Path) -> None:
    s = load({**ENV, "FAREGATE_DATA_DIR": str(tmp_path)}, config(tmp_path))
    assert (s.log_format, s.log_requests, s.metrics_require_auth) == ("json", False, True)
    assert s.prometheus_multiproc_dir is None


def test_observability_settings(tmp_path: Path) -> None:
    s = load({**ENV, "FAREGATE_DATA_DIR": str(tmp_path), "FAREGATE_LOG_FORMAT": "text",
              "PROMETHEUS_MULTIPROC_DIR": "/tmp/m"},
             config(tmp_path, "log_requests: true\nrequire_auth_for_metrics_endpoint: true\n"))
    assert (s.log_format, s.log_requests, s.metrics_require_auth) == ("text", True, True)
    assert s.prometheus_multiproc_dir == "/tmp/m"


def test_metrics_auth_may_come_from_litellm_settings(tmp_path: Path) -> None:
    s = load({**ENV, "FAREGATE_DATA_DIR": str(tmp_path)}, config(
        tmp_path, extra="litellm_settings:\n  require_auth_for_metrics_endpoint: true\n"))
    assert s.metrics_require_auth


@pytest.mark.parametrize(("env", "general", "named"), [
    ({"FAREGATE_LOG_FORMAT": "xml"}, "", "FAREGATE_LOG_FORMAT"),
    ({}, "log_format: yaml\n", "log_format"),
    ({}, "log_requests: maybe\n", "general_settings.log_requests"),
    ({}, "require_auth_for_metrics_endpoint: 2\n", "require_auth_for_metrics_endpoint"),
])
def test_bad_observability_settings_name_themselves(tmp_path: Path, env: dict[str, str],
                                                     general: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load({**ENV, "FAREGATE_DATA_DIR": str(tmp_path), **env}, config(tmp_path, general))

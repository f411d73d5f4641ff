"""/metrics, request ids and JSON logs, against a real gateway: every series a request should
move, the ids on every kind of response, and no secret or prompt in any log line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from api.conftest import Clock, RunningGateway, faulty_models, serve
from prometheus_client.parser import text_string_to_metric_families
from support import MASTER_KEY, chat, env_for, write_config

from faregate import config
from faregate.app import Faregate
from faregate.keys.tokens import hash_key
from faregate.observe.logs import JsonFormatter
from faregate.secret import Secret

PROMPT_MARKER = "zebra-quartz-prompt-marker"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line the process writes while the test runs, formatted as `serve` does."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


Start = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start(db_url: str, mock_upstream: str, tmp_path: Path, clock: Clock
                ) -> AsyncIterator[Start]:
    """Starts the gateway with access lines on and any other Settings overridden."""
    cfg = write_config(tmp_path / "config.yaml", mock_upstream,
                       extra_models=faulty_models(mock_upstream))
    settings = config.load({**os.environ, **env_for(db_url, tmp_path)}, cfg)
    async with contextlib.AsyncExitStack() as stack:
        async def started(**overrides: object) -> RunningGateway:
            changed = dataclasses.replace(settings, **{"log_requests": True, **overrides})
            return await stack.enter_async_context(
                serve(Faregate.from_settings(changed, now=clock.now)))
        yield started


@pytest.fixture
async def observed(start: Start) -> RunningGateway:
    return await start()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def scrape(gw: RunningGateway) -> Samples:
    """/metrics once every request has been recorded (a stream is recorded after its last
    byte reached the client, so wait for in-flight to reach 0)."""
    for _ in range(200):
        resp = await gw.http.get("/metrics", headers=bearer(MASTER_KEY))
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/plain")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(resp.text)
                   for s in family.samples}
        if samples[("faregate_in_flight_requests", ())] == 0:
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError("requests stayed in flight")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...],
                                                              float]:
    return {lbl: v for (n, lbl), v in samples.items()
            if n == name and set(labels.items()) <= set(lbl)}


async def stream_chat(gw: RunningGateway, key: str, **headers: str) -> httpx.Response:
    async with gw.http.stream("POST", "/v1/chat/completions",
                              json=chat(PROMPT_MARKER, stream=True),
                              headers={**bearer(key), **headers}) as resp:
        body = b"".join([chunk async for chunk in resp.aiter_bytes()])
    assert resp.status_code == 200 and b"[DONE]" in body
    return resp


async def test_metrics_count_successes_streams_rejections_and_upstream_errors(
        observed: RunningGateway) -> None:
    gw = observed
    team = await gw.new_key(key_alias="team-a", max_budget=1)
    tight = await gw.new_key(key_alias="tight", max_budget=0.0000001)
    limited = await gw.new_key(key_alias="limited", rpm_limit=1, max_budget=1)
    broken = await gw.new_key(key_alias="broken", models=["broken-model"], max_budget=1)

    ok = await gw.http.post("/v1/chat/completions", json=chat(), headers=bearer(team))
    assert ok.status_code == 200
    await stream_chat(gw, team)
    refused = await gw.http.post("/v1/chat/completions", json=chat(), headers=bearer(tight))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded"
    assert (await gw.http.post("/v1/chat/completions", json=chat(),
                               headers=bearer(limited))).status_code == 200
    limit = await gw.http.post("/v1/chat/completions", json=chat(), headers=bearer(limited))
    assert limit.status_code == 429 and limit.json()["error"]["code"] == "rpm_limit"
    failed = await gw.http.post("/v1/chat/completions",
                                json={**chat(), "model": "broken-model"}, headers=bearer(broken))
    assert failed.status_code >= 500
    unknown = await gw.http.post("/v1/chat/completions", json={**chat(), "model": "nope"},
                                 headers=bearer(team))
    assert unknown.status_code == 400

    m = await scrape(gw)
    total = "faregate_proxy_total_requests_metric_total"
    assert value(m, total, requested_model="qwen-local", api_key_alias="team-a",
                 status_code="200") == 2
    assert value(m, total, requested_model="qwen-local", api_key_alias="tight",
                 status_code="429") == 1
    assert value(m, total, requested_model="qwen-local", api_key_alias="limited",
                 status_code="200") == 1
    assert value(m, total, requested_model="qwen-local", api_key_alias="limited",
                 status_code="429") == 1
    assert value(m, total, requested_model="broken-model", api_key_alias="broken",
                 status_code=str(failed.status_code)) == 1
    # An unknown model is not a label value: callers cannot grow the series.
    assert value(m, total, requested_model="", api_key_alias="team-a", status_code="400") == 1
    assert not matching(m, total, requested_model="nope")

    rejected = "faregate_rejected_requests_metric_total"
    assert value(m, rejected, reason="budget_exceeded") == 1
    assert value(m, rejected, reason="rpm_limit") == 1
    fails = matching(m, "faregate_proxy_failed_requests_metric_total",
                     requested_model="broken-model")
    assert list(fails.values()) == [1]
    assert ("exception_status", str(failed.status_code)) in next(iter(fails))

    # Tokens and spend agree with the ledger, key by key.
    await gw.app.ledger.flush()
    for key, alias in ((team, "team-a"), (limited, "limited")):
        rows = (await gw.admin("GET", "/spend/logs", params={"api_key": key})).json()
        labels = {"model": "qwen-local", "api_key_alias": alias}
        assert value(m, "faregate_input_tokens_metric_total", **labels) == \
            sum(r["prompt_tokens"] for r in rows) > 0
        assert value(m, "faregate_output_tokens_metric_total", **labels) == \
            sum(r["completion_tokens"] for r in rows) > 0
        assert value(m, "faregate_spend_metric_total", **labels) == \
            pytest.approx(sum(r["spend"] for r in rows))

    assert value(m, "faregate_llm_api_time_to_first_token_metric_count",
                 model="qwen-local") == 1                   # the one stream
    # Latency: every request that reached a model; upstream: the three that were served.
    assert value(m, "faregate_request_total_latency_metric_count", model="qwen-local") == 5
    assert value(m, "faregate_llm_api_latency_metric_count", model="qwen-local") == 3
    assert value(m, "faregate_in_flight_requests") == 0
    assert value(m, "faregate_database_up") == 1
    assert ("faregate_ledger_pending_rows", ()) in m
    # Never a key or its hash as a label value.
    every_label_value = {v for (_, lbl) in m for _, v in lbl}
    for key in (team, tight, limited, broken):
        assert key not in every_label_value and hash_key(key) not in every_label_value


async def test_metrics_need_the_master_key_by_default(observed: RunningGateway) -> None:
    """/metrics names key aliases with their spend: not for anyone who reaches the port."""
    anonymous = await observed.http.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"
    assert "faregate_" not in anonymous.text
    key = await observed.new_key(key_alias="alias-not-for-strangers")
    virtual = await observed.http.get("/metrics", headers=bearer(key))
    assert virtual.status_code == 403
    assert "master key" in virtual.json()["error"]["message"]
    assert "FAREGATE_METRICS_TOKEN" in virtual.json()["error"]["message"]
    wrong = await observed.http.get("/metrics", headers=bearer("sk-not-a-key-at-all"))
    assert wrong.status_code == 401
    assert (await observed.http.get("/metrics", headers=bearer(MASTER_KEY))).status_code == 200


async def test_a_metrics_token_opens_metrics_and_nothing_else(start: Start) -> None:
    token = "prometheus-scrape-token-0123456789"
    observed = await start(metrics_token=Secret(token))
    assert (await observed.http.get("/metrics", headers=bearer(token))).status_code == 200
    assert (await observed.http.get("/metrics",
                                    headers={"Authorization": f"bearer  {token}"})
            ).status_code == 200
    assert (await observed.http.get("/metrics", headers=bearer(token + "x"))).status_code == 401
    assert (await observed.http.get("/metrics", headers=bearer(MASTER_KEY))).status_code == 200
    # the scraper's token is no key: no admin route, no model call
    assert (await observed.http.get("/key/list", headers=bearer(token))).status_code == 401
    call = await observed.http.post("/v1/chat/completions", json=chat(), headers=bearer(token))
    assert call.status_code == 401


async def test_metrics_can_be_opened(start: Start) -> None:
    observed = await start(metrics_require_auth=False)
    assert (await observed.http.get("/metrics")).status_code == 200


async def test_every_response_carries_the_request_id_the_ledger_keeps(
        observed: RunningGateway) -> None:
    gw = observed
    key = await gw.new_key(max_budget=1)
    ok = await gw.http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    streamed = await stream_chat(gw, key)
    errors = [
        await gw.http.post("/v1/chat/completions", json=chat()),                # 401
        await gw.http.post("/v1/chat/completions", content=b"{", headers=bearer(key)),  # 400
        await gw.http.post("/v1/chat/completions", json={**chat(), "model": "nope"},
                           headers=bearer(key)),                                # 400
        await gw.http.get("/v1/models"),                                        # 401
    ]
    ids = [r.headers["x-request-id"] for r in (ok, streamed, *errors)]
    assert [r.status_code for r in errors] == [401, 400, 400, 401]
    assert all(ids) and len(set(ids)) == len(ids)
    await gw.app.ledger.flush()
    rows = (await gw.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert {r["request_id"] for r in rows} == {ids[0], ids[1]}


async def test_a_callers_request_id_is_echoed_but_never_keys_the_ledger(
        observed: RunningGateway, log_lines: list[str]) -> None:
    gw = observed
    key = await gw.new_key(max_budget=1)
    mine = "client-42.retry:1"
    ok = await gw.http.post("/v1/chat/completions", json=chat(),
                            headers={**bearer(key), "x-request-id": mine})
    streamed = await stream_chat(gw, key, **{"x-request-id": mine})
    refused = await gw.http.post("/v1/chat/completions", json=chat(),
                                 headers={"x-request-id": mine})
    for resp in (ok, streamed, refused):
        assert resp.headers["x-client-request-id"] == mine
        assert resp.headers["x-request-id"] != mine
    await gw.app.ledger.flush()
    rows = (await gw.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert mine not in {r["request_id"] for r in rows}
    assert {r["request_id"] for r in rows} == {ok.headers["x-request-id"],
                                               streamed.headers["x-request-id"]}
    access = [orjson.loads(line) for line in log_lines if '"faregate.access"' in line]
    assert {(a["request_id"], a["client_request_id"]) for a in access} == {
        (r.headers["x-request-id"], mine) for r in (ok, streamed, refused)}


@pytest.mark.parametrize("unsafe", ["x" * 129, "has spaces", "semi;colon", "é"])
async def test_an_unsafe_caller_request_id_is_ignored(observed: RunningGateway,
                                                       log_lines: list[str],
                                                       unsafe: str) -> None:
    key = await observed.new_key(max_budget=1)
    resp = await observed.http.post("/v1/chat/completions", json=chat(), headers={
        **bearer(key), "x-request-id": unsafe.encode("utf-8")})  # type: ignore[dict-item]
    assert resp.status_code == 200
    assert "x-client-request-id" not in resp.headers
    assert resp.headers["x-request-id"] != unsafe
    assert not any(unsafe in line for line in log_lines)


async def test_access_lines_are_json_with_the_request_id(observed: RunningGateway,
                                                          log_lines: list[str]) -> None:
    gw = observed
    key = await gw.new_key(key_alias="svc", max_budget=1)
    ok = await gw.http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    denied = await gw.http.post("/v1/chat/completions", json=chat(), headers=bearer("sk-bad1"))
    parsed = [orjson.loads(line) for line in log_lines]
    assert all({"timestamp", "level", "logger", "message"} <= set(p) for p in parsed)
    by_id = {p.get("request_id"): p for p in parsed if p["logger"] == "faregate.access"}
    line = by_id[ok.headers["x-request-id"]]
    assert line["level"] == "INFO" and line["status"] == 200
    assert line["model"] == "qwen-local" and line["key_alias"] == "svc"
    assert line["latency_ms"] > 0 and line["prompt_tokens"] > 0
    assert line["outcome"] == "success"
    assert line["attempts"] == 1 and "error" not in line      # as its ledger row
    assert by_id[denied.headers["x-request-id"]]["status"] == 401
    assert by_id[denied.headers["x-request-id"]]["attempts"] == 0    # no upstream call


async def test_access_lines_are_off_unless_asked_for(start: Start,
                                                      log_lines: list[str]) -> None:
    observed = await start(log_requests=False)
    key = await observed.new_key(max_budget=1)
    assert (await observed.http.post("/v1/chat/completions", json=chat(),
                                     headers=bearer(key))).status_code == 200
    assert not [line for line in log_lines if '"faregate.access"' in line]


async def test_no_secret_and_no_prompt_in_any_log_line(observed: RunningGateway,
                                                       log_lines: list[str]) -> None:
    gw = observed
    key = await gw.new_key(key_alias="svc", max_budget=1)
    other = await gw.new_key(max_budget=0.0000001)
    body = chat(PROMPT_MARKER)
    await gw.http.post("/v1/chat/completions", json=body, headers=bearer(key))
    await stream_chat(gw, key)
    await gw.http.post("/v1/chat/completions", json=body, headers=bearer(other))      # 429
    await gw.http.post("/v1/chat/completions", json={**body, "model": "broken-model"},
                       headers=bearer(key))                                         # 401
    await gw.http.post("/v1/chat/completions", json={**body, "model": "nope"},
                       headers=bearer(key))
    await gw.http.post("/v1/chat/completions", json=body,
                       headers=bearer("sk-not-a-real-key-0000"))
    await gw.http.post("/v1/chat/completions", json=body,
                       headers={"Authorization": f"Basic {MASTER_KEY}"})
    await gw.http.post("/v1/chat/completions", content=b'{"messages": [' + PROMPT_MARKER.encode(),
                       headers=bearer(key))
    await gw.http.get("/key/info", params={"key": key}, headers=bearer(MASTER_KEY))
    await gw.http.get("/key/list", headers=bearer(key))                              # 403
    await gw.http.post("/key/update", json={"key": key, "max_budget": "x"},
                       headers=bearer(MASTER_KEY))                                   # 422
    await gw.http.post("/key/regenerate", json={"key": other}, headers=bearer(MASTER_KEY))
    await gw.http.get("/metrics", headers=bearer(MASTER_KEY))
    await gw.http.get("/health/readiness")
    await scrape(gw)
    await gw.app.ledger.flush()

    assert any('"faregate.access"' in line for line in log_lines)   # the check saw lines
    secrets = [MASTER_KEY, key, other, hash_key(key), hash_key(other), "upstream-secret",
               "sk-not-a-real-key-0000", PROMPT_MARKER]
    for line in log_lines:
        orjson.loads(line)
        for secret in secrets:
            assert secret not in line, (secret, line)
        assert not re.search(r"(?i)bearer\s+(?!\*\*\*)\S", line), line   # a credential

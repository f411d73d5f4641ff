"""Two `faregate serve` processes on one database without REDIS_URL: the first serves, the
second refuses /v1 traffic with a 503 naming REDIS_URL (after holding it) and says why in its
readiness; when the first drains (SIGTERM), a request held by the second is admitted, and the
second serves alone. The rolling deploy of one replica (docs/replicas.md)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from e2e.conftest import ServedGateway, start_gateway
from prometheus_client.parser import text_string_to_metric_families
from support import MASTER_KEY, chat, env_for, stop, write_config


def readiness(gw: ServedGateway) -> httpx.Response:
    return httpx.get(f"{gw.base_url}/health/readiness", timeout=10)


def call(gw: ServedGateway, key: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(),
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def gauges(gw: ServedGateway) -> dict[str, float]:
    text = httpx.get(f"{gw.base_url}/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {MASTER_KEY}"}).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in ("faregate_replicas_other_live", "faregate_admission_refused")}


def until(check: Any, what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_second_process_without_redis_waits_for_the_first_and_takes_over(
        db_url: str, mock_upstream: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    first_env = {**os.environ, **env_for(db_url, tmp_path / "first")}
    second_env = {**os.environ, **env_for(db_url, tmp_path / "second")}   # own spend journals
    for env in (first_env, second_env):
        env.pop("REDIS_URL", None)
    first = start_gateway(tmp_path, first_env, ["--config", str(cfg)])
    second: ServedGateway | None = None
    try:
        key = httpx.post(f"{first.base_url}/key/generate", json={},
                         headers={"Authorization": f"Bearer {MASTER_KEY}"},
                         timeout=10).json()["key"]
        assert call(first, key).status_code == 200
        second = start_gateway(tmp_path, second_env, ["--config", str(cfg)])
        ready = until(lambda: (r := readiness(second)).json().get("admission_refused") and r,
                      "the second process never saw the first")
        # a handover, not yet a conflict: ready, with the reason and the other process named
        assert ready.status_code == 200, ready.text
        assert "REDIS_URL" in ready.json()["admission_refused"]
        assert [r["pid"] for r in ready.json()["other_replicas"]] == [first.proc.pid]
        first_ready = until(lambda: (r := readiness(first)).json()["other_replicas"] and r,
                            "the first process never saw the second")
        assert first_ready.status_code == 200 and "admission_refused" not in first_ready.json()
        assert call(first, key).status_code == 200          # the first keeps serving
        assert gauges(second) == {"faregate_replicas_other_live": 1,
                                  "faregate_admission_refused": 1}
        assert gauges(first) == {"faregate_replicas_other_live": 1,
                                 "faregate_admission_refused": 0}

        refused = call(second, key)                          # held, then refused
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "replicas_without_redis"
        assert "REDIS_URL" in refused.json()["error"]["message"]
        assert "refusing requests" in second.output().lower()

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(call, second, key)
            time.sleep(1.0)
            assert not held.done()                           # waiting, not refused
            first.proc.send_signal(signal.SIGTERM)           # its drain begins: it leaves
            assert held.result().status_code == 200
        assert first.proc.wait(30) == 0
        alone = readiness(second)
        assert alone.status_code == 200, alone.text
        assert alone.json()["other_replicas"] == [] and "admission_refused" not in alone.json()
        assert call(second, key).status_code == 200
    finally:
        stop(first.proc)
        if second is not None:
            stop(second.proc)

"""`faregate serve` as a real process: its log lines are JSON carrying the request id and no
secret, and with --workers every worker's /metrics shows the sum over all workers."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from e2e.conftest import start_gateway
from e2e.test_replicas import RedisServer
from prometheus_client.parser import text_string_to_metric_families
from support import MASTER_KEY, chat, env_for, stop, write_config

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
PROMPT = "walrus-obsidian-prompt-marker"


def with_general(cfg: Path, **general: object) -> Path:
    raw = yaml.safe_load(cfg.read_text())
    raw["general_settings"].update(general)
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


def new_key(base_url: str, **fields: object) -> str:
    resp = httpx.post(f"{base_url}/key/generate", headers=ADMIN,
                      json={"models": ["qwen-local"], "max_budget": 1, **fields})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["key"])


def test_serve_logs_json_lines_with_the_request_id_and_no_secret(
        mock_upstream: str, tmp_path: Path) -> None:
    cfg = with_general(write_config(tmp_path / "config.yaml", mock_upstream), log_requests=True)
    env = {**os.environ, **env_for(f"sqlite:///{tmp_path / 'f.db'}", tmp_path)}
    env.pop("FAREGATE_LOG_FORMAT", None)                # the default: JSON
    gw = start_gateway(tmp_path, env, ["--config", str(cfg)])
    try:
        key = new_key(gw.base_url, key_alias="e2e")
        ok = httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(PROMPT),
                        headers={"Authorization": f"Bearer {key}", "x-request-id": "trace-7"})
        denied = httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(PROMPT),
                            headers={"Authorization": "Bearer sk-wrong-key-123456"})
        assert (ok.status_code, denied.status_code) == (200, 401)
        gw.proc.terminate()
        assert gw.proc.wait(30) == 0, gw.output()
    finally:
        stop(gw.proc)
    output = gw.output()
    lines = [line for line in output.splitlines() if line.strip()]
    # Start-up banners are plain prints; every log line is one JSON object.
    records = [orjson.loads(line) for line in lines if not line.startswith("faregate: ")]
    access = {r["request_id"]: r for r in records if r["logger"] == "faregate.access"}
    served = access[ok.headers["x-request-id"]]
    assert served["client_request_id"] == "trace-7" and served["status"] == 200
    assert served["key_alias"] == "e2e" and served["model"] == "qwen-local"
    assert access[denied.headers["x-request-id"]]["status"] == 401
    for secret in (MASTER_KEY, key, "sk-wrong-key-123456", "upstream-secret", PROMPT):
        assert secret not in output


@pytest.fixture
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (Debian package redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def requests_counted(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", headers={"Connection": "close",
                                                "Authorization": f"Bearer {MASTER_KEY}"}).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "faregate_proxy_total_requests_metric_total")


def test_workers_share_their_metrics(pg_migrated_url: str, mock_upstream: str,
                                     redis: RedisServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(pg_migrated_url, tmp_path), "REDIS_URL": redis.url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)       # the supervisor makes its own
    gw = start_gateway(tmp_path, env, ["--config", str(cfg), "--workers", "2"])
    try:
        deadline = time.monotonic() + 30
        while gw.output().count("faregate: listening on") < 2:   # both workers up
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)
        key = new_key(gw.base_url)
        served_by: set[str] = set()
        for _ in range(40):
            # A new connection per request, so the kernel spreads them over the workers.
            resp = httpx.post(f"{gw.base_url}/v1/chat/completions", json=chat(), headers={
                "Authorization": f"Bearer {key}", "Connection": "close"})
            assert resp.status_code == 200, resp.text
            served_by.add(resp.headers["x-request-id"][:16])     # the worker's id prefix
        assert len(served_by) == 2, "the kernel sent every request to one worker"
        # Whichever worker answers the scrape, it reports all 40.
        assert [requests_counted(gw.base_url) for _ in range(6)] == [40] * 6
        gw.proc.terminate()
        assert gw.proc.wait(30) == 0, gw.output()
    finally:
        stop(gw.proc)

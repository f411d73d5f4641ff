"""A local rehearsal of the Kubernetes bring-up with real processes, driven by what the chart
renders: the Deployment's command and environment, the migration Job's command and
environment, the ConfigMap's config.yaml (its api_base pointed at the mock upstream).

1. a replica started before the migration refuses to start, and says to run the migration;
2. the Job's `faregate migrate` brings a fresh Postgres database to the newest schema;
3. two replicas with DISABLE_SCHEMA_UPDATE=true share that database and one redis-server;
4. `faregate validate` passes against them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy.conftest import config_yaml, container, render, the
from support import (
    MASTER_KEY,
    free_port,
    fresh_pg_database,
    mock_upstream_process,
    stop,
    wait_for_port,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="needs redis-server (Debian package redis-server)"),
]
METRICS_TOKEN = "rehearsal-metrics-token-0123456789"
VARIANT = "production"          # several replicas + Redis: the bring-up worth rehearsing
UPSTREAM_KEY = "vllm-rehearsal-key"


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database of this test's own, never migrated by anyone else (the session-wide one
    may already be migrated by other tests)."""
    with fresh_pg_database("faregate_rehearsal") as url:
        yield url


@pytest.fixture
def keyed_upstream() -> Iterator[str]:
    """The mock upstream demanding the vLLM API key, so the key's way from its Secret through
    the env and config.yaml's os.environ/VLLM_API_KEY to the upstream call is checked too."""
    with mock_upstream_process("--api-key", UPSTREAM_KEY) as url:
        yield url


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port, stopped by its PID."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


class Cluster:
    """Stands in for the kubelet: Secrets by name, env and args from the rendered objects."""

    def __init__(self, objects: list[dict[str, Any]], secrets: dict[tuple[str, str], str],
                 tmp: Path, upstream: str) -> None:
        self.objects, self.secrets, self.tmp = objects, secrets, tmp
        cfg = yaml.safe_load(config_yaml(objects))
        for model in cfg["model_list"]:
            model["litellm_params"]["api_base"] = upstream
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, workload: dict[str, Any], name: str) -> dict[str, str]:
        data_dir = self.tmp / f"data-{name}"
        data_dir.mkdir(exist_ok=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(self.tmp)}
        for entry in container(workload).get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                if ref.get("optional") and (ref["name"], ref["key"]) not in self.secrets:
                    continue                    # as Kubernetes does: the variable is unset
                env[entry["name"]] = self.secrets[(ref["name"], ref["key"])]
        assert env["FAREGATE_DATA_DIR"].startswith("/")
        env["FAREGATE_DATA_DIR"] = str(data_dir)            # the pod's emptyDir
        return env

    def args(self, workload: dict[str, Any], port: int) -> list[str]:
        """The container's args, with the mounted paths and the port made local."""
        args = list(container(workload)["args"])
        for flag, value in (("--config", str(self.config)), ("--host", "127.0.0.1"),
                            ("--port", str(port))):
            if flag in args:
                args[args.index(flag) + 1] = value
        return args

    def run_job(self) -> subprocess.CompletedProcess[str]:
        job = the(self.objects, "Job")
        return subprocess.run([sys.executable, "-m", "faregate", *self.args(job, 0)],
                              env=self.env(job, "job"), capture_output=True, text=True,
                              timeout=120, cwd=self.tmp)

    def run_pod_to_exit(self, name: str) -> subprocess.CompletedProcess[str]:
        deployment = the(self.objects, "Deployment")
        try:
            return subprocess.run(
                [sys.executable, "-m", "faregate", *self.args(deployment, free_port())],
                env=self.env(deployment, name), capture_output=True, text=True, timeout=20,
                cwd=self.tmp)
        except subprocess.TimeoutExpired:       # subprocess.run has killed it
            pytest.fail(f"{name}: still running after 20 s instead of refusing to start")

    def start_pod(self, name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
        deployment = the(self.objects, "Deployment")
        port = free_port()
        log = self.tmp / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "faregate", *self.args(deployment, port)],
                env=self.env(deployment, name), stdout=out, stderr=subprocess.STDOUT,
                cwd=self.tmp)
        self.procs.append(proc)
        try:
            wait_for_port(port, proc=proc)
        except Exception:
            raise AssertionError(f"{name} did not start:\n{log.read_text()}") from None
        return proc, f"http://127.0.0.1:{port}", log

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)


def probe(base_url: str, path: str) -> int:
    return httpx.get(base_url + path, timeout=5).status_code


def test_bring_up_migrate_then_replicas_then_validate(
        fresh_database: str, redis_url: str, keyed_upstream: str, tmp_path: Path) -> None:
    objects = render(VARIANT)
    secrets = {
        ("faregate-secrets", "PROXY_MASTER_KEY"): MASTER_KEY,
        ("faregate-secrets", "FAREGATE_SALT_KEY"): "rehearsal-salt-" + "0" * 48,
        ("faregate-pg-app", "uri"): fresh_database,
        ("faregate-redis", "REDIS_URL"): redis_url,
        ("vllm-api-key", "VLLM_API_KEY"): UPSTREAM_KEY,
        ("faregate-metrics-token", "FAREGATE_METRICS_TOKEN"): METRICS_TOKEN,
    }
    cluster = Cluster(objects, secrets, tmp_path, keyed_upstream)
    try:
        # 1. a replica scheduled before the migration Job ran refuses, and says what to do
        early = cluster.run_pod_to_exit("early")
        assert early.returncode == 2, early.stdout + early.stderr
        assert "faregate migrate" in early.stderr
        assert "DISABLE_SCHEMA_UPDATE" in early.stderr

        # 2. the PreSync Job: `faregate migrate` against the fresh database
        job = cluster.run_job()
        assert job.returncode == 0, job.stdout + job.stderr
        assert "schema is at revision" in job.stdout
        assert cluster.run_job().returncode == 0               # a re-sync migrates nothing

        # 3. two replicas on the migrated database and one Redis
        pods = [cluster.start_pod(f"replica-{i}") for i in range(2)]
        for _, url, log in pods:
            assert probe(url, "/health/liveliness") == 200
            assert probe(url, "/health/readiness") == 200, log.read_text()
            assert "shared through Redis" in log.read_text()

        # Prometheus' scrape: the token the ServiceMonitor sends opens /metrics; nothing else
        scrape = httpx.get(f"{pods[0][1]}/metrics", timeout=10,
                           headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scrape.status_code == 200 and "faregate_" in scrape.text
        assert probe(pods[0][1], "/metrics") == 401

        # 4. the runbook's validation against one replica ...
        (_, first, _), (_, second, _) = pods
        result = subprocess.run([sys.executable, "-m", "faregate", "validate", "--base-url",
                                 first, "--master-key", MASTER_KEY, "--model", "qwen-local"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "8 passed, 0 failed" in result.stdout.splitlines()
        # ... and one database and one Redis behind both: a key minted on one replica is
        # served by the other, and its spend is seen on the first
        admin = {"Authorization": f"Bearer {MASTER_KEY}"}
        rows = httpx.get(f"{second}/spend/logs", headers=admin, timeout=10).json()
        assert len(rows) >= 2                                  # validate's calls, on `first`
        key = httpx.post(f"{first}/key/generate", json={"models": ["qwen-local"],
                                                        "max_budget": 1}, headers=admin,
                         timeout=10).json()["key"]
        answer = httpx.post(f"{second}/v1/chat/completions", timeout=30,
                            headers={"Authorization": f"Bearer {key}"},
                            json={"model": "qwen-local", "max_tokens": 4,
                                  "messages": [{"role": "user", "content": "ping"}]})
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 10                       # the ledger flushes every 0.2 s
        while True:
            info = httpx.get(f"{first}/key/info", params={"key": key}, headers=admin,
                             timeout=10).json()["info"]
            if info["total_spend"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert info["total_spend"] > 0, info

        # 5. a rolling update's SIGTERM: each replica drains and exits 0 well inside the
        #    grace period the Deployment gives it
        grace = the(objects, "Deployment")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"]
        for proc, _, log in pods:
            proc.terminate()
            assert proc.wait(grace) == 0, log.read_text()
    finally:
        cluster.stop_all()

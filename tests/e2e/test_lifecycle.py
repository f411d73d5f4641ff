"""Start-up and shutdown as an operator sees them: migrations, config errors, the demo, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from conftest import in_thread
from e2e.conftest import start_gateway
from support import MASTER_KEY, chat, env_for, stop, write_config

from faregate.storage.database import SpendQuery, SqlStorage


def faregate(*args: str, env: dict[str, str], cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faregate", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_sigterm_flushes_every_spend_row(db_url: str, mock_upstream: str,
                                         tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(db_url, tmp_path)}
    gw = start_gateway(tmp_path, env, ["--config", str(cfg)])
    try:
        auth = {"Authorization": f"Bearer {MASTER_KEY}"}
        key = httpx.post(f"{gw.base_url}/key/generate", json={"max_budget": 1},
                         headers=auth).json()["key"]
        with httpx.Client(base_url=gw.base_url, timeout=30) as http:
            ok = sum(http.post("/v1/chat/completions", json=chat(),
                               headers={"Authorization": f"Bearer {key}"}).status_code == 200
                     for _ in range(40))
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0, gw.output()
    finally:
        stop(gw.proc)
    assert ok == 40

    async def rows() -> list[dict]:
        storage = SqlStorage.from_url(db_url)
        try:
            return await storage.spend_logs(SpendQuery(page_size=1000))
        finally:
            await storage.close()

    recorded = in_thread(asyncio.run, rows())
    assert len(recorded) == 40


def test_disable_schema_update_refuses_a_database_behind(mock_upstream: str,
                                                         tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(url, tmp_path), "DISABLE_SCHEMA_UPDATE": "true"}
    refused = faregate("serve", "--config", str(cfg), "--port", "1", env=env)
    assert refused.returncode == 2
    assert "faregate migrate" in refused.stderr and "DISABLE_SCHEMA_UPDATE" in refused.stderr
    migrated = faregate("migrate", "--config", str(cfg), env=env)
    assert migrated.returncode == 0, migrated.stderr
    gw = start_gateway(tmp_path, env, ["--config", str(cfg)])
    try:
        assert httpx.get(f"{gw.base_url}/health/readiness").json()["db"] == "connected"
    finally:
        stop(gw.proc)


def test_a_model_without_a_price_is_a_start_up_error(mock_upstream: str,
                                                     tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "free-lunch", "litellm_params": {
        "model": "openai/x", "api_base": mock_upstream}}]}))
    env = {**os.environ, **env_for(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)}
    result = faregate("serve", "--config", str(cfg), env=env)
    assert result.returncode == 2
    assert "model_list[0] (free-lunch)" in result.stderr
    assert "input_cost_per_token" in result.stderr


def test_demo_with_no_config_keeps_its_master_key_across_restarts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "FAREGATE_MASTER_KEY", "LITELLM_MASTER_KEY",
                        "PROXY_MASTER_KEY", "FAREGATE_DATA_DIR")}
    gw = start_gateway(tmp_path, env, [], cwd=tmp_path)
    try:
        assert "master key from file" in gw.output()
        master = (tmp_path / ".faregate" / "master_key").read_text().strip()
        auth = {"Authorization": f"Bearer {master}"}
        key = httpx.post(f"{gw.base_url}/key/generate", json={"max_budget": 1},
                         headers=auth).json()["key"]
        reply = httpx.post(f"{gw.base_url}/v1/chat/completions",
                           json={**chat(), "model": "demo"},
                           headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
    finally:
        stop(gw.proc)
    again = start_gateway(tmp_path, env, [], cwd=tmp_path)
    try:
        assert (tmp_path / ".faregate" / "master_key").read_text().strip() == master
        reply = httpx.post(f"{again.base_url}/v1/chat/completions",
                           json={**chat(), "model": "demo"},
                           headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
    finally:
        stop(again.proc)


def test_migrate_needs_only_the_database_url(mock_upstream: str, tmp_path: Path) -> None:
    """The migration job gets the database secret, nothing else; it must mint no master key."""
    url = f"sqlite:///{tmp_path / 'job.db'}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("FAREGATE_MASTER_KEY", "LITELLM_MASTER_KEY", "PROXY_MASTER_KEY")}
    env.update({"DATABASE_URL": url, "FAREGATE_DATA_DIR": str(tmp_path / "data")})
    result = faregate("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data" / "master_key").exists()

"""The salt-key rotation of issue #5 with real processes on Postgres: stored credentials stay
readable before, during and after `faregate rotate-salt-key`, and nothing is left under the old
key. The upstream requires its key, so every successful chat proves a credential was opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml
from e2e.conftest import ServedGateway, start_gateway
from support import (
    MASTER_KEY,
    env_for,
    fresh_pg_database,
    in_thread,
    mock_upstream_process,
    stop,
    write_config,
)

from faregate.catalog.sealing import key_id
from faregate.secret import Secret

OLD = "old-salt-key-0123456789abcdef0123"
NEW = "new-salt-key-fedcba9876543210fedc"
UPSTREAM_KEY = "upstream-key-rotation-e2e-5c1d"
MODELS = 12
POLL_S = 0.2


@pytest.fixture
def keyed_upstream() -> Iterator[str]:
    with mock_upstream_process("--api-key", UPSTREAM_KEY) as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database("faregate_rotation") as url:
        yield url


def admin(gw: ServedGateway, path: str, body: dict) -> httpx.Response:
    return httpx.post(gw.base_url + path, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"})


def chat(gw: ServedGateway, key: str, model: str) -> int:
    resp = httpx.post(gw.base_url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "max_tokens": 2,
                            "messages": [{"role": "user", "content": "ping"}]})
    return resp.status_code


def chat_all(gw: ServedGateway, key: str) -> list[int]:
    return [chat(gw, key, f"stored-{i}") for i in range(MODELS)]


async def sealed_key_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT litellm_params FROM faregate_models ORDER BY id")
    finally:
        await conn.close()
    out = []
    for row in rows:
        assert UPSTREAM_KEY not in row["litellm_params"]
        sealed = json.loads(row["litellm_params"])["api_key"]
        out.append(sealed.split(":")[1])
    return out


def test_rotation_keeps_credentials_readable_before_during_and_after(
        tmp_path: Path, pg_url: str, mock_upstream: str, keyed_upstream: str) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    raw = yaml.safe_load(cfg.read_text())
    raw["general_settings"]["stored_models_poll_interval_s"] = POLL_S
    cfg.write_text(yaml.safe_dump(raw))
    base_env = {**os.environ, **env_for(pg_url, tmp_path)}
    for name in ("FAREGATE_SALT_KEY", "LITELLM_SALT_KEY", "FAREGATE_SALT_KEY_PREVIOUS",
                 "FAREGATE_NEW_SALT_KEY"):
        base_env.pop(name, None)
    old_id, new_id = key_id(Secret(OLD)), key_id(Secret(NEW))

    # before: the old key seals every stored credential
    gw = start_gateway(tmp_path, {**base_env, "FAREGATE_SALT_KEY": OLD}, ["--config", str(cfg)])
    try:
        for i in range(MODELS):
            resp = admin(gw, "/model/new", {"model_name": f"stored-{i}", "litellm_params": {
                "model": "openai/m", "api_base": keyed_upstream, "api_key": UPSTREAM_KEY,
                "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}})
            assert resp.status_code == 200, resp.text
        key = admin(gw, "/key/generate", {"models": []}).json()["key"]
        assert chat_all(gw, key) == [200] * MODELS
    finally:
        stop(gw.proc)
    assert in_thread(asyncio.run, sealed_key_ids(pg_url)) == [old_id] * MODELS

    # during: new key seals, old still opens; the rotation runs as its own process
    during_env = {**base_env, "FAREGATE_SALT_KEY": NEW, "FAREGATE_SALT_KEY_PREVIOUS": OLD}
    gw = start_gateway(tmp_path, during_env, ["--config", str(cfg)])
    try:
        assert chat_all(gw, key) == [200] * MODELS
        rotate = subprocess.Popen(
            [sys.executable, "-m", "faregate", "rotate-salt-key", "--config", str(cfg)],
            env={**during_env, "FAREGATE_NEW_SALT_KEY": NEW}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        statuses = []
        while rotate.poll() is None:
            statuses += chat_all(gw, key)
        out = rotate.communicate(timeout=60)[0]
        assert rotate.returncode == 0, out
        assert f"to key id {new_id}: {MODELS} stored models, {MODELS} credentials " \
               "re-encrypted, 0 already under the new key, 0 models failed" in out
        # the gateway re-reads the re-sealed rows on its next polls, still serving
        for _ in range(3):
            statuses += chat_all(gw, key)
        assert set(statuses) == {200}, statuses
        print(f"rotation e2e: {len(statuses)} chats during and just after the rotation, all 200")
        assert "is not served" not in gw.output()      # the re-read rows opened under NEW
        again = subprocess.run(
            [sys.executable, "-m", "faregate", "rotate-salt-key", "--config", str(cfg)],
            env={**during_env, "FAREGATE_NEW_SALT_KEY": NEW}, capture_output=True, text=True,
            timeout=60)
        assert again.returncode == 0 and f"0 credentials re-encrypted, {MODELS} already" in \
            again.stdout, again.stdout + again.stderr
        for text in (out, again.stdout, again.stderr, gw.output()):
            for secret in (OLD, NEW, UPSTREAM_KEY, MASTER_KEY, key):
                assert secret not in text
    finally:
        stop(gw.proc)
    assert in_thread(asyncio.run, sealed_key_ids(pg_url)) == [new_id] * MODELS

    # after: the old key is gone everywhere; a restarted gateway still opens everything
    gw = start_gateway(tmp_path, {**base_env, "FAREGATE_SALT_KEY": NEW}, ["--config", str(cfg)])
    try:
        assert chat_all(gw, key) == [200] * MODELS
        assert "is not served" not in gw.output()
    finally:
        stop(gw.proc)


def test_a_gateway_without_the_sealing_key_says_which_setting_to_fix(
        tmp_path: Path, pg_url: str, mock_upstream: str, keyed_upstream: str) -> None:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    base_env = {**os.environ, **env_for(pg_url, tmp_path)}
    gw = start_gateway(tmp_path, {**base_env, "FAREGATE_SALT_KEY": OLD}, ["--config", str(cfg)])
    try:
        resp = admin(gw, "/model/new", {"model_name": "stored-0", "litellm_params": {
            "model": "openai/m", "api_base": keyed_upstream, "api_key": UPSTREAM_KEY,
            "input_cost_per_token": 0, "output_cost_per_token": 0}})
        assert resp.status_code == 200, resp.text
    finally:
        stop(gw.proc)
    gw = start_gateway(tmp_path, {**base_env, "FAREGATE_SALT_KEY": NEW}, ["--config", str(cfg)])
    try:
        key = admin(gw, "/key/generate", {"models": []}).json()["key"]
        assert chat(gw, key, "stored-0") == 400             # not served: unknown model
        assert chat(gw, key, "qwen-local") == 200           # the others are
        log = gw.output()
        assert "is not served" in log and "FAREGATE_SALT_KEY_PREVIOUS" in log
        assert key_id(Secret(OLD)) in log
        assert OLD not in log and NEW not in log and UPSTREAM_KEY not in log
    finally:
        stop(gw.proc)
    # the rotation tool cannot open it either, and says so with a non-zero exit
    rotate = subprocess.run(
        [sys.executable, "-m", "faregate", "rotate-salt-key", "--config", str(cfg)],
        env={**base_env, "FAREGATE_SALT_KEY": NEW, "FAREGATE_NEW_SALT_KEY": NEW},
        capture_output=True, text=True, timeout=60)
    assert rotate.returncode == 1 and "1 models failed" in rotate.stdout, rotate.stdout
    assert OLD not in rotate.stdout + rotate.stderr and NEW not in rotate.stdout + rotate.stderr


def readiness(gw: ServedGateway) -> httpx.Response:
    return httpx.get(gw.base_url + "/health/readiness", timeout=30)


def test_a_replica_without_the_new_key_keeps_serving_from_memory_and_a_restart_is_not_ready(
        tmp_path: Path, pg_url: str, mock_upstream: str, keyed_upstream: str) -> None:
    """Rotated to NEW while a replica holding only OLD runs: it keeps serving the models with
    the credentials it opened before (and says so in readiness); restarted with only OLD it
    cannot open them, and readiness refuses instead of starting 'healthy'."""
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    raw = yaml.safe_load(cfg.read_text())
    raw["general_settings"]["stored_models_poll_interval_s"] = POLL_S
    cfg.write_text(yaml.safe_dump(raw))
    base_env = {**os.environ, **env_for(pg_url, tmp_path)}
    for name in ("FAREGATE_SALT_KEY", "LITELLM_SALT_KEY", "FAREGATE_SALT_KEY_PREVIOUS",
                 "FAREGATE_NEW_SALT_KEY"):
        base_env.pop(name, None)
    gw = start_gateway(tmp_path, {**base_env, "FAREGATE_SALT_KEY": OLD}, ["--config", str(cfg)])
    try:
        resp = admin(gw, "/model/new", {"model_name": "stored-0", "litellm_params": {
            "model": "openai/m", "api_base": keyed_upstream, "api_key": UPSTREAM_KEY,
            "input_cost_per_token": 0, "output_cost_per_token": 0}})
        assert resp.status_code == 200, resp.text
        key = admin(gw, "/key/generate", {"models": []}).json()["key"]
        assert chat(gw, key, "stored-0") == 200
        rotate = subprocess.run(
            [sys.executable, "-m", "faregate", "rotate-salt-key", "--config", str(cfg)],
            env={**base_env, "FAREGATE_SALT_KEY": OLD, "FAREGATE_NEW_SALT_KEY": NEW},
            capture_output=True, text=True, timeout=60)
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr
        deadline = time.monotonic() + 30
        while "cannot be opened any more" not in gw.output():   # the next poll read it
            assert time.monotonic() < deadline, gw.output()[-2000:]
            time.sleep(POLL_S)
        assert [chat(gw, key, "stored-0") for _ in range(5)] == [200] * 5
        ready = readiness(gw)
        assert ready.status_code == 200, ready.text
        assert ready.json()["stored_models_kept_from_memory"] == list(
            ready.json()["stored_models_unopened"])
    finally:
        stop(gw.proc)
    gw = start_gateway(tmp_path, {**base_env, "FAREGATE_SALT_KEY": OLD}, ["--config", str(cfg)])
    try:
        ready = readiness(gw)
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "unhealthy"
        assert len(ready.json()["stored_models_unopened"]) == 1
        assert ready.json()["stored_models_kept_from_memory"] == []
        assert OLD not in ready.text and NEW not in ready.text and UPSTREAM_KEY not in ready.text
    finally:
        stop(gw.proc)

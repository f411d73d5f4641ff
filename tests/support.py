"""Helpers shared by the API and end-to-end tests (imported as `support`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import yaml

MASTER_KEY = "sk-test-master-0123456789"
FAULT_TABLE_ENV = "FAREGATE_TEST_FAULT_TABLE"   # the file the fault suite's table lines go to
PG_ADMIN_URL = os.environ.get("FAREGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PRICE_IN = 0.000001
PRICE_OUT = 0.000002


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s}s")


def stop(proc: subprocess.Popen) -> None:
    """End a process this test run started (by its PID, never by name)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def mock_upstream_process(*args: str) -> Iterator[str]:
    """The project's mock upstream as a real process (extra CLI arguments, e.g. `--api-key K`),
    ended by PID afterwards. Yields its /v1 URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "faregate", "mock-upstream", "--port",
                             str(port), *args], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def write_config(path: Path, upstream: str, *, database_url: str | None = None,
                 extra_models: list[dict[str, Any]] | None = None,
                 model_info: dict[str, Any] | None = None) -> Path:
    """The issue's config.yaml, pointed at the mock upstream."""
    general: dict[str, Any] = {"master_key": "os.environ/FAREGATE_MASTER_KEY"}
    if database_url:
        general["database_url"] = database_url
    cfg = {
        "model_list": [
            {"model_name": "qwen-local",
             "litellm_params": {"model": "openai/qwen-local", "api_base": upstream,
                                "api_key": "os.environ/VLLM_API_KEY",
                                "input_cost_per_token": PRICE_IN,
                                "output_cost_per_token": PRICE_OUT},
             "model_info": {"max_output_tokens": 4096, **(model_info or {})}},
            {"model_name": "other-model",
             "litellm_params": {"model": "openai/other", "api_base": upstream,
                                "input_cost_per_token": PRICE_IN,
                                "output_cost_per_token": PRICE_OUT}},
            *(extra_models or []),
        ],
        "general_settings": general,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def env_for(database_url: str, data_dir: Path) -> dict[str, str]:
    return {"FAREGATE_MASTER_KEY": MASTER_KEY, "VLLM_API_KEY": "upstream-secret",
            "DATABASE_URL": database_url, "FAREGATE_DATA_DIR": str(data_dir)}


def chat(content: str = "ping", max_tokens: int | None = 16, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "qwen-local",
                            "messages": [{"role": "user", "content": content}], **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def pg_admin(sql: str) -> None:
    """Run one statement on the server's admin database (CREATE/DROP DATABASE)."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def in_thread(fn: Any, *args: Any) -> Any:
    """Run blocking code that calls asyncio.run, even when a test's loop is running here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "faregate_test") -> Iterator[str]:
    """A Postgres database of the caller's own, dropped afterwards. Yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    in_thread(asyncio.run, pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        in_thread(asyncio.run, pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def token(n: int) -> str:
    """A key token (64 hex characters, as a key's SHA-256) numbered n."""
    return f"{n:064x}"

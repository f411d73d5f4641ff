"""A database that is up but cannot serve (ALLOW_CONNECTIONS false: new connections get SQLSTATE
55000) is the documented outage: readiness JSON 503 (or 200 `degraded`), admin routes and unknown
keys 503 `database_unavailable` in OpenAI's error shape, known keys per the setting; after it
serves again everything recovers and no spend row is lost. And `faregate serve` started while it
refuses says so in one line and retries until it can. Real processes, a fresh database each."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from faults.conftest import model, new_key, start
from faults.harness import (
    FaultTable,
    Ledger,
    Load,
    check_and_record,
    drive,
    read_ledger,
    wait_until_written,
)
from support import (
    MASTER_KEY,
    PG_ADMIN_URL,
    chat,
    free_port,
    fresh_pg_database,
    in_thread,
    pg_admin,
    stop,
    wait_for_port,
)

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}


def allow_connections(url: str, allowed: bool) -> None:
    """ALTER DATABASE ... ALLOW_CONNECTIONS; refusing also ends the connections it holds (the
    gateway's pool), so that every next query needs a new connection and meets the 55000."""
    name = url.rsplit("/", 1)[1]

    async def run() -> None:
        await pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if allowed:
            return
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
            for _ in range(200):
                if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                           "WHERE datname = $1", name):
                    return
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    in_thread(asyncio.run, run())


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_pg_database("faregate_refusing") as url:
        try:
            yield url
        finally:
            allow_connections(url, True)      # DROP ... WITH (FORCE) needs it back


def openai_error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return dict(body["error"])


@pytest.mark.parametrize("serve_while_down", [False, True],
                         ids=["setting-off", "allow_requests_on_db_unavailable"])
def test_database_refusing_connections_is_the_documented_outage(
        database: str, fault_mock: str, tmp_path: Path, fault_table: FaultTable,
        serve_while_down: bool) -> None:
    general = {"allow_requests_on_db_unavailable": True} if serve_while_down else {}
    # A key the serving gateway has never seen (its /key/generate would cache it): made by
    # another process on the same database.
    (tmp_path / "other").mkdir()
    other = start(tmp_path / "other", database, [model("qwen-local", fault_mock)])
    try:
        unknown = new_key(other.base_url, max_budget=100)
    finally:
        stop(other.proc)
    gw = start(tmp_path, database, [model("qwen-local", fault_mock)], general)
    try:
        known = new_key(gw.base_url, max_budget=100)

        async def scenario() -> tuple[Load, dict[str, Any], Ledger]:
            before = await drive(gw.base_url, known, [chat(f"b{i}") for i in range(5)], 2)
            assert before.failures() == {}
            await asyncio.to_thread(allow_connections, database, False)
            seen: dict[str, Any] = {}
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
                ready = await http.get("/health/readiness")
                seen["ready"] = (ready.status_code, ready.headers["content-type"], ready.json())
                for method, path in [("GET", "/key/list"), ("GET", "/global/spend"),
                                     ("GET", "/spend/logs"), ("POST", "/key/generate")]:
                    resp = await http.request(method, path, headers=ADMIN,
                                              json={} if method == "POST" else None)
                    seen[path] = (resp.status_code, openai_error(resp)["code"])
                resp = await http.post("/v1/chat/completions", json=chat("u"),
                                       headers={"Authorization": f"Bearer {unknown}"})
                seen["unknown key"] = (resp.status_code, openai_error(resp)["code"])
                seen["live"] = (await http.get("/health/liveliness")).status_code
            during = await drive(gw.base_url, known, [chat(f"d{i}") for i in range(20)], 2)
            await asyncio.to_thread(allow_connections, database, True)
            state = await wait_until_written(gw.base_url)
            after = await drive(gw.base_url, known, [chat(f"a{i}") for i in range(3)], 1)
            after_unknown = await drive(gw.base_url, unknown, [chat("au")], 1)
            assert after.failures() == {} and after_unknown.failures() == {}
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
                seen["after"] = [(await http.request(m, p, headers=ADMIN,
                                                     json={} if m == "POST" else None)
                                  ).status_code
                                 for m, p in [("GET", "/key/list"), ("GET", "/global/spend"),
                                              ("GET", "/spend/logs"), ("POST", "/key/generate")]]
            seen["during"] = during
            seen["state"] = state
            await wait_until_written(gw.base_url)
            # ... and what this process's /key/info says, after all it served from memory.
            return (Load(before.outcomes + during.outcomes + after.outcomes), seen,
                    await read_ledger(database, known, gw.base_url))

        load, seen, ledger = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    log = gw.output()
    during: Load = seen["during"]
    check_and_record(fault_table, "Postgres refusing connections (55000)" +
                     (" (allow_requests_on_db_unavailable)" if serve_while_down
                      else " (setting off)"),
                     load, ledger, load.ids(lambda o: o.status == 200),
                     "known key served while refusing" if serve_while_down
                     else "503 database_unavailable while refusing")
    status, content_type, body = seen["ready"]
    assert content_type.startswith("application/json")
    assert body["db"] == "disconnected"
    if serve_while_down:
        assert (status, body["status"]) == (200, "degraded")
        assert during.failures() == {}, during.failures()     # the known key keeps working
    else:
        assert (status, body["status"]) == (503, "unhealthy")
        assert set(during.failures()) == {"503"} and not during.served
    for path in ("/key/list", "/global/spend", "/spend/logs", "/key/generate"):
        assert seen[path] == (503, "database_unavailable"), (path, seen[path])
    assert seen["unknown key"] == (503, "database_unavailable")
    assert seen["live"] == 200
    assert seen["after"] == [200, 200, 200, 200]
    assert ledger.rows.keys() == load.ids(lambda o: o.status == 200)   # every served call
    assert "Traceback" not in log, log[-3000:]


def test_serve_started_while_the_database_refuses_waits_and_then_serves(
        database: str, fault_mock: str, tmp_path: Path) -> None:
    allow_connections(database, False)
    cfg = {"model_list": [model("qwen-local", fault_mock)],
           "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FAREGATE_MASTER_KEY": MASTER_KEY, "DATABASE_URL": database,
           "FAREGATE_DATA_DIR": str(tmp_path / "data")}
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faregate", "serve", "--host",
                                 "127.0.0.1", "--port", str(port), "--config", str(path)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while log.read_text().count("cannot serve yet") < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        lines = [ln for ln in text.splitlines() if "cannot serve yet" in ln]
        assert len(lines) >= 2, text                     # it retried
        assert "SQLSTATE 55000" in lines[0] and "retrying in 1s" in lines[0], lines[0]
        assert "retrying in 2s" in lines[1], lines[1]    # with backoff
        assert "Traceback" not in text, text
        assert proc.poll() is None
        allow_connections(database, True)
        wait_for_port(port, timeout_s=30, proc=proc)
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/health/readiness", timeout=10)
        assert ready.status_code == 200 and ready.json()["db"] == "connected"
        key = new_key(base)
        resp = httpx.post(f"{base}/v1/chat/completions", json=chat(),
                          headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert resp.status_code == 200, resp.text
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text()

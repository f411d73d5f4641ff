"""Upstream down, slow and flapping; clients that leave mid-stream. The gateway retries, moves
to another deployment or a fallback model, and cools failing deployments down; whatever the
caller sees, every request that was admitted has exactly one spend row, priced from what the
upstream actually produced."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faults.conftest import model, new_database, new_key, start
from faults.harness import (
    FaultTable,
    Ledger,
    Load,
    check_and_record,
    drive,
    read_ledger,
    wait_until_written,
)
from faults.private_postgres import PrivatePostgres
from support import chat, free_port, mock_upstream_process, stop


@pytest.fixture(scope="module")
def flaky_mock() -> Iterator[str]:
    """A second mock whose faults the tests switch at run time (POST /mock/faults)."""
    with mock_upstream_process() as url:
        yield url


def mock_control(api_base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    root = api_base.removesuffix("/v1")
    resp = httpx.post(root + path, json=body) if body is not None else httpx.get(root + path)
    assert resp.status_code == 200, resp.text
    return resp.json()


def closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"          # nothing listens there


def run_load(private_pg: PrivatePostgres, tmp_path: Path, models: list[dict[str, Any]],
             bodies: list[dict[str, Any]], concurrency: int,
             router_settings: dict[str, Any] | None = None,
             leave_after_chunks: int | None = None) -> tuple[Load, Ledger]:
    db = new_database(private_pg)
    gw = start(tmp_path, db, models, router_settings=router_settings)
    try:
        key = new_key(gw.base_url, max_budget=100)

        async def scenario() -> tuple[Load, Ledger]:
            load = await drive(gw.base_url, key, bodies, concurrency,
                               leave_after_chunks=leave_after_chunks)
            await wait_until_written(gw.base_url)
            return load, await read_ledger(db, key, gw.base_url)

        return asyncio.run(scenario())
    finally:
        stop(gw.proc)


def admitted(load: Load) -> set[str]:
    """Every request that carried an id back: it was admitted, so it must have its row."""
    return load.ids(lambda o: True)


def test_one_of_two_deployments_down(private_pg: PrivatePostgres, fault_mock: str,
                                     tmp_path: Path, fault_table: FaultTable) -> None:
    models = [model("qwen-local", closed_port()), model("qwen-local", fault_mock)]
    load, ledger = run_load(private_pg, tmp_path, models,
                            [chat(f"q{i}") for i in range(200)], 4)
    check_and_record(fault_table, "upstream down: 1 of 2 deployments", load, ledger,
                     admitted(load), "retried on the other; the dead one cools down",
                     allowed_5xx=frozenset({502}))
    assert load.failures() == {}
    assert ledger.rows.keys() == admitted(load)


def test_every_deployment_down(private_pg: PrivatePostgres, tmp_path: Path,
                               fault_table: FaultTable) -> None:
    models = [model("qwen-local", closed_port())]
    load, ledger = run_load(private_pg, tmp_path, models, [chat(f"q{i}") for i in range(40)],
                            4, {"num_retries": 1, "retry_backoff": 0.01})
    check_and_record(fault_table, "upstream down: the only deployment", load, ledger,
                     admitted(load), "failure rows, spend 0", allowed_5xx=frozenset({502}))
    assert load.failures() == {"502": 40}
    assert ledger.rows.keys() == admitted(load)
    assert {(spend, status) for spend, status, _ in ledger.rows.values()} == {(0, "failure")}


def test_slow_upstream_times_out_and_falls_back(private_pg: PrivatePostgres, fault_mock: str,
                                                flaky_mock: str, tmp_path: Path,
                                                fault_table: FaultTable) -> None:
    mock_control(flaky_mock, "/mock/faults", {"mode": "slow", "ms": 3000})
    try:
        models = [model("slowpoke", flaky_mock, timeout=0.3),
                  model("qwen-local", fault_mock)]
        load, ledger = run_load(private_pg, tmp_path, models,
                                [chat(f"q{i}", model="slowpoke") for i in range(30)], 6,
                                {"num_retries": 1, "retry_backoff": 0.01,
                                 "fallbacks": [{"slowpoke": ["qwen-local"]}]})
    finally:
        mock_control(flaky_mock, "/mock/reset", {})
    check_and_record(fault_table, "upstream slow (3 s vs timeout 0.3 s), fallback", load,
                     ledger, admitted(load), "answered by the fallback model")
    assert load.failures() == {}
    assert ledger.rows.keys() == admitted(load)
    assert all(spend > 0 and status == "success" for spend, status, _ in ledger.rows.values())


def test_flapping_upstream_is_retried(private_pg: PrivatePostgres, flaky_mock: str,
                                      tmp_path: Path, fault_table: FaultTable) -> None:
    mock_control(flaky_mock, "/mock/faults", {"mode": "error", "status": 503, "rate": 0.5,
                                              "seed": 7})
    try:
        models = [model("qwen-local", flaky_mock)]
        load, ledger = run_load(private_pg, tmp_path, models,
                                [chat(f"q{i}") for i in range(200)], 4,
                                {"num_retries": 3, "retry_backoff": 0.01})
        stats = mock_control(flaky_mock, "/mock/stats")
    finally:
        mock_control(flaky_mock, "/mock/reset", {})
    check_and_record(fault_table, "upstream flapping (50% 503), 3 retries", load, ledger,
                     admitted(load), f"{stats['faults_injected']} faults injected, "
                     f"{stats['requests']} upstream calls", allowed_5xx=frozenset({502}))
    # 0.5^4 = 6.25% fail after all four attempts: 12.5 of 200 expected, 30 is 5 sigma away.
    assert len(load.served) >= 170
    assert set(load.failures()) <= {"502"}
    assert ledger.rows.keys() == admitted(load)
    assert stats["faults_injected"] > 50


def test_clients_leaving_mid_stream_free_the_upstream_and_pay_what_was_produced(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    before = mock_control(fault_mock, "/mock/stats")
    models = [model("slow", fault_mock, upstream_model="slow-20")]
    load, ledger = run_load(private_pg, tmp_path, models,
                            [chat(f"s{i}", model="slow", max_tokens=200, stream=True)
                             for i in range(20)], 10, leave_after_chunks=5)
    after = mock_control(fault_mock, "/mock/stats")
    cancelled = after["streams_cancelled"] - before["streams_cancelled"]
    check_and_record(fault_table, "clients leave mid-stream (after 5 of 200 chunks)", load,
                     ledger, admitted(load), f"{cancelled}/20 upstream streams cancelled")
    assert {o.status for o in load.outcomes} == {"client left"}
    assert cancelled == 20 and after["active_streams"] == 0
    assert ledger.rows.keys() == admitted(load)
    for spend, status, produced in ledger.rows.values():
        assert status == "partial" and 5 <= produced < 200 and spend > 0

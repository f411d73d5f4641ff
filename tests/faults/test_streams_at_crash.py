"""Streams open when something dies: the gateway (SIGKILL, SIGTERM with a long and a short
grace), the upstream (SIGKILL of its process). Each stream that reached its client has exactly
one row, charging at least its prompt and at most what the client received (the prompt at its
bound, the chunks delivered); the key's spend is the sum of its rows and /key/info's."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults.conftest import model, new_database, new_key, start
from faults.harness import (
    FaultTable,
    Ledger,
    Load,
    Outcome,
    check_and_record,
    drive,
    read_ledger,
    wait_until_written,
)
from faults.private_postgres import PrivatePostgres
from support import PRICE_IN, PRICE_OUT, chat, free_port, stop, wait_for_port

from faregate.money import NANOS_PER_DOLLAR

STREAMS = 10
TOKENS = 30
NANOS_IN = round(PRICE_IN * NANOS_PER_DOLLAR)      # per prompt token
NANOS_OUT = round(PRICE_OUT * NANOS_PER_DOLLAR)    # per completion token


@pytest.fixture
def own_mock() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A mock upstream this test may kill (ended by PID afterwards if it still runs)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "faregate", "mock-upstream", "--port",
                             str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield proc, f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def streams(n: int, tokens: int, **extra: Any) -> list[dict[str, Any]]:
    return [chat(f"stream {i} please", model="slow", max_tokens=tokens, stream=True, **extra)
            for i in range(n)]


def check_charges(ledger: Ledger, load: Load, answer: Outcome) -> list[int]:
    """Each stream of `load` that reached its client: one row priced from its own tokens,
    charging at least the prompt (what the upstream counted for `answer`'s) and no more chunks
    than the client received. Returns what each client received beyond its charge."""
    assert answer.usage is not None
    prompt = answer.usage[0]
    gaps = []
    for outcome in load.outcomes:
        if outcome.request_id is None:
            continue
        charged_prompt, charged_output = ledger.tokens[outcome.request_id]
        spend, _, _ = ledger.rows[outcome.request_id]
        assert spend == charged_prompt * NANOS_IN + charged_output * NANOS_OUT
        assert charged_prompt >= prompt > 0, (charged_prompt, prompt)
        assert charged_output <= outcome.chunks, (charged_output, outcome)
        gaps.append(outcome.chunks - charged_output)
    return gaps


async def probe(base_url: str, key: str) -> Outcome:
    """One answer with the streams' prompt: its usage says what the upstream counts for it
    (every stream's prompt has as many words)."""
    (answer,) = (await drive(base_url, key, [chat("stream 0 please", model="slow",
                                                  max_tokens=1)], 1)).outcomes
    assert answer.usage is not None
    return answer


def with_probe(load: Load, answer: Outcome) -> Load:
    return Load([answer, *load.outcomes])


def statuses(rows: dict[str, tuple[int, str, int]]) -> str:
    return ", ".join(sorted({status for _, status, _ in rows.values()}))


def test_sigkill_with_streams_open_charges_each_from_its_last_checkpoint(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    # One token every 100 ms: 30 tokens take 3 s, the kill comes after ~1.7 s.
    models = [model("slow", fault_mock, upstream_model="slow-100")]
    gw = start(tmp_path, db, models)
    key = new_key(gw.base_url, max_budget=1)
    try:
        async def scenario() -> tuple[Load, Outcome]:
            answer = await probe(gw.base_url, key)
            await wait_until_written(gw.base_url)
            task = asyncio.create_task(drive(gw.base_url, key, streams(STREAMS, TOKENS),
                                             STREAMS))
            await asyncio.sleep(1.7)
            gw.proc.kill()
            return await task, answer

        load, answer = asyncio.run(scenario())
        gw.proc.wait(10)
    finally:
        stop(gw.proc)
    restarted = start(tmp_path, db, models)
    try:
        asyncio.run(wait_until_written(restarted.base_url))
        ledger = asyncio.run(read_ledger(db, key, restarted.base_url))
    finally:
        stop(restarted.proc)
    opened = load.ids(lambda o: o.chunks > 0)
    rows = {i: ledger.rows[i] for i in opened if i in ledger.rows}
    gaps = check_charges(ledger, load, answer) if len(rows) == len(opened) else []
    check_and_record(fault_table, f"SIGKILL, {STREAMS} streams of {TOKENS} chunks open",
                     with_probe(load, answer), ledger, opened,
                     f"{len(rows)} charged from checkpoints ({statuses(rows)}); chunks "
                     f"received but not charged, per stream: {sorted(gaps)}")
    assert len(opened) == STREAMS and not any(o.finished for o in load.outcomes)
    assert {status for _, status, _ in rows.values()} == {"interrupted"}
    assert len(ledger.rows) == STREAMS + 1                # + the prompt probe: none doubled
    # The bound: fewer than 32 chunks and at most ~1 s of them (10 at this pace), plus the
    # tick's delay on a loaded machine.
    assert all(0 <= gap <= 15 for gap in gaps), gaps
    assert re.search(r"charging \d+ streams that were open", restarted.output())


def test_upstream_killed_mid_stream_charges_what_was_delivered(
        private_pg: PrivatePostgres, own_mock: tuple[subprocess.Popen[bytes], str],
        tmp_path: Path, fault_table: FaultTable) -> None:
    mock, url = own_mock
    db = new_database(private_pg)
    gw = start(tmp_path, db, [model("slow", url, upstream_model="slow-50")])
    try:
        key = new_key(gw.base_url, max_budget=1)

        async def scenario() -> tuple[Load, Ledger, Outcome]:
            answer = await probe(gw.base_url, key)
            task = asyncio.create_task(drive(gw.base_url, key, streams(STREAMS, TOKENS),
                                             STREAMS))
            await asyncio.sleep(0.8)
            mock.kill()
            load = await task
            await wait_until_written(gw.base_url)
            return load, await read_ledger(db, key, gw.base_url), answer

        load, ledger, answer = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    cut = load.ids(lambda o: o.chunks > 0 and not o.finished)
    everything = with_probe(load, answer)
    check_and_record(fault_table, f"upstream SIGKILLed, {STREAMS} streams open", everything,
                     ledger, everything.ids(lambda o: True),
                     f"{len(cut)} cut with an error event; rows: {statuses(ledger.rows)}")
    gaps = check_charges(ledger, load, answer)
    assert len(cut) == STREAMS, load.failures()
    assert {o.status for o in load.outcomes if o.request_id in cut} == {"error event"}
    for request_id in cut:
        spend, status, produced = ledger.rows[request_id]
        assert status == "partial" and 0 < produced < TOKENS and spend > 0
    assert max(gaps) <= 1         # the error event itself is the one chunk not charged


def sigterm_with_streams_open(private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
                              grace_s: float, tokens: int
                              ) -> tuple[Load, Ledger, Outcome, int, str]:
    db = new_database(private_pg)
    # One token every 25 ms.
    gw = start(tmp_path, db, [model("slow", fault_mock, upstream_model="slow-25")],
               {"graceful_shutdown_timeout_s": grace_s})
    try:
        key = new_key(gw.base_url, max_budget=1)

        async def scenario() -> tuple[Load, Outcome, int]:
            answer = await probe(gw.base_url, key)
            task = asyncio.create_task(drive(
                gw.base_url, key,
                streams(STREAMS, tokens, stream_options={"include_usage": True}), STREAMS))
            await asyncio.sleep(1.0)
            gw.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.proc.wait, 60)
            return await task, answer, code

        load, answer, code = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    # A process started after it says what /key/info says (nothing was left for it to write).
    after = start(tmp_path, db, [model("slow", fault_mock, upstream_model="slow-25")])
    try:
        ledger = asyncio.run(read_ledger(db, key, after.base_url))
    finally:
        stop(after.proc)
    return load, ledger, answer, code, gw.output()


def test_sigterm_with_a_30s_grace_lets_open_streams_finish_and_charges_them_in_full(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    # 120 tokens at 25 ms: 3 s, well inside the grace.
    load, ledger, answer, code, output = sigterm_with_streams_open(
        private_pg, fault_mock, tmp_path, 30, 120)
    streamed = [o for o in load.outcomes if o.chunks]
    everything = with_probe(load, answer)
    check_and_record(fault_table, f"SIGTERM, 30 s grace, {STREAMS} streams of 3 s open",
                     everything, ledger, everything.ids(lambda o: True),
                     f"exit {code}; {sum(o.finished for o in streamed)}/{STREAMS} finished")
    assert code == 0, output
    assert len(streamed) == STREAMS and all(o.status == 200 and o.finished for o in streamed)
    assert answer.usage is not None
    prompt = answer.usage[0]
    for outcome in streamed:               # the usage the client saw is the row's
        assert outcome.usage == (prompt, 120) == ledger.tokens[str(outcome.request_id)]
        assert ledger.rows[str(outcome.request_id)][:2] == \
            (prompt * NANOS_IN + 120 * NANOS_OUT, "success")


def test_sigterm_with_a_3s_grace_cuts_longer_streams_and_charges_what_was_delivered(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    # 400 tokens at 25 ms: 10 s, cut by the 3 s grace.
    load, ledger, answer, code, output = sigterm_with_streams_open(
        private_pg, fault_mock, tmp_path, 3, 400)
    cut = load.ids(lambda o: o.chunks > 0)
    check_and_record(fault_table, f"SIGTERM, 3 s grace, {STREAMS} streams of 10 s open",
                     with_probe(load, answer), ledger, cut | {str(answer.request_id)},
                     f"exit {code}; rows: {statuses(ledger.rows)}")
    gaps = check_charges(ledger, load, answer)
    assert code == 0, output
    assert len(cut) == STREAMS and not any(o.finished for o in load.outcomes)
    for request_id in cut:
        _, status, produced = ledger.rows[request_id]
        assert status == "partial" and 0 < produced < 400
    assert max(gaps) <= 1, gaps

"""What the fault-injection scenarios share: a load driver that remembers every outcome, the
ledger as the database holds it, and the table every scenario adds a line to."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from support import MASTER_KEY

from faregate.keys.tokens import hash_key
from faregate.money import NANOS_PER_DOLLAR


@dataclass
class Outcome:
    status: int | str               # HTTP status, or the name of the client-side failure
    request_id: str | None          # the gateway's x-request-id: the ledger row's id
    chunks: int = 0                 # stream events received
    finished: bool = False          # a stream that reached [DONE]
    at: float = 0.0                 # monotonic time it ended
    usage: tuple[int, int] | None = None   # (prompt, completion) tokens the client was told
    code: str | None = None         # a refusal's error code (its body's error.code)


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def served(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def failures(self) -> dict[str, int]:
        counts = collections.Counter(str(o.status) for o in self.outcomes if o.status != 200)
        return dict(sorted(counts.items()))

    def codes(self) -> dict[str, int]:
        """Refusals by status and error code ("503 redis_unavailable"): for messages."""
        counts = collections.Counter(f"{o.status} {o.code}" for o in self.outcomes
                                     if o.status != 200)
        return dict(sorted(counts.items()))

    def ids(self, predicate: Callable[[Outcome], bool]) -> set[str]:
        return {o.request_id for o in self.outcomes if predicate(o) and o.request_id}


async def drive(base_url: str, key: str, bodies: list[dict[str, Any]], concurrency: int, *,
                leave_after_chunks: int | None = None, pace_s: float = 0.0,
                timeout_s: float = 60.0) -> Load:
    """Send every body (streams when body["stream"]); `leave_after_chunks` hangs up early."""
    load = Load()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=timeout_s) as http:
        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                outcome = await _one(http, body, leave_after_chunks)
                outcome.at = time.monotonic()
                load.outcomes.append(outcome)
                if pace_s:
                    await asyncio.sleep(pace_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return load


async def _one(http: httpx.AsyncClient, body: dict[str, Any],
               leave_after_chunks: int | None) -> Outcome:
    try:
        if not body.get("stream"):
            resp = await http.post("/v1/chat/completions", json=body)
            outcome = Outcome(resp.status_code, resp.headers.get("x-request-id"))
            if resp.status_code == 200:
                outcome.usage = _usage(orjson.loads(resp.content).get("usage"))
            else:
                outcome.code = _error_code(resp.content)
            return outcome
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            outcome = Outcome(resp.status_code, resp.headers.get("x-request-id"))
            if resp.status_code != 200:
                await resp.aread()
                return outcome
            try:
                await _read_events(resp, outcome, leave_after_chunks)
            except httpx.HTTPError as exc:      # cut by the server: keep what was seen
                outcome.status = type(exc).__name__
            return outcome
    except httpx.HTTPError as exc:
        return Outcome(type(exc).__name__, None)


def _error_code(content: bytes) -> str | None:
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


async def _read_events(resp: httpx.Response, outcome: Outcome,
                       leave_after_chunks: int | None) -> None:
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                outcome.finished = True
            elif line.startswith("data: {"):
                if '"error"' in line:
                    outcome.status = "error event"
                elif '"usage":{' in line.replace(" ", ""):
                    outcome.usage = _usage(orjson.loads(line[6:]).get("usage"))
                outcome.chunks += 1
                if leave_after_chunks is not None and outcome.chunks >= leave_after_chunks:
                    outcome.status = "client left"
                    return                  # closes the connection mid-stream
        if not outcome.finished and outcome.status == 200:
            outcome.status = "stream cut"


def _usage(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


@dataclass(frozen=True)
class Ledger:
    rows: dict[str, tuple[int, str, int]]    # request id -> (spend nanos, status, output)
    key_spend: int
    max_budget: int | None = None            # the key's budget (nanos), None = unlimited
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (prompt, output)
    info_spend: int | None = None            # /key/info's total_spend (nanos), when read

    @property
    def spend_sum(self) -> int:
        return sum(spend for spend, _, _ in self.rows.values())


async def read_ledger(database_url: str, key: str, base_url: str | None = None) -> Ledger:
    """The key's rows and spend as the database holds them; with the gateway's `base_url`,
    also what its /key/info says the key spent."""
    token = hash_key(key)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT request_id, spend_nanos, status, prompt_tokens, "
                                "completion_tokens FROM faregate_spend_logs WHERE api_key = $1",
                                token)
        key_row = await conn.fetchrow("SELECT spend_nanos, max_budget_nanos FROM faregate_keys "
                                      "WHERE token = $1", token)
    finally:
        await conn.close()
    return Ledger({r["request_id"]: (r["spend_nanos"], r["status"], r["completion_tokens"])
                   for r in rows}, key_row["spend_nanos"], key_row["max_budget_nanos"],
                  {r["request_id"]: (r["prompt_tokens"], r["completion_tokens"]) for r in rows},
                  await key_info_spend(base_url, key) if base_url else None)


async def key_info_spend(base_url: str, key: str) -> int:
    """The key's lifetime spend as the gateway reports it (/key/info), in nanos."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        resp = await http.get("/key/info", params={"key": key},
                              headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 200, resp.text
    return round(resp.json()["info"]["total_spend"] * NANOS_PER_DOLLAR)


def check_and_record(table: FaultTable, scenario: str, load: Load, ledger: Ledger,
                     expected: set[str], note: str = "", *,
                     allowed_5xx: frozenset[int] = frozenset({503})) -> None:
    """Add the scenario's line to the table, then hold it to what every fault must keep:
    every request in `expected` has its row and none has two; the key's spend is the sum of
    its rows (and /key/info says the same, when it was read); spend never passes the budget; every
    served answer was charged for the tokens the client was told; and no 5xx other than the
    scenario's documented ones (503 by default)."""
    table.add(TableLine(scenario, len(load.outcomes), len(load.served), load.failures(),
                        len(expected), len(ledger.rows), ledger.key_spend == ledger.spend_sum,
                        note))
    missing = expected - set(ledger.rows)
    assert not missing, f"{scenario}: {len(missing)} spend rows lost"
    assert ledger.key_spend == ledger.spend_sum, f"{scenario}: key spend != ledger sum"
    assert len(ledger.rows) <= len(load.outcomes), f"{scenario}: more rows than requests"
    if ledger.info_spend is not None:
        assert ledger.info_spend == ledger.spend_sum, \
            f"{scenario}: /key/info says {ledger.info_spend} nanos, ledger {ledger.spend_sum}"
    if ledger.max_budget is not None:
        assert ledger.key_spend <= ledger.max_budget, \
            f"{scenario}: spend {ledger.key_spend} passed the budget {ledger.max_budget}"
    for outcome in load.served:
        if outcome.usage is not None and outcome.request_id in ledger.tokens:
            assert ledger.tokens[outcome.request_id] == outcome.usage, \
                f"{scenario}: {outcome.request_id} charged {ledger.tokens[outcome.request_id]}" \
                f" tokens, the client was told {outcome.usage}"
    server_errors = {o.status for o in load.outcomes
                     if isinstance(o.status, int) and o.status >= 500} - allowed_5xx
    assert not server_errors, f"{scenario}: undocumented 5xx {sorted(server_errors)}"


async def wait_until_written(base_url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Until readiness says the database is up and no spend row waits on disk."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http, \
            asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                state = (await http.get("/health/readiness")).json()
                if state["db"] == "connected" and state["spend_rows_waiting"] == 0:
                    return state
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class TableLine:
    scenario: str
    sent: int
    served: int
    failed: dict[str, int]
    rows_expected: int
    rows_recorded: int
    spend_matches: bool
    note: str = ""


class FaultTable:
    """Lines appended to a file, so that test processes (pytest-xdist workers) can all add to
    the one table the run prints at its end (tests/conftest.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, line: TableLine) -> None:
        with self.path.open("ab") as out:
            out.write(orjson.dumps(dataclasses.asdict(line)) + b"\n")

    @property
    def lines(self) -> list[TableLine]:
        if not self.path.exists():
            return []
        return [TableLine(**orjson.loads(raw)) for raw in self.path.read_bytes().splitlines()]

    def render(self) -> str:
        lines = self.lines
        head = ("scenario", "sent", "served", "failed (status: n)", "rows expected",
                "rows recorded", "key spend = ledger", "note")
        body = [(t.scenario, str(t.sent), str(t.served),
                 ", ".join(f"{k}: {v}" for k, v in t.failed.items()) or "-",
                 str(t.rows_expected), str(t.rows_recorded), "yes" if t.spend_matches else "NO",
                 t.note) for t in lines]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in [head, *body])

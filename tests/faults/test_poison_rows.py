"""A spend row Postgres refuses for its content, in real processes (issue 13, finding 2).

The edge refuses every unstorable value a caller sends (tests/api/test_unstorable_input.py) and
start-up every unstorable model in config.yaml (tests/unit/test_config.py), so the poison here
is the database's own: a CHECK constraint added to the ledger table refuses the rows of calls to
one upstream (23514, as a trigger, a narrower column or a LATIN1 database would refuse other
content), and lets their dead-letter copies in. Before the fix the writer retried such a row
forever, in order: no later row of any key reached the database, a restart replayed the same
failure, and readiness said healthy. Now each one is dead-lettered with a storable copy
counted, every other row flows, readiness (still 200) and /metrics count them, and
`faregate dead-letters` lists and resolves them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
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
from support import MASTER_KEY, chat, stop

POISONED = 60


def dead_letters(action: str, config: Path, env: dict[str, str], *extra: str
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faregate", "dead-letters", action, "--config",
                           str(config), *extra], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def refuse_poisoned_rows(db: str) -> None:
    """The ledger table refuses a call to the poisoned upstream, but not its dead-letter copy."""
    async def alter() -> None:
        conn = await asyncpg.connect(db)
        try:
            await conn.execute(
                "ALTER TABLE faregate_spend_logs ADD CONSTRAINT faults_poison CHECK "
                "(status = 'dead_letter' OR upstream NOT LIKE '%#poison-up')")
        finally:
            await conn.close()

    asyncio.run(alter())


def test_rows_postgres_refuses_are_dead_lettered_and_every_other_row_flows(
        private_pg: PrivatePostgres, fault_mock: str, tmp_path: Path,
        fault_table: FaultTable) -> None:
    db = new_database(private_pg)
    models = [model("qwen-local", fault_mock),
              model("poisoned", fault_mock, upstream_model="poison-up")]
    gw = start(tmp_path, db, models)
    try:
        refuse_poisoned_rows(db)
        key = new_key(gw.base_url, max_budget=1)
        bystander = new_key(gw.base_url, max_budget=1)     # never calls the poisoned model

        async def scenario() -> tuple[Load, Load, Ledger, Ledger, dict, str]:
            # Poisoned and clean calls interleaved, the bystander's beside them.
            mixed = asyncio.create_task(drive(
                gw.base_url, key, [chat(f"q{i}", model="poisoned" if i % 2 else "qwen-local")
                                   for i in range(2 * POISONED)], 4))
            clean = await drive(gw.base_url, bystander, [chat(f"b{i}") for i in range(60)], 2)
            load = await mixed
            # Every row is in (a row holding the others back would time this out) ...
            ready = await wait_until_written(gw.base_url, timeout_s=30)
            async with httpx.AsyncClient(base_url=gw.base_url, timeout=10) as http:
                metrics = (await http.get("/metrics", headers={
                    "Authorization": f"Bearer {MASTER_KEY}"})).text
            return (load, clean, await read_ledger(db, key, gw.base_url),
                    await read_ledger(db, bystander, gw.base_url), ready, metrics)

        load, clean, ledger, clean_ledger, ready, metrics = asyncio.run(scenario())
    finally:
        stop(gw.proc)
    dead = {rid for rid, (_, status, _) in ledger.rows.items() if status == "dead_letter"}
    check_and_record(fault_table, f"poison rows: the ledger table refuses one upstream's rows, "
                     f"{POISONED} of {2 * POISONED} calls", load, ledger,
                     load.ids(lambda o: o.status == 200),
                     f"{len(dead)} dead-lettered (storable copies counted); readiness 200, "
                     f"spend_rows_dead_lettered {ready['spend_rows_dead_lettered']}")
    check_and_record(fault_table, "  the same: another key beside them", clean, clean_ledger,
                     clean.ids(lambda o: o.status == 200), "every row written")
    assert load.failures() == {} and clean.failures() == {}
    assert len(dead) == POISONED and all(spend > 0 for rid, (spend, _, _) in ledger.rows.items()
                                         if rid in dead)          # still charged
    assert ready["status"] == "healthy" and ready["spend_rows_dead_lettered"] == POISONED
    assert f"faregate_ledger_dead_letter_rows {float(POISONED)}" in metrics

    # A restart replays nothing stuck; the command lists the rows and resolves them.
    config = tmp_path / "config.yaml"
    env = {**gw.env}
    listed = dead_letters("list", config, env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == POISONED and all('"counted": true' in line for line in lines)
    again = start(tmp_path, db, models)
    try:
        ready = asyncio.run(wait_until_written(again.base_url, timeout_s=30))
        assert ready["spend_rows_dead_lettered"] == POISONED
        assert "replaying" not in again.output()
        resolved = dead_letters("resolve", config, env, "--all")
        assert resolved.returncode == 0, resolved.stderr
        ready = asyncio.run(wait_until_written(again.base_url, timeout_s=30))
        assert ready["spend_rows_dead_lettered"] == 0
        after = asyncio.run(read_ledger(db, key, again.base_url))
    finally:
        stop(again.proc)
    assert after.rows == ledger.rows and after.info_spend == ledger.key_spend

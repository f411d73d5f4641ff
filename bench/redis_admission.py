"""The shared (Redis) admission alone: CPU per admit + settle of this process and of a private
redis-server, for a bare key and for a key paid for at every level, in the same run.

    python -m bench.redis_admission --requests 20000 --concurrency 32

What the gateway's `payers` target adds in Redis mode, without HTTP, the database or the box's
load in the figure: the process's CPU time (time.process_time) and the redis-server's (its
INFO used_cpu_*), divided by the requests. The payers are bench.run's: the key (a budget, RPM
and TPM), its team, its membership, the team's organization and an end user, each with a
budget and limits too high to bind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from bench.run_support import free_port
from faregate.admission.budgets import Budgets
from faregate.admission.demand import END_USER, MEMBER, ORG, TEAM, Payer, demand_for, key_payer
from faregate.admission.local import LocalAdmission
from faregate.admission.shared import RedisAdmission
from faregate.config import Deployment
from faregate.records import KeyRecord

UNBOUND = {"max_budget_nanos": 10**18, "rpm_limit": 2_000_000_000, "tpm_limit": 2_000_000_000}
DEPLOYMENT = Deployment("bench-model", "openai", "bench-model", "http://127.0.0.1:1/v1", None,
                        1_000_000_000, 2_000_000_000, 4096, 3, 4, 60.0, "bench-model#0")


@dataclass(frozen=True)
class Measured:
    target: str
    requests: int
    process_us: float       # this process's CPU per request
    redis_us: float         # redis-server's CPU per request


def payers(key: KeyRecord, every_level: bool) -> tuple[Payer, ...]:
    own = key_payer(key, "0")
    if not every_level:
        return (own,)
    return (own, Payer("team:bench-team", TEAM, "bench-team", **UNBOUND),  # type: ignore[arg-type]
            Payer("member:bench-team:bench-user", MEMBER, "bench-user:bench-team",
                  max_budget_nanos=10**18),
            Payer("org:bench-org", ORG, "bench-org", **UNBOUND),  # type: ignore[arg-type]
            Payer("end_user:bench-end-user", END_USER, "bench-end-user",
                  **UNBOUND))  # type: ignore[arg-type]


async def drive(url: str, target: str, requests: int, concurrency: int,
                server: redis.Redis) -> Measured:
    key = KeyRecord(token=f"{target:0>64}"[-64:], key_name="sk-...bench", **UNBOUND)  # type: ignore[arg-type]

    async def load_key(token: str) -> KeyRecord | None:
        return key

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 5.0, lambda *_: None), 5.0)
    adm = RedisAdmission(url, load_key, lambda *_: None, 30.0, "fail_closed", local, 1)
    who = payers(key, target == "payers")
    counter = iter(range(10**9))

    async def worker(n: int) -> None:
        for _ in range(n):
            demand = demand_for(f"{target}-{next(counter):012x}", key, "0", DEPLOYMENT, 20,
                                16, 1, who)
            admitted = await adm.admit(demand)
            await asyncio.sleep(0)
            await adm.settle(admitted, 1000, 30)

    await asyncio.gather(*(worker(50) for _ in range(concurrency)))     # warm up
    if adm._flusher is not None:
        await adm._flusher
    gc.collect()
    redis_before = _redis_cpu(server)
    before = time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    if adm._flusher is not None:
        await adm._flusher
    spent = time.process_time() - before
    redis_spent = _redis_cpu(server) - redis_before
    done = requests // concurrency * concurrency
    await adm.close()
    return Measured(target, done, spent / done * 1e6, redis_spent / done * 1e6)


def _commandstats(server: redis.Redis, requests: int) -> str:
    """Per request (`requests`: the round's, its warm-up included): the scripts' redis.call
    count, EVALSHA's time and the commands' own time inside it."""
    stats = server.info("commandstats")
    done = max(1, requests)
    evalsha = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    inner = [v for k, v in stats.items() if k.startswith("cmdstat_") and k not in (
        "cmdstat_evalsha", "cmdstat_info", "cmdstat_config|resetstat", "cmdstat_script|load",
        "cmdstat_hello", "cmdstat_client|setinfo", "cmdstat_ping")]
    return (f"{sum(v['calls'] for v in inner) / done:.1f} redis.call, evalsha "
            f"{evalsha['usec'] / done:.1f} µs, of which commands "
            f"{sum(v['usec'] for v in inner) / done:.1f} µs (per request, INFO commandstats)")


def _redis_cpu(server: redis.Redis) -> float:
    info = server.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_admission", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--commandstats", action="store_true",
                        help="also print Redis's INFO commandstats per request of each target's "
                             "last round: the scripts' calls and their own time")
    args = parser.parse_args(argv)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        server = redis.Redis(port=port)
        for _ in range(100):
            try:
                server.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        results: dict[str, list[Measured]] = {"key": [], "payers": []}
        stats: dict[str, str] = {}
        for _ in range(args.rounds):         # alternate, so drift hits both alike
            for target in results:
                server.config_resetstat()
                results[target].append(asyncio.run(drive(url, target, args.requests,
                                                         args.concurrency, server)))
                stats[target] = _commandstats(
                    server, results[target][-1].requests + 50 * args.concurrency)
        print(f"{'target':<8}{'requests':>10}{'python µs':>11}{'redis µs':>10}   (median of "
              f"{args.rounds}, c={args.concurrency})")
        medians = {}
        for target, runs in results.items():
            py = sorted(r.process_us for r in runs)[len(runs) // 2]
            rd = sorted(r.redis_us for r in runs)[len(runs) // 2]
            medians[target] = (py, rd)
            print(f"{target:<8}{runs[0].requests:>10}{py:>11.1f}{rd:>10.1f}   "
                  f"runs: {' '.join(f'{r.process_us:.0f}/{r.redis_us:.0f}' for r in runs)}")
        (kp, kr), (pp, pr) = medians["key"], medians["payers"]
        print(f"payers over key: python +{pp - kp:.1f} µs ({pp / kp - 1:+.0%}), "
              f"redis +{pr - kr:.1f} µs ({pr / kr - 1:+.0%})")
        if args.commandstats:
            for target, line in stats.items():
                print(f"{target:<8}{line}")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

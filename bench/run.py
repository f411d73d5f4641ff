"""The benchmark harness: mock upstream and gateway in their own processes, driven by a load
generator, direct and through the gateway in alternation, printed as a table (and JSON).

    python -m bench                 # full matrix, ~2 minutes
    python -m bench --quick         # a smoke run (the test suite uses it)

Gateway CPU per request comes from /proc accounting (utime+stime of the gateway's process
tree over the run), the steadiest figure on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

from bench import loadgen, seeding

MASTER = "sk-bench-master-key-000"
PG_ADMIN = os.environ.get("FAREGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Row:
    backend: str
    workers: int
    stream: bool
    concurrency: int
    target: str                  # direct (the mock) | bare (passthrough proxy) | gateway
    #                              | payers (the gateway, a key in a team in an org + end user)
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_req: float | None
    rss_mb: float | None
    tool: str


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _tree(pid: int) -> list[int]:
    """pid and its descendants (uvicorn workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime
    return total / CLK_TCK


def _rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total / 2**20


@contextmanager
def _process(args: list[str], env: dict[str, str], health: str) -> Iterator[int]:
    # Logs go to a file, not a pipe nobody reads: a full pipe would block the process.
    with tempfile.NamedTemporaryFile(prefix="faregate-bench-", suffix=".log") as log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            try:
                _wait(health, proc)
            except (RuntimeError, TimeoutError):
                sys.stderr.write(Path(log.name).read_text(errors="replace")[-4000:])
                raise
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def _database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        (tmp / "bench.db").unlink(missing_ok=True)
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    name = f"faregate_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _body(stream: bool, end_user: str | None = None) -> bytes:
    body: dict[str, Any] = {"model": "bench-model", "max_tokens": 16,
                            "messages": [{"role": "user", "content": "ping"}]}
    if stream:
        body["stream"] = True
    if end_user is not None:
        body["user"] = end_user
    return json.dumps(body).encode()


def _payers_key(base: str) -> str:
    """A key paid for at every level: it, its team, its membership, the team's organization
    (each with a budget and limits too high to bind); requests name an end user."""
    admin = {"Authorization": f"Bearer {MASTER}"}
    unbound = {"max_budget": 1_000_000, "rpm_limit": 2_000_000_000, "tpm_limit": 2_000_000_000}
    for path, body in (("/organization/new", {"organization_id": "bench-org",
                                              "organization_alias": "bench-org", **unbound}),
                       ("/user/new", {"user_id": "bench-user", **unbound}),
                       ("/team/new", {"team_id": "bench-team", "organization_id": "bench-org",
                                      **unbound}),
                       ("/team/member_add", {"team_id": "bench-team",
                                             "member": {"user_id": "bench-user",
                                                        "role": "user"},
                                             "max_budget_in_team": 1_000_000}),
                       ("/customer/new", {"user_id": "bench-end-user", **unbound})):
        resp = httpx.post(base + path, json=body, headers=admin)
        if resp.status_code != 200:
            raise RuntimeError(f"{path}: {resp.status_code} {resp.text}")
    return str(httpx.post(base + "/key/generate", json={
        "models": ["bench-model"], "team_id": "bench-team", "user_id": "bench-user", **unbound},
        headers=admin).json()["key"])


def run(args: argparse.Namespace) -> list[Row]:
    python = sys.executable
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        mock_port = _free_port()
        env = {**os.environ, "FAREGATE_MASTER_KEY": MASTER, "FAREGATE_DATA_DIR": str(tmp)}
        mock = [python, "-m", "faregate", "mock-upstream", "--port", str(mock_port)]
        bare_port = _free_port()
        bare = [python, "-m", "bench.passthrough", "--port", str(bare_port), "--upstream",
                f"http://127.0.0.1:{mock_port}"]
        with _process(mock, env, f"http://127.0.0.1:{mock_port}/health"), \
                _process(bare, env, f"http://127.0.0.1:{bare_port}/health") as bare_pid:
            targets = Targets(f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                              f"http://127.0.0.1:{bare_port}/v1/chat/completions", bare_pid)
            for backend in args.backends:
                for workers in args.workers:
                    rows += _run_backend(args, backend, workers, targets, mock_port, tmp, env)
    return rows


@dataclass(frozen=True)
class Targets:
    direct: str                  # the mock itself
    bare: str                    # the bare passthrough proxy in front of it
    bare_pid: int


def _run_backend(args: argparse.Namespace, backend: str, workers: int, targets: Targets,
                 mock_port: int, tmp: Path, env: dict[str, str]) -> list[Row]:
    rows: list[Row] = []
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "bench-model", "litellm_params": {
        "model": "openai/bench-model", "api_base": f"http://127.0.0.1:{mock_port}/v1",
        "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}]}))
    with _database(backend, tmp) as db_url:
        port = _free_port()
        gw_env = {**env, "DATABASE_URL": db_url}
        if backend.endswith("+redis"):
            gw_env["REDIS_URL"] = args.redis
        serve = [sys.executable, "-m", "faregate", "serve", "--config", str(cfg), "--host",
                 "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        try:
            with _process(serve, gw_env, f"http://127.0.0.1:{port}/health/liveliness") as pid:
                # Everything on: a budget, RPM and TPM limits (too high to bind).
                key = httpx.post(f"http://127.0.0.1:{port}/key/generate", json={
                    "models": ["bench-model"], "max_budget": 1_000_000,
                    "rpm_limit": 2_000_000_000, "tpm_limit": 2_000_000_000},
                    headers={"Authorization": f"Bearer {MASTER}"}).json()["key"]
                gateway_url = f"http://127.0.0.1:{port}/v1/chat/completions"
                payers = _payers_key(f"http://127.0.0.1:{port}") if args.payers else None
                if args.seed_keys or args.seed_rows:
                    owner = seeding.seed(db_url, key, args.seed_keys, args.seed_rows)
                    spend_logs_ms = seeding.spend_logs_latency(f"http://127.0.0.1:{port}", owner,
                                                               MASTER)
                    print(f"bench: {backend}: seeded {args.seed_keys} keys and {args.seed_rows} "
                          f"spend rows; /spend/logs for one key: p50 {spend_logs_ms:.1f} ms",
                          flush=True)
                if args.soak:
                    _soak(args, gateway_url, key, pid)
                for stream in (False, True):
                    for concurrency in args.concurrency:
                        rows += _compare(args, backend, workers, stream, concurrency,
                                         targets, gateway_url, key, pid, payers)
        except RuntimeError as exc:
            print(f"bench: {backend} with {workers} workers did not start: {exc}",
                  file=sys.stderr)
    return rows


def _soak(args: argparse.Namespace, url: str, key: str, pid: int) -> None:
    """Drive `args.soak` requests and print RSS along the way: flat means no leak."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    done, samples = 0, [_rss_mb(pid)]
    while done < args.soak:
        result = loadgen.run(loadgen.Load(url, _body(False), headers, 32, 10.0),
                             prefer_wrk=not args.python_loadgen)
        done += result.requests
        samples.append(_rss_mb(pid))
        print(f"bench: soak {done} requests, rss {samples[-1]:.1f} MB", flush=True)
    print(f"bench: soak RSS start {samples[0]:.1f} MB, after warm-up {samples[1]:.1f} MB, "
          f"end {samples[-1]:.1f} MB over {done} requests", flush=True)


def _compare(args: argparse.Namespace, backend: str, workers: int, stream: bool,
             concurrency: int, targets: Targets, gateway_url: str, key: str,
             pid: int, payers_key: str | None = None) -> list[Row]:
    body = _body(stream)
    measured: dict[str, list[tuple[loadgen.Measured, float | None, float | None]]] = {
        "direct": [], "bare": [], "gateway": []}
    plan = [("direct", targets.direct, None), ("bare", targets.bare, targets.bare_pid),
            ("gateway", gateway_url, pid)]
    if payers_key is not None:
        measured["payers"] = []
        plan.append(("payers", gateway_url, pid))
    for _ in range(args.rounds):          # alternate, so drift hits every target alike
        for target, url, measured_pid in plan:
            headers = {"Content-Type": "application/json"}
            if target == "gateway":
                headers["Authorization"] = f"Bearer {key}"
            sent = body
            if target == "payers":
                headers["Authorization"] = f"Bearer {payers_key}"
                sent = _body(stream, "bench-end-user")
            load = loadgen.Load(url, sent, headers, concurrency, args.duration)
            cpu_before = _cpu_seconds(measured_pid) if measured_pid else 0.0
            result = loadgen.run(load, prefer_wrk=not args.python_loadgen)
            cpu_us = rss = None
            if measured_pid and result.requests:
                cpu_us = (_cpu_seconds(measured_pid) - cpu_before) / result.requests * 1e6
                rss = _rss_mb(measured_pid)
            measured[target].append((result, cpu_us, rss))
    rows = []
    for target, runs in measured.items():
        rows.append(Row(
            backend=backend, workers=workers, stream=stream, concurrency=concurrency,
            target=target, rps=statistics.median(r.rps for r, _, _ in runs),
            p50_ms=statistics.median(r.p50_ms for r, _, _ in runs),
            p99_ms=statistics.median(r.p99_ms for r, _, _ in runs),
            errors=sum(r.errors for r, _, _ in runs),
            requests=sum(r.requests for r, _, _ in runs),
            cpu_us_per_req=_median([c for _, c, _ in runs]),
            rss_mb=_median([m for _, _, m in runs]),
            tool=runs[0][0].tool))
    return rows


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(rows: list[Row]) -> str:
    head = (f"{'backend':<15}{'wk':>3} {'mode':<7}{'c':>3}  {'target':<8}{'req/s':>9}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}{'+p50 ms':>8}{'cpu µs':>8}"
            f"{'rss MB':>8}{'errors':>7}")
    lines = [head, "-" * len(head)]
    direct: dict[tuple[str, int, bool, int], Row] = {}
    for r in rows:
        k = (r.backend, r.workers, r.stream, r.concurrency)
        if r.target == "direct":
            direct[k] = r
        d = direct.get(k)
        ratio = f"{r.rps / d.rps:.2f}" if d and r.target != "direct" and d.rps else ""
        added = f"{r.p50_ms - d.p50_ms:.2f}" if d and r.target != "direct" else ""
        lines.append(
            f"{r.backend:<15}{r.workers:>3} {'stream' if r.stream else 'json':<7}"
            f"{r.concurrency:>3}  {r.target:<8}{r.rps:>9.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
            f"{ratio:>7}{added:>8}"
            f"{'' if r.cpu_us_per_req is None else f'{r.cpu_us_per_req:.0f}':>8}"
            f"{'' if r.rss_mb is None else f'{r.rss_mb:.0f}':>8}{r.errors:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="direct/gateway alternations")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres", "postgres+redis"],
                        choices=["sqlite", "postgres", "postgres+redis"])
    parser.add_argument("--redis", default=os.environ.get("FAREGATE_BENCH_REDIS",
                                                          "redis://127.0.0.1:6379/0"),
                        help="the Redis that postgres+redis uses")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--python-loadgen", action="store_true", help="do not use wrk")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--seed-keys", type=int, default=0,
                        help="add this many keys to the database before measuring")
    parser.add_argument("--seed-rows", type=int, default=0,
                        help="add this many spend rows (spread over the keys) before measuring")
    parser.add_argument("--soak", type=int, default=0,
                        help="also drive this many requests and report RSS growth")
    parser.add_argument("--payers", action="store_true",
                        help="also measure a key in a team in an organization, with an end "
                             "user (target 'payers'), against the bare key in the same run")
    parser.add_argument("--quick", action="store_true",
                        help="a one-second smoke run on SQLite (what the test suite runs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.backends, args.concurrency = 1.0, 1, ["sqlite"], [4]
    rows = run(args)
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows]}, indent=2))
        print(f"bench: results written to {args.json}")
    failed = sum(r.errors for r in rows)
    return 1 if failed or not rows else 0

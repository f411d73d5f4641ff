"""The benchmark harness: mock upstream and gateway in their own processes, driven by a load
generator, direct and through the gateway in alternation, printed as a table (and JSON).

    python -m bench                 # full matrix, ~2 minutes
    python -m bench --quick         # a smoke run (the test suite uses it)

Gateway CPU per request comes from /proc accounting (utime+stime of the gateway's process
tree over the run), the steadiest figure on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import loadgen, peers, seeding
from bench.run_support import cpu_seconds, database, free_port, process, rss_mb

MASTER = "sk-bench-master-key-000"


@dataclass
class Row:
    backend: str
    workers: int
    stream: bool
    concurrency: int
    target: str                  # direct (the mock) | bare (passthrough proxy) | gateway
    #                              | payers (the gateway, a key in a team in an org + end user)
    #                              | litellm (LiteLLM's proxy, no database: --peer litellm)
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_us_per_req: float | None
    rss_mb: float | None
    tool: str


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
        mock_port = free_port()
        env = {**os.environ, "FAREGATE_MASTER_KEY": MASTER, "FAREGATE_DATA_DIR": str(tmp)}
        mock = [python, "-m", "faregate", "mock-upstream", "--port", str(mock_port)]
        bare_port = free_port()
        bare = [python, "-m", "bench.passthrough", "--port", str(bare_port), "--upstream",
                f"http://127.0.0.1:{mock_port}"]
        with process(mock, env, f"http://127.0.0.1:{mock_port}/health"), \
                process(bare, env, f"http://127.0.0.1:{bare_port}/health") as bare_pid:
            targets = Targets(f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                              f"http://127.0.0.1:{bare_port}/v1/chat/completions", bare_pid)
            for backend in args.backends:
                for workers in args.workers:
                    if workers > 1 and not backend.endswith("+redis"):
                        # faregate refuses to start so: workers share limits through Redis.
                        print(f"bench: {backend} with {workers} workers skipped: more than "
                              "one worker needs REDIS_URL", flush=True)
                        continue
                    rows += _run_backend(args, backend, workers, targets, mock_port, tmp, env)
            if "litellm" in args.peer:
                rows += _run_litellm(args, targets, mock_port, tmp, env)
    return rows


def _run_litellm(args: argparse.Namespace, targets: Targets, mock_port: int, tmp: Path,
                 env: dict[str, str]) -> list[Row]:
    """LiteLLM's proxy on the same mock, beside the bare passthrough, in the same run."""
    command = peers.ensure_litellm()
    print(f"bench: peer litellm {peers.litellm_version(command)}", flush=True)
    rows: list[Row] = []
    with peers.litellm_proxy(command, mock_port, MASTER, tmp, env) as (port, pid):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        # Warm up (its first calls load modules and build clients): not measured.
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {MASTER}",
                                                "Content-Type": "application/json"}) as http:
            for i in range(20):
                answer = http.post(url, content=_body(i % 2 == 1))
                if answer.status_code != 200:
                    raise RuntimeError(f"litellm answered {answer.status_code}: "
                                       f"{answer.text[:500]}")
        for stream in (False, True):
            for concurrency in args.concurrency:
                rows += _compare(args, "litellm", 1, stream, concurrency, targets, url, MASTER,
                                 pid, target="litellm")
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
    with database(backend, tmp) as db_url:
        port = free_port()
        gw_env = {**env, "DATABASE_URL": db_url}
        if backend.endswith("+redis"):
            gw_env["REDIS_URL"] = args.redis
        serve = [sys.executable, "-m", "faregate", "serve", "--config", str(cfg), "--host",
                 "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        try:
            with process(serve, gw_env, f"http://127.0.0.1:{port}/health/liveliness") as pid:
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
    done, samples = 0, [rss_mb(pid)]
    while done < args.soak:
        result = loadgen.run(loadgen.Load(url, _body(False), headers, 32, 10.0),
                             prefer_wrk=not args.python_loadgen)
        done += result.requests
        samples.append(rss_mb(pid))
        print(f"bench: soak {done} requests, rss {samples[-1]:.1f} MB", flush=True)
    print(f"bench: soak RSS start {samples[0]:.1f} MB, after warm-up {samples[1]:.1f} MB, "
          f"end {samples[-1]:.1f} MB over {done} requests", flush=True)


def _compare(args: argparse.Namespace, backend: str, workers: int, stream: bool,
             concurrency: int, targets: Targets, gateway_url: str, key: str,
             pid: int, payers_key: str | None = None, target: str = "gateway") -> list[Row]:
    """`target` (the gateway, or a peer) at `gateway_url`, alternating with direct and bare."""
    body = _body(stream)
    measured: dict[str, list[tuple[loadgen.Measured, float | None, float | None]]] = {
        "direct": [], "bare": [], target: []}
    plan = [("direct", targets.direct, None), ("bare", targets.bare, targets.bare_pid),
            (target, gateway_url, pid)]
    if payers_key is not None:
        measured["payers"] = []
        plan.append(("payers", gateway_url, pid))
    for name, url, measured_pid in plan:  # warm up (connections, first calls): not measured
        if measured_pid:
            headers = {"Content-Type": "application/json"}
            if name not in ("direct", "bare"):
                headers["Authorization"] = f"Bearer {payers_key if name == 'payers' else key}"
            loadgen.run(loadgen.Load(url, _body(stream, "bench-end-user" if name == "payers"
                                                else None), headers, concurrency,
                                     min(1.0, args.duration)),
                        prefer_wrk=not args.python_loadgen)
    for _ in range(args.rounds):          # alternate, so drift hits every target alike
        for name, url, measured_pid in plan:
            headers = {"Content-Type": "application/json"}
            if name not in ("direct", "bare"):
                headers["Authorization"] = f"Bearer {key}"
            sent = body
            if name == "payers":
                headers["Authorization"] = f"Bearer {payers_key}"
                sent = _body(stream, "bench-end-user")
            load = loadgen.Load(url, sent, headers, concurrency, args.duration)
            cpu_before = cpu_seconds(measured_pid) if measured_pid else 0.0
            result = loadgen.run(load, prefer_wrk=not args.python_loadgen)
            cpu_us = rss = None
            if measured_pid and result.requests:
                cpu_us = (cpu_seconds(measured_pid) - cpu_before) / result.requests * 1e6
                rss = rss_mb(measured_pid)
            measured[name].append((result, cpu_us, rss))
            print(f"bench: {backend} {'stream' if stream else 'json'} c={concurrency} "
                  f"{name}: p99 {result.p99_ms:.1f} ms"
                  + ("" if cpu_us is None else f", cpu {cpu_us:.0f} µs"), flush=True)
    rows = []
    for name, runs in measured.items():
        rows.append(Row(
            backend=backend, workers=workers, stream=stream, concurrency=concurrency,
            target=name, rps=statistics.median(r.rps for r, _, _ in runs),
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
    """The rows, with each target's ratios to the same run's others: req/s over direct's,
    p50 added to direct's, CPU and p99 over the bare passthrough's (`xbare`), and for the
    LiteLLM peer its CPU over faregate's (the first backend's gateway row, `xfg`)."""
    head = (f"{'backend':<15}{'wk':>3} {'mode':<7}{'c':>3}  {'target':<8}{'req/s':>8}"
            f"{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}{'+p50 ms':>8}{'cpu µs':>8}"
            f"{'cpu xbare':>10}{'p99 xbare':>10}{'rss MB':>8}{'errors':>7}")
    lines = [head, "-" * len(head)]
    group: dict[tuple[str, int, bool, int, str], Row] = {}
    faregate: dict[tuple[bool, int], Row] = {}
    for r in rows:
        group[(r.backend, r.workers, r.stream, r.concurrency, r.target)] = r
        if r.target == "gateway" and r.workers == 1:
            faregate.setdefault((r.stream, r.concurrency), r)
    for r in rows:
        k = (r.backend, r.workers, r.stream, r.concurrency)
        d, bare = group.get((*k, "direct")), group.get((*k, "bare"))
        ratio = f"{r.rps / d.rps:.2f}" if d and r.target != "direct" and d.rps else ""
        added = f"{r.p50_ms - d.p50_ms:.2f}" if d and r.target != "direct" else ""
        cpu_x = p99_x = ""
        if bare is not None and r.target not in ("direct", "bare"):
            cpu_x = _times(r.cpu_us_per_req, bare.cpu_us_per_req)
            p99_x = _times(r.p99_ms, bare.p99_ms)
        lines.append(
            f"{r.backend:<15}{r.workers:>3} {'stream' if r.stream else 'json':<7}"
            f"{r.concurrency:>3}  {r.target:<8}{r.rps:>8.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
            f"{ratio:>7}{added:>8}"
            f"{'' if r.cpu_us_per_req is None else f'{r.cpu_us_per_req:.0f}':>8}"
            f"{cpu_x:>10}{p99_x:>10}"
            f"{'' if r.rss_mb is None else f'{r.rss_mb:.0f}':>8}{r.errors:>7}")
    payers = [r for r in rows if r.target == "payers"]
    if payers:
        lines.append("")
        lines.append("CPU per request of a key paid for at every level (team, member, "
                     "organization, end user) over the bare key's, same run:")
        for r in payers:
            key = group.get((r.backend, r.workers, r.stream, r.concurrency, "gateway"))
            if key is not None and key.cpu_us_per_req and r.cpu_us_per_req:
                lines.append(f"  {r.backend:<15}{'stream' if r.stream else 'json':<7}"
                             f"c={r.concurrency:<3} {key.cpu_us_per_req:>5.0f} -> "
                             f"{r.cpu_us_per_req:>5.0f} µs "
                             f"({(r.cpu_us_per_req / key.cpu_us_per_req - 1) * 100:+.0f}%)")
    peers = [r for r in rows if r.target == "litellm"]
    if peers:
        lines.append("")
        lines.append("CPU per request vs LiteLLM (its proxy, no database, master key only; "
                     "faregate: the first backend's gateway row, same run):")
        for r in peers:
            fg = faregate.get((r.stream, r.concurrency))
            if fg is not None and fg.cpu_us_per_req and r.cpu_us_per_req:
                lines.append(f"  {'stream' if r.stream else 'json':<7}c={r.concurrency:<3} "
                             f"litellm {r.cpu_us_per_req:>8.0f} µs, faregate "
                             f"{fg.cpu_us_per_req:>5.0f} µs ({fg.backend}): "
                             f"{r.cpu_us_per_req / fg.cpu_us_per_req:.1f}x less with faregate"
                             + (f" ({r.errors} errors or timeouts: its CPU is over the answered "
                                "requests only)" if r.errors else ""))
    return "\n".join(lines)


BEGIN, END = "<!-- bench:table -->", "<!-- /bench:table -->"


def write_doc(path: Path, rows: list[Row], argv: list[str]) -> None:
    """Replace what stands between the markers in `path` with this run's table."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"bench: {path} has no {BEGIN} ... {END} section to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (f"{BEGIN}\n`python -m bench {' '.join(argv)}` ({when}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}, load: {rows[0].tool if rows else '?'})"
               f"\n\n```\n{table(rows)}\n```\n{END}")
    path.write_text(head + section + tail)


def _times(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else ""


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
    parser.add_argument("--peer", nargs="*", default=[], choices=["litellm"],
                        help="also measure LiteLLM's proxy (installed on first use into "
                             "~/.cache/faregate/litellm-venv) on the same mock, same run")
    parser.add_argument("--doc", type=Path,
                        help="write the table (and the command that made it) into this "
                             "Markdown file, between its '<!-- bench:table -->' markers")
    parser.add_argument("--quick", action="store_true",
                        help="a one-second smoke run on SQLite (what the test suite runs)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.backends, args.concurrency = 1.0, 1, ["sqlite"], [4]
    rows = run(args)
    print(table(rows))
    if args.doc:
        write_doc(args.doc, rows, argv if argv is not None else sys.argv[1:])
        print(f"bench: table written into {args.doc}")
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

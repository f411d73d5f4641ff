"""Where the gateway's CPU goes: py-spy samples the gateway process under load and each sample
is charged to one component, then turned into µs per request with the CPU the run measured.

    python -m bench.profile --backends sqlite postgres --modes json stream --duration 10
    python -m bench.profile --backends postgres+redis --modes json --payers   # + every level

Needs py-spy in the virtual environment (`pip install py-spy`: it samples a running process
from outside, without changing it) and, preferably, wrk. Prints one table per backend and
mode; `--raw DIR` keeps py-spy's collapsed stacks for flame graphs.

A sample is charged to the innermost frame that belongs to a component: a library the gateway
calls (aiohttp, uvicorn, asyncpg...) or a faregate package; what is left (the event loop, the
interpreter's start of a task) is "event loop". py-spy samples only threads that are running,
so the shares approximate CPU time; the database driver's own thread (aiosqlite) is included.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench import loadgen
from bench.run import MASTER, _body, _payers_key
from bench.run_support import CLK_TCK, database, free_port, process, tree

# (component, a path fragment that marks its frames), innermost match wins; order breaks ties
# within one frame only.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("aiohttp (upstream client)", "(aiohttp/"),
    ("aiohttp (upstream client)", "(multidict/"),
    ("aiohttp (upstream client)", "(yarl/"),
    ("uvicorn + httptools (server)", "(uvicorn/"),
    ("uvicorn + httptools (server)", "(httptools/"),
    ("database driver", "(asyncpg/"),
    ("database driver", "(aiosqlite/"),
    ("database driver", "(sqlalchemy/"),
    ("redis client", "(redis/"),
    ("prometheus_client", "(prometheus_client/"),
    ("logging", "(logging/"),
    ("faregate.gateway", "(faregate/gateway/"),
    ("faregate.api (edge)", "(faregate/api/"),
    ("faregate.admission", "(faregate/admission/"),
    ("faregate.keys (auth)", "(faregate/keys/"),
    ("faregate.spend.ledger", "(faregate/spend/ledger.py"),
    ("faregate.spend.journal", "(faregate/spend/journal.py"),
    ("faregate.spend.checkpoints", "(faregate/spend/checkpoints.py"),
    ("faregate.spend (pricing, holds)", "(faregate/spend/"),
    ("faregate.observe (metrics, trace)", "(faregate/observe/"),
    ("faregate.providers.http1 (upstream client)", "(faregate/providers/http1.py"),
    ("faregate.providers", "(faregate/providers/"),
    ("faregate.wire (parse)", "(faregate/wire/"),
    ("faregate.catalog (routing)", "(faregate/catalog/"),
    ("faregate.storage", "(faregate/storage/"),
    ("faregate.app", "(faregate/app.py"),
    ("faregate (other)", "(faregate/"),
    ("asyncio / uvloop", "(asyncio/"),
    ("asyncio / uvloop", "(uvloop/"),
)


@dataclass(frozen=True)
class Profile:
    backend: str
    mode: str
    concurrency: int
    requests: int
    cpu_us_per_req: float           # the whole process tree, per request
    threads_us: dict[str, float]    # per thread name, per request ("main": the event loop)
    samples: int                    # of the main thread
    shares: dict[str, int]          # component -> samples
    top: list[tuple[str, int]]      # leaf functions by self samples


def component(frame: str) -> str | None:
    for name, marker in COMPONENTS:
        if marker in frame:
            return name
    return None


def summarise(raw: str) -> tuple[int, dict[str, int], list[tuple[str, int]]]:
    """py-spy's collapsed stacks of the event loop's thread -> (samples, samples per
    component, top leaf functions). Other threads' stacks (which start in threading.py) are
    left out: their CPU is read from /proc per thread, since py-spy counts a thread waiting in
    a system call (an fsync) as running."""
    shares: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if "(threading.py" in frames[0]:
            continue
        total += count
        leaves[frames[-1]] += count
        for frame in reversed(frames):
            name = component(frame)
            if name is not None:
                shares[name] += count
                break
        else:
            shares["event loop, interpreter"] += count
    return total, dict(shares), leaves.most_common(25)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of `pid`'s tree, by name ("main" for a process's
    own thread; a pool's threads summed under their name without the number)."""
    out: dict[str, float] = {}
    for proc in tree(pid):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{proc}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            label = "main" if tid == str(proc) else name.rstrip("0123456789_-")
            out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def profile(args: argparse.Namespace, backend: str, mode: str, tmp: Path,
            mock_port: int, py_spy: str) -> list[Profile]:
    """The gateway on `backend`, a key with a budget and limits (too high to bind); with
    `--payers` also, in the same process, a key paid for at every level (bench.run's
    `payers` target: its team, member, organization and an end user), profiled after it."""
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "bench-model", "litellm_params": {
        "model": "openai/bench-model", "api_base": f"http://127.0.0.1:{mock_port}/v1",
        "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}]}))
    env = {"FAREGATE_MASTER_KEY": MASTER, "FAREGATE_DATA_DIR": str(tmp)}
    with database(backend, tmp) as db_url:
        port = free_port()
        gw_env = {**_environ(), **env, "DATABASE_URL": db_url}
        if backend.endswith("+redis"):
            gw_env["REDIS_URL"] = args.redis
        serve = [sys.executable, "-m", "faregate", "serve", "--config", str(cfg), "--host",
                 "127.0.0.1", "--port", str(port), "--workers", "1"]
        with process(serve, gw_env, f"http://127.0.0.1:{port}/health/liveliness") as pid:
            key = httpx.post(f"http://127.0.0.1:{port}/key/generate", json={
                "models": ["bench-model"], "max_budget": 1_000_000,
                "rpm_limit": 2_000_000_000, "tpm_limit": 2_000_000_000},
                headers={"Authorization": f"Bearer {MASTER}"}).json()["key"]
            base = f"http://127.0.0.1:{port}"
            out = [sample(args, backend, mode, pid, base, key, tmp, py_spy)]
            if args.payers:
                out.append(sample(args, f"{backend}/payers", mode, pid, base,
                                  _payers_key(base), tmp, py_spy, end_user="bench-end-user"))
            return out


def sample(args: argparse.Namespace, target: str, mode: str, pid: int, base: str,
           key: str | None, tmp: Path, py_spy: str, end_user: str | None = None) -> Profile:
    """Drive `base` (c=args.concurrency) while py-spy samples `pid`; requests name
    `end_user` as the body's `user` when given."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    load = loadgen.Load(f"{base}/v1/chat/completions", _body(mode == "stream", end_user),
                        headers, args.concurrency, args.duration)
    loadgen.run(loadgen.Load(load.url, load.body, load.headers, load.concurrency, 1.0),
                prefer_wrk=True)                     # warm up
    out = tmp / f"{target.replace('/', '-')}-{mode}.txt"
    spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "--rate", str(args.rate),
                            "--format", "raw", "-o", str(out), "--nonblocking",
                            "-d", str(int(args.duration) + 1)]
                           + (["--native"] if args.native else []),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    cpu_before = thread_cpu(pid)
    result = loadgen.run(load, prefer_wrk=True)
    cpu_after = thread_cpu(pid)
    spy.wait(timeout=args.duration + 60)
    raw = out.read_text() if out.exists() else ""
    if args.raw:
        args.raw.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, args.raw / out.name)
    samples, shares, top = summarise(raw)
    per_req = 1e6 / max(1, result.requests)
    threads = {name: (cpu_after[name] - cpu_before.get(name, 0.0)) * per_req
               for name in cpu_after}
    return Profile(target, mode, args.concurrency, result.requests, sum(threads.values()),
                   {k: v for k, v in threads.items() if v >= 0.5}, samples, shares, top)


def _environ() -> dict[str, str]:
    return dict(os.environ)


def render(p: Profile, top: int = 0) -> str:
    main = p.threads_us.get("main", 0.0)
    lines = [f"{p.backend} {p.mode} c={p.concurrency}: {p.requests} requests, "
             f"{p.cpu_us_per_req:.0f} µs CPU per request (under py-spy), of which the event "
             f"loop's thread {main:.0f} µs ({p.samples} samples)"]
    for frame, count in p.top[:top]:
        lines.append(f"    {count / p.samples:>6.1%}  {frame[:110]}")
    return "\n".join(lines)


def side_by_side(profiles: list[Profile]) -> str:
    """µs per request of each component, one column per profiled target (same mode)."""
    def us(p: Profile, name: str) -> float:
        return p.shares.get(name, 0) / p.samples * p.threads_us.get("main", 0.0) \
            if p.samples else 0.0

    names = sorted({n for p in profiles for n in p.shares},
                   key=lambda n: -max(us(p, n) for p in profiles))
    threads = sorted({t for p in profiles for t in p.threads_us if t != "main"})
    width = max(10, *(len(p.backend) + 2 for p in profiles))
    head = f"{'µs CPU per request, ' + profiles[0].mode + ' c=' + str(profiles[0].concurrency):<40}"
    lines = [head + "".join(f"{p.backend:>{width}}" for p in profiles)]
    for name in names:
        lines.append(f"{name:<40}" + "".join(f"{us(p, name):>{width}.0f}" for p in profiles))
    for thread in threads:
        lines.append(f"{'other threads (' + thread + ')':<40}"
                     + "".join(f"{p.threads_us.get(thread, 0.0):>{width}.0f}"
                               for p in profiles))
    lines.append(f"{'total (/proc)':<40}"
                 + "".join(f"{p.cpu_us_per_req:>{width}.0f}" for p in profiles))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres", "postgres+redis"])
    parser.add_argument("--modes", nargs="+", default=["json", "stream"],
                        choices=["json", "stream"])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--top", type=int, default=12, help="also list the top leaf frames")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--payers", action="store_true",
                        help="also profile a key paid for at every level (team, member, "
                             "organization, end user) on each backend's gateway: column "
                             "'<backend>/payers'")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("bench.profile: py-spy is not installed: .venv/bin/pip install py-spy",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        mock_port = free_port()
        mock = [sys.executable, "-m", "faregate", "mock-upstream", "--port", str(mock_port)]
        bare_port = free_port()
        bare = [sys.executable, "-m", "bench.passthrough", "--port", str(bare_port),
                "--upstream", f"http://127.0.0.1:{mock_port}"]
        env = {**_environ(), "FAREGATE_MASTER_KEY": MASTER}
        with process(mock, env, f"http://127.0.0.1:{mock_port}/health"), \
                process(bare, env, f"http://127.0.0.1:{bare_port}/health") as bare_pid:
            for mode in args.modes:
                profiles = [sample(args, "bare", mode, bare_pid,
                                   f"http://127.0.0.1:{bare_port}", None, tmp, py_spy)]
                print(render(profiles[0], args.top), flush=True)
                for backend in args.backends:
                    for measured in profile(args, backend, mode, tmp, mock_port, py_spy):
                        profiles.append(measured)
                        print(render(measured, args.top), flush=True)
                print(side_by_side(profiles), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every UI page over HTTP at size (issue 16): `faregate serve` on a database that
bench.ui_pages seeded (100,000 keys, 1,000,000 ledger rows), each page fetched N times, its
server time taken as the serving process's CPU per page (from /proc, so a loaded machine does
not inflate it) and, on Postgres, its backends' CPU per page, beside the wall time to the
last byte (and to the first, for the CSV).

    python -m bench.ui_pages --backend sqlite --sqlite-path /tmp/ui.db --keep   # seed once
    python -m bench.ui_http --db sqlite:////tmp/ui.db
    python -m bench.ui_http --db postgresql://postgres@127.0.0.1:5432/faregate_ui
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

MASTER = "sk-ui-http-bench-master"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its descendants (workers) so far."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
        todo += children.get(current, [])
    return total


def _backends_cpu_s(database: str | None) -> float:
    """CPU seconds of the Postgres backends serving `database` (the gateway's pool: the
    bench itself holds no connection), found by their process titles."""
    if database is None:
        return 0.0
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if not title.startswith("postgres:") or f" {database} " not in title:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(db_url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "model_list": [{"model_name": f"model-{i}",
                        "litellm_params": {"model": f"openai/model-{i}",
                                           "api_base": "http://127.0.0.1:9/v1",
                                           "input_cost_per_token": 1e-6,
                                           "output_cost_per_token": 2e-6}}
                       for i in range(12)],
        "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY"}}))
    port = _free_port()
    env = {**os.environ, "FAREGATE_MASTER_KEY": MASTER, "DATABASE_URL": db_url,
           "FAREGATE_DATA_DIR": str(tmp)}
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "faregate", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--config", str(cfg)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health/liveliness", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"faregate serve did not start: {(tmp / 'serve.log').read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="the seeded database's URL")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tz", default="UTC", help="the viewer's time zone (IANA)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = serve(args.db, Path(tmp))
        database = (args.db.rsplit("/", 1)[1].split("?")[0]
                    if args.db.startswith("postgres") else None)
        try:
            rows = measure(base, proc.pid, database, args.runs, args.tz)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\n{args.db.split('://')[0]}, viewer in {args.tz}; median of {args.runs} "
          f"(wall) and CPU per page; load average {os.getloadavg()[0]:.1f}")
    print("| page | gateway CPU ms | database CPU ms | wall ms | first byte ms |")
    print("|---|---:|---:|---:|---:|")
    for name, cpu, db_cpu, wall, first in rows:
        print(f"| {name} | {cpu:.1f} | {db_cpu:.1f} | {wall:.1f} | "
              f"{'' if first is None else f'{first:.1f}'} |")


Row = tuple[str, float, float, float, float | None]


def measure(base: str, pid: int, database: str | None, runs: int, tz: str) -> list[Row]:
    """Per page: the gateway's CPU, the database backends' CPU (Postgres; SQLite runs in the
    gateway), the median wall to the last byte and, for the CSV, to the first."""
    out: list[Row] = []
    with httpx.Client(base_url=base, timeout=120) as ui:
        token = CSRF.search(ui.get("/ui/login").text)
        assert token, "no login form"
        answer = ui.post("/ui/login", data={"csrf": token[1], "key": MASTER, "next": ""})
        assert answer.status_code == 303, answer.text[-500:]
        ui.cookies.set("faregate_tz", tz.replace("/", "%2F"), path="/ui")

        def page(name: str, path: str, params: dict[str, str] | None = None) -> str:
            text = ui.get(path, params=params).text            # warm
            walls, firsts = [], []
            cpu, db_cpu = _cpu_s(pid), _backends_cpu_s(database)
            for _ in range(runs):
                started = time.perf_counter()
                with ui.stream("GET", path, params=params) as response:
                    chunks = response.iter_bytes()
                    next(chunks, b"")
                    firsts.append((time.perf_counter() - started) * 1e3)
                    for _ in chunks:
                        pass
                    assert response.status_code == 200, (path, response.status_code)
                walls.append((time.perf_counter() - started) * 1e3)
            per_page = (_cpu_s(pid) - cpu) * 1e3 / runs
            db_per_page = (_backends_cpu_s(database) - db_cpu) * 1e3 / runs
            streamed = path.endswith(".csv")
            out.append((name, per_page, db_per_page, statistics.median(walls),
                        statistics.median(firsts) if streamed else None))
            return text

        page("overview", "/ui/overview")
        keys = page("keys page 1", "/ui/keys")
        after = re.search(r'href="/ui/keys\?[^"]*after=([^"&]+)', keys)
        if after:
            page("keys page 2 (keyset)", "/ui/keys",
                 {"after": httpx.QueryParams(f"after={after[1]}")["after"]})
        page("keys, one team", "/ui/keys", {"team_id": "t7"})
        page("keys, blocked", "/ui/keys", {"state": "blocked"})
        shared = page("keys, search a prefix 10,000 aliases share", "/ui/keys",
                      {"q": "alias-05"})
        after = re.search(r'href="/ui/keys\?[^"]*after=([^"&]+)', shared)
        if after:
            page("keys, that search's page 2", "/ui/keys",
                 {"q": "alias-05",
                  "after": httpx.QueryParams(f"after={after[1]}")["after"]})
        token_link = re.search(r'href="/ui/keys/([0-9a-f]{64})"', keys)
        if token_link:
            page("a key's page", f"/ui/keys/{token_link[1]}")
        logs = page("logs page 1", "/ui/logs")
        page("logs, failures only", "/ui/logs", {"status": "failure"})
        page("logs, one team", "/ui/logs", {"team_id": "t5"})
        request = re.search(r'href="/ui/logs/([^"?]+)"', logs)
        if request:
            page("a request", f"/ui/logs/{request[1]}")
            page("logs tail poll", "/ui/logs/tail", {"after": request[1]})
        for group in ("model", "key", "team", "customer"):
            page(f"usage 7 days by day, by {group}", "/ui/usage", {"group": group})
        page("usage 7 days by hour, by model", "/ui/usage", {"group": "model",
                                                            "bucket": "hour"})
        today = time.strftime("%Y-%m-%d", time.gmtime())
        month = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 29 * 86400))
        page("usage 30 days by day, by model", "/ui/usage", {"group": "model", "from": month,
                                                             "to": today})
        page("usage CSV, 7 days by key (1,000 keys + other)", "/ui/usage.csv",
             {"group": "key"})
        page("models", "/ui/models")
        for kind in ("teams", "users", "customers"):
            page(kind, f"/ui/{kind}")
    return out


if __name__ == "__main__":
    main()

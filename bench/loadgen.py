"""Load generators: wrk when installed (Debian's package), else a bounded Python closed loop.

Both send the same POST with the same headers for a fixed duration at a fixed concurrency and
report requests/s, p50/p99 latency and non-2xx answers. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp


@dataclass(frozen=True)
class Load:
    url: str
    body: bytes
    headers: dict[str, str]
    concurrency: int
    duration_s: float


@dataclass(frozen=True)
class Measured:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run(load: Load, prefer_wrk: bool = True) -> Measured:
    if prefer_wrk and shutil.which("wrk"):
        return _wrk(load)
    return asyncio.run(_python(load))


_LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
"""


def _wrk(load: Load) -> Measured:
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}"
                        for k, v in load.headers.items())
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_LUA.format(body=json.dumps(load.body.decode()), headers=headers))
        out = subprocess.run(
            ["wrk", "-t1", f"-c{load.concurrency}", f"-d{max(1, round(load.duration_s))}s",
             "--latency", "-s", str(script), load.url],
            capture_output=True, text=True, timeout=load.duration_s + 60, check=True).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    seconds = float(total[2]) * {"s": 1, "ms": 1e-3, "m": 60}.get(total[3], 1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    failed = int(errors[1]) if errors else 0
    if socket_errors:
        failed += sum(int(x) for x in socket_errors.groups())
    return Measured(int(total[1]), failed, seconds, _latency(out, "50"), _latency(out, "99"),
                    "wrk")


def _latency(out: str, pct: str) -> float:
    match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        return float("nan")
    return float(match[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match[2]]


async def _python(load: Load) -> Measured:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + load.duration_s
    connector = aiohttp.TCPConnector(limit=load.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(load.url, data=load.body, headers=load.headers) as r:
                    await r.read()
                    if r.status >= 300:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        seconds = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3 \
            if latencies else float("nan")

    return Measured(len(latencies), errors, seconds, pct(0.50), pct(0.99), "python")

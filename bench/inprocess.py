"""faregate's own CPU per request, without the network: the ASGI app called in process, the
upstream answering at once from memory, the client's side a no-op.

    python -m bench.inprocess --requests 10000

What it leaves out is what the bare passthrough pays too (uvicorn's parsing and writing, the
aiohttp client, the kernel's loopback): what is left is the gateway's own work (auth, parse,
route, admission, settle, the journal, metrics, headers) and its ledger thread, measured as
the process's CPU time, so it barely moves with the machine's load. Compare trees by running it
with each on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from faregate import config
from faregate.app import Faregate
from faregate.config import Deployment
from faregate.providers.base import UpstreamReply
from faregate.storage import migrate

MASTER = "sk-inprocess-master-0000"
REPLY = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}})
_CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
          "model": "bench-model",
          "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}]}
EVENTS = b"".join(b"data: " + orjson.dumps(_CHUNK) + b"\n\n" for _ in range(16)) + (
    b"data: " + orjson.dumps({**_CHUNK, "choices": [], "usage": {
        "prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}}) + b"\n\n"
    b"data: [DONE]\n\n")


class InstantUpstream:
    """Answers every call at once (the mock's reply, or its whole stream in one block)."""

    def use(self, session: object) -> None:
        pass

    def check(self, d: Deployment, path: str, body: dict[str, Any]) -> None:
        pass

    async def send(self, d: Deployment, path: str, body: bytes) -> UpstreamReply:
        return UpstreamReply(REPLY, orjson.loads(REPLY)["usage"])

    async def stream(self, d: Deployment, path: str, body: bytes
                     ) -> AsyncGenerator[bytes, None]:
        yield EVENTS


async def measure(stream: bool, requests: int, tmp: Path) -> tuple[float, float]:
    """(µs of CPU per request, µs of it in the cyclic GC)."""
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "bench-model",
                                                   "litellm_params": {
        "model": "openai/bench-model", "api_base": "http://127.0.0.1:9/v1",
        "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}]}))
    db = f"sqlite:///{tmp / 'bench.db'}"
    await asyncio.to_thread(migrate.upgrade, db)
    settings = config.load({"FAREGATE_MASTER_KEY": MASTER, "DATABASE_URL": db,
                            "FAREGATE_DATA_DIR": str(tmp)}, cfg)
    app = Faregate.from_settings(settings)
    await app.startup()
    instant = InstantUpstream()
    # Every provider's client answers at once (the bench reaches into ProviderClients).
    for name in list(app.upstream._clients):
        app.upstream._clients[name] = instant
    app.upstream._default = instant
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                                     base_url="http://gateway") as http:
            key = (await http.post("/key/generate", json={
                "models": ["bench-model"], "max_budget": 1_000_000,
                "rpm_limit": 2_000_000_000, "tpm_limit": 2_000_000_000},
                headers={"Authorization": f"Bearer {MASTER}"})).json()["key"]
        body = json.dumps({"model": "bench-model", "max_tokens": 16,
                           "messages": [{"role": "user", "content": "ping"}],
                           **({"stream": True} if stream else {})}).encode()
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"host", b"gateway"), (b"content-type", b"application/json"),
                             (b"authorization", f"Bearer {key}".encode()),
                             (b"content-length", str(len(body)).encode())],
                 "query_string": b"", "http_version": "1.1", "scheme": "http",
                 "server": ("gateway", 80), "client": ("client", 1), "root_path": ""}
        statuses: list[int] = []

        async def one() -> None:
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.Event().wait()            # the client stays until the end
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(scope, receive, send)
            await asyncio.sleep(0)                      # let the loop run what was scheduled

        for _ in range(min(2000, requests)):            # warm up
            await one()
        in_gc = 0.0
        started_gc = 0.0

        def gc_timer(phase: str, info: dict[str, Any]) -> None:
            nonlocal in_gc, started_gc
            if phase == "start":
                started_gc = time.perf_counter()
            else:
                in_gc += time.perf_counter() - started_gc

        gc.callbacks.append(gc_timer)
        statuses.clear()
        cpu = time.process_time()
        for _ in range(requests):
            await one()
        cpu = time.process_time() - cpu
        gc.callbacks.remove(gc_timer)
        if set(statuses) != {200}:
            raise RuntimeError(f"answers other than 200: {sorted(set(statuses))}")
        return cpu / requests * 1e6, in_gc / requests * 1e6
    finally:
        await app.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--modes", nargs="+", default=["json", "stream"],
                        choices=["json", "stream"])
    args = parser.parse_args(argv)
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as tmp:
            cpu, in_gc = asyncio.run(measure(mode == "stream", args.requests, Path(tmp)))
        print(f"{mode:<7}{cpu:8.1f} µs CPU per request in process (of which GC {in_gc:.1f}), "
              f"{args.requests} requests", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The yardstick: the barest Python proxy (uvicorn+uvloop+httptools, raw ASGI, a pooled aiohttp
client). No auth, no budgets, no ledger. The gateway's goal is a small multiple of its cost,
measured on the same machine in the same run.

    python -m bench.passthrough --port 9000 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn


class Passthrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    assert self.session is not None
                    await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert self.session is not None
        async with self.session.post(self.upstream + scope["path"], data=body, headers={
                "Content-Type": "application/json"}) as resp:
            headers = [(b"content-type", resp.headers.get("Content-Type", "").encode())]
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(Passthrough(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()

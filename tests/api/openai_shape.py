"""Checks shared by the hostile-input and fuzz suites: OpenAI's error shape, nothing charged."""

from __future__ import annotations

import asyncio
from typing import Any

from api.conftest import RunningGateway

ERROR_FIELDS = {"message", "type", "param", "code"}


def openai_error(status: int, body: Any) -> dict[str, Any]:
    """The `error` object of a 4xx body; fails unless it is OpenAI's shape with a message."""
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and list(body) == ["error"], body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert isinstance(error["code"], str) and error["code"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    return dict(error)


async def spend_and_rows(gw: RunningGateway, key: str) -> tuple[int, int, int]:
    """(the key's spend, the ledger's sum for it, its ledger rows), in nano-dollars."""
    await gw.app.ledger.flush()
    info = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
    rows = (await gw.admin("GET", "/spend/logs", params={"api_key": key,
                                                         "page_size": 1000})).json()
    spend = round(info["total_spend"] * 1e9)
    return spend, sum(r["spend_nanos"] for r in rows), len(rows)


async def raw_http(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes no well-behaved client would send (a lying content-length, header values
    httpx refuses) as HTTP/1.0, and read the response to its end: (status, body)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"\r\n\r\n" + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head_bytes, _, content = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head_bytes.lower():
        content = _dechunk(content)
    return int(head_bytes.split()[1]), content


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]

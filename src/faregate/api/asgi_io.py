"""Small raw-ASGI helpers: read a bounded body, send JSON bytes, render a GatewayError."""

from __future__ import annotations

from typing import Any

from faregate.errors import BodyTooLarge, GatewayError

Scope = dict[str, Any]
Message = dict[str, Any]
JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGone(Exception):
    """The client hung up before its request body arrived."""


async def read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than {limit} bytes "
                        "(general_settings.max_request_body_bytes)", code="body_too_large")


async def send_bytes(send: Any, status: int, body: bytes,
                     headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(exc: GatewayError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, headers) of `exc` in OpenAI's shape."""
    headers = JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status, exc.body(), headers


async def send_error(send: Any, exc: GatewayError,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    status, body, headers = error_response(exc)
    await send_bytes(send, status, body, headers + (extra_headers or []))

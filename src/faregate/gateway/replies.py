"""What the gateway hands the edge: a whole reply, or a stream's head and its events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Reply:
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int = 200


@dataclass(slots=True)
class StreamReply:
    """Send `head`, then `events`; always `aclose()` events (that settles the request)."""

    head: bytes                             # complete SSE events, each ending in a blank line
    events: AsyncGenerator[bytes, None]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

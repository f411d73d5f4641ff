"""The mock upstream's fault modes and counters, driven at run time from another process.

``POST /mock/faults`` sets the fault for every generation request (chat, completions,
embeddings) of every model, until the next ``POST``::

    {"mode": "ok"}                               answer normally (the default)
    {"mode": "error", "status": 503}             answer that status (400-599), OpenAI's shape
                                                 (with "retry_after": 7, a Retry-After header)
    {"mode": "slow", "ms": 2000}                 wait ms before answering (first byte)
    {"mode": "down"}                             send a response head, then close the
                                                 connection (a crash mid-answer)
    {"mode": "hang"}                             never answer; only a client disconnect ends it
    {"mode": "malformed"}                        a 200 whose body is not JSON (streams: one
                                                 malformed event, then [DONE])
    {"mode": "break", "after": 3}                streams: send 3 events, then drop the
                                                 connection (non-streams: as "down")

Any mode takes ``"rate": 0.5`` (the share of requests it hits, drawn from a generator seeded
with ``"seed"``, default 0), so a running mock can flap. ``GET /mock/faults`` returns the
current fault. ``GET /mock/stats`` returns counters (`MockStats`); ``POST /mock/reset`` sets
the fault to ok and the counters to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("ok", "error", "slow", "down", "hang", "malformed", "break")


class MockDrop(Exception):
    """Raised inside the mock's ASGI app to make the server close the connection."""


class BadFault(ValueError):
    """A /mock/faults body the mock cannot follow; the message says what is expected."""


@dataclass(frozen=True, slots=True)
class Fault:
    mode: str = "ok"
    status: int = 503
    ms: float = 0.0
    after: int = 0
    rate: float = 1.0
    seed: int = 0
    retry_after: float = 0.0        # error mode: sent as a Retry-After header when > 0

    @classmethod
    def parse(cls, body: object) -> Fault:
        if not isinstance(body, dict) or body.get("mode") not in MODES:
            raise BadFault(f"the body must be a JSON object with 'mode' one of {', '.join(MODES)}")
        fault = cls(**{k: v for k, v in body.items() if k in cls.__dataclass_fields__})
        checks = [
            (isinstance(fault.status, int) and 400 <= fault.status <= 599,
             "'status' must be an HTTP error status (400-599)"),
            (isinstance(fault.ms, int | float) and fault.ms >= 0, "'ms' must be a number >= 0"),
            (isinstance(fault.after, int) and fault.after >= 0, "'after' must be an int >= 0"),
            (isinstance(fault.rate, int | float) and 0 <= fault.rate <= 1,
             "'rate' must be a number in [0, 1]"),
            (isinstance(fault.seed, int), "'seed' must be an integer"),
            (isinstance(fault.retry_after, int | float) and fault.retry_after >= 0,
             "'retry_after' must be a number of seconds >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadFault(message)
        return fault


@dataclass(slots=True)
class MockStats:
    """Counters since start (or the last reset); a test reads them over HTTP."""

    requests: int = 0               # generation requests received (chat, completions, embeddings)
    faults_injected: int = 0        # requests a run-time fault hit
    streams_started: int = 0
    streams_completed: int = 0      # sent to the end ([DONE])
    streams_cancelled: int = 0      # the client left mid-stream; generation stopped
    streams_broken: int = 0         # dropped on purpose (break)
    active_streams: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FaultSwitch:
    """The current run-time fault and the draw that decides whether it hits a request."""

    def __init__(self) -> None:
        self.fault = Fault()
        self._rng = random.Random(0)

    def set(self, fault: Fault) -> None:
        self.fault = fault
        self._rng = random.Random(fault.seed)

    def draw(self) -> Fault | None:
        """The fault for this request, or None to answer normally."""
        fault = self.fault
        if fault.mode == "ok" or (fault.rate < 1 and self._rng.random() >= fault.rate):
            return None
        return fault


Receive = Callable[[], Awaitable[dict[str, Any]]]


async def until_disconnect(receive: Receive) -> None:
    """Return when the client has gone (the request body was already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def sleep_unless_gone(gone: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once if the client leaves."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gone.wait(), seconds)

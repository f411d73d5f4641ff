"""One request on its way through the gateway: what it asked, and what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from faregate.admission.demand import Admitted, Payer
from faregate.config import Deployment
from faregate.keys.auth import Caller
from faregate.observe.trace import RequestTrace
from faregate.wire.openai_request import ParsedRequest


@dataclass(frozen=True, slots=True)
class Ask:
    """What the caller asked, fixed from the moment it was routed."""

    request_id: str
    request: ParsedRequest
    trace: RequestTrace
    started: datetime
    end_user: Payer | None = None   # the end user it is made for, as read when routed


@dataclass(slots=True)
class Call:
    """An admitted request, from reservation to settlement (one per request: an attempt on
    another deployment moves it there)."""

    ask: Ask
    caller: Caller
    deployment: Deployment
    admitted: Admitted
    prompt_bound: int
    wanted: int                     # output tokens asked for (before a budget cap)
    settled: bool = False
    cache_read: int = 0             # prompt tokens the upstream read from its prompt cache
    cache_write: int = 0            # prompt tokens the upstream wrote to it
    attempts: int = 1               # upstream calls made for it (retries, fallbacks)
    error: str | None = None        # what it ended with, as its ledger row keeps it

    @property
    def request(self) -> ParsedRequest:
        return self.ask.request

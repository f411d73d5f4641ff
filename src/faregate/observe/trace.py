"""RequestTrace: what one request on the OpenAI routes did, for its metrics and its log line.

The edge (api/openai_routes.py) opens it with the request id; the gateway fills in what it
learns (key alias, model, upstream timings, tokens, spend); the edge records it once at the end.
It never holds the prompt, the key or its hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A caller's own x-request-id is echoed and logged only if it is a plain, short token.
_SANE_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(slots=True)
class RequestTrace:
    request_id: str                         # the gateway's own: the ledger's idempotency key
    started: float                          # perf_counter() at the edge
    client_request_id: str | None = None    # the caller's x-request-id, if sane
    model: str = ""                         # the model the caller asked for
    key_alias: str = ""                     # of the virtual key; "" before authentication
    upstream_started: float | None = None
    upstream_s: float | None = None         # the upstream call, first byte sent to last read
    first_token_s: float | None = None      # streams: upstream call start to its first event
    prompt_tokens: int = 0
    completion_tokens: int = 0
    spend_nanos: int = 0
    outcome: str = ""                       # the ledger row's status, once settled
    attempts: int = 0                       # upstream calls made (0: refused before any)
    error: str | None = None                # as the ledger row keeps it (no secrets)


def sane_client_request_id(value: bytes) -> str | None:
    """The caller's id if it is safe to echo in a header and a log line, else None."""
    text = value.decode("latin-1")
    return text if _SANE_CLIENT_ID.fullmatch(text) else None

"""The headers LiteLLM's proxy adds to its answers, which its users' scripts read: the call's
cost, the key's spend and budget, the call id. Built from what the request already knows (the
key record, admission's spend, the settled cost): never a store round trip.

Values are written as LiteLLM writes them: dollars as Python's `str(float)` (`10.0`,
`2.4e-05`), and a header whose value is unknown is left out rather than sent as `None`.
"""

from __future__ import annotations

from faregate.money import nanos_to_dollars
from faregate.observe.trace import RequestTrace
from faregate.records import KeyRecord

Headers = list[tuple[bytes, bytes]]


def key_headers(key: KeyRecord, period_spend: int) -> Headers:
    """The key's state: its spend this budget period, its budget and its own rate limits."""
    out = [(b"x-litellm-key-spend", _dollars(period_spend))]
    if key.max_budget_nanos is not None:
        out.append((b"x-litellm-key-max-budget", _dollars(key.max_budget_nanos)))
    if key.rpm_limit is not None:
        out.append((b"x-litellm-key-rpm-limit", str(key.rpm_limit).encode()))
    if key.tpm_limit is not None:
        out.append((b"x-litellm-key-tpm-limit", str(key.tpm_limit).encode()))
    return out


def call_headers(trace: RequestTrace, key: KeyRecord, period_spend: int,
                 cost: int | None) -> Headers:
    """Every LiteLLM header of one answer. `cost`: the settled cost in nanos, or None where it
    is not known yet (a stream's headers leave before its usage arrives, as in LiteLLM)."""
    out = [(b"x-litellm-call-id", trace.request_id.encode())]
    # A stored model's name may hold what a header value cannot (a newline): then it is left out.
    if trace.model and trace.model.isascii() and trace.model.isprintable():
        out.append((b"x-litellm-model-group", trace.model.encode()))
    if cost is not None:
        out.append((b"x-litellm-response-cost", _dollars(cost)))
    return out + key_headers(key, period_spend)


def _dollars(nanos: int) -> bytes:
    return str(nanos_to_dollars(nanos)).encode()

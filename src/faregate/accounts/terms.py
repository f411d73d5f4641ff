"""The budget terms every payer takes, in LiteLLM's names (max_budget in dollars,
budget_duration, tpm_limit, rpm_limit, max_parallel_requests): declared once (`Terms`, which
every payer's settings extend), checked by one rule each, turned into record fields; and the
one rule for LiteLLM fields faregate does not implement: a 400 naming the field."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from faregate.admission import periods
from faregate.errors import InvalidRequest
from faregate.money import dollars_to_nanos, nanos_to_dollars
from faregate.wire.storable import BUDGET_DURATION_CHARS, INT32_MAX, check_stored_size

# values LiteLLM's UI and SDKs send as defaults: they ask for nothing
_NOTHING: tuple[Any, ...] = (None, [], {}, False, "")


@dataclass(frozen=True)
class Terms:
    """A payer's budget terms as an admin sets them (UserSettings, TeamSettings and
    KeySettings extend it); None = not given, or given as none."""

    max_budget: float | None = None
    budget_duration: str | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None

    def given_terms(self, given: Collection[str]) -> dict[str, Any]:
        """The terms named in `given`, by name (for record_terms)."""
        return {name: getattr(self, name) for name in TERM_FIELDS if name in given}


TERM_FIELDS = tuple(f.name for f in fields(Terms))


def record_terms(given: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The record fields for the terms in `given` (only those present): max_budget ->
    max_budget_nanos; budget_duration -> budget_duration and its first period's end; a limit
    as it is (an integer column: 0 to INT32_MAX)."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name == "max_budget":
            try:
                out["max_budget_nanos"] = None if value is None else dollars_to_nanos(
                    value, "max_budget")
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="max_budget") from None
        elif name == "budget_duration":
            period = out["budget_duration"] = duration(value)
            out["budget_reset_at"] = None if period is None else periods.add(now, period)
        elif name in TERM_FIELDS:
            if value is not None and not 0 <= value <= INT32_MAX:
                raise InvalidRequest(f"'{name}' must be a whole number from 0 to {INT32_MAX}",
                                     param=name)
            out[name] = value
    return out


def payer_fields(given: Mapping[str, Any], settable: Collection[str],
                 now: datetime) -> dict[str, Any]:
    """The record fields of a payer's settings: its terms (record_terms) and those of
    `settable` that `given` holds; models as a tuple, a null metadata as {}, each within
    one stored JSON document; blocked true or false."""
    out = record_terms(given, now)
    out.update((name, given[name]) for name in settable if name in given)
    if "models" in out:
        out["models"] = tuple(out["models"] or ())
        check_stored_size(list(out["models"]), "models")
    if "metadata" in out:
        out["metadata"] = out["metadata"] or {}
        check_stored_size(out["metadata"], "metadata")
    if "blocked" in out and out["blocked"] is None:
        raise InvalidRequest("'blocked' must be true or false", param="blocked")
    return out


def duration(value: object) -> str | None:
    """The one budget_duration rule, for every payer and every body: null (no period), or
    LiteLLM's <number><unit> (s, m, h, d, w, mo: periods.validate) in at most
    BUDGET_DURATION_CHARS characters, the width of the column it is stored in. Anything else
    is a 400 naming budget_duration."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= BUDGET_DURATION_CHARS:
        try:
            return periods.validate(value)
        except ValueError as exc:
            message = str(exc)
    else:
        message = (f"budget_duration must be text of at most {BUDGET_DURATION_CHARS} "
                   "characters; use e.g. 30s, 30m, 1h, 1d, 1w or 1mo")
    raise InvalidRequest(message, param="budget_duration")


def terms_view(record: Any) -> dict[str, Any]:
    """A payer's terms as LiteLLM shows them (max_budget in dollars)."""
    nanos = record.max_budget_nanos
    reset_at = getattr(record, "budget_reset_at", None)
    return {"max_budget": None if nanos is None else nanos_to_dollars(nanos),
            "budget_duration": record.budget_duration,
            "budget_reset_at": reset_at.isoformat() if reset_at else None,
            "tpm_limit": record.tpm_limit, "rpm_limit": record.rpm_limit,
            "max_parallel_requests": record.max_parallel_requests}


def spend_view(record: Any) -> dict[str, float]:
    """spend: this budget period's (what counts against max_budget); total_spend: lifetime."""
    return {"spend": nanos_to_dollars(record.spend_nanos - record.period_base_nanos),
            "total_spend": nanos_to_dollars(record.spend_nanos)}


def refuse_unsupported(body: Mapping[str, Any], unsupported: Mapping[str, str]) -> None:
    """A 400 (code field_not_supported) naming the first field of `body` that faregate would
    otherwise ignore; a value that asks for nothing (null, [], {}, false, "") passes."""
    for name, value in body.items():
        if name in unsupported and not any(
                value == nothing and type(value) is type(nothing) for nothing in _NOTHING):
            raise InvalidRequest(f"'{name}' is not supported: {unsupported[name]}. Leave it "
                                 "out (see docs/admin-api.md)", param=name,
                                 code="field_not_supported")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None

"""The limits that keep hostile input from becoming a 5xx: JSON the gateway can write back,
durations that stay inside the calendar."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from faregate.admission import periods
from faregate.errors import InvalidRequest
from faregate.wire.json_limits import MAX_JSON_DEPTH, unwritable
from faregate.wire.openai_request import CallType, parse


def nested_bytes(levels: int) -> bytes:
    return b"[" * levels + b"1" + b"]" * levels


@pytest.mark.parametrize(("levels", "ok"), [(MAX_JSON_DEPTH, True),
                                            (MAX_JSON_DEPTH + 1, False)])
def test_the_depth_limit_is_orjsons_writer(levels: int, ok: bool) -> None:
    value = orjson.loads(nested_bytes(levels))
    assert (unwritable(value) is None) is ok


def test_integers_past_64_bits_are_unwritable() -> None:
    assert unwritable({"a": 2**64}) is not None
    assert unwritable({"a": 2**64 - 1, "b": -(2**63)}) is None


@pytest.mark.parametrize("where", ["tools", "response_format", "x"])
def test_a_body_the_gateway_could_not_forward_is_refused(where: str) -> None:
    head = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
    fits = head + b'"' + where.encode() + b'": ' + nested_bytes(MAX_JSON_DEPTH - 1) + b"}"
    assert parse(fits, CallType.CHAT).model == "m"
    deep = head + b'"' + where.encode() + b'": ' + nested_bytes(MAX_JSON_DEPTH) + b"}"
    with pytest.raises(InvalidRequest) as refused:
        parse(deep, CallType.CHAT)
    assert refused.value.code == "json_too_deep" and str(MAX_JSON_DEPTH) in refused.value.message
    with pytest.raises(InvalidRequest) as past_reader:       # orjson's reader stops at 1024
        parse(head + b'"x": ' + nested_bytes(2000) + b"}", CallType.CHAT)
    assert past_reader.value.code == "json_too_deep"


@pytest.mark.parametrize("text", ["99999999999999999999d", "9999999999mo", "5300w",
                                  "36601d"])
def test_durations_past_100_years_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="100 years"):
        periods.validate(text)


def test_the_longest_duration_still_lands_in_the_calendar() -> None:
    assert periods.add(datetime(9000, 1, 1, tzinfo=UTC), "36600d").year == 9100
    assert periods.validate("1000mo") == "1000mo"

"""faregate.wire.storable: the one rule for what may be stored, and the field it names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from faregate.errors import InvalidRequest
from faregate.storage.schema import spend_logs
from faregate.wire.json_limits import MAX_JSON_DEPTH
from faregate.wire.storable import (
    INT_MAX,
    INT_MIN,
    LEDGER_UPSTREAM_CHARS,
    MAX_STORED_JSON_BYTES,
    check_storable,
    check_stored_size,
    check_text,
)


def refused(value: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        check_storable(value)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"key_alias": "a\x00b"}, "key_alias", "nul_character"),
    ({"key_alias": "a\ud800b"}, "key_alias", "lone_surrogate"),
    ({"metadata": {"team": "\udfff"}}, "metadata.team", "lone_surrogate"),
    ({"metadata": {"tags": ["ok", "x\x00"]}}, "metadata.tags[1]", "nul_character"),
    ({"metadata": {"a": float("inf")}}, "metadata.a", "non_finite_number"),
    ({"metadata": {"a": float("-inf")}}, "metadata.a", "non_finite_number"),
    ({"metadata": {"a": float("nan")}}, "metadata.a", "non_finite_number"),
    ({"metadata": {"a": INT_MAX + 1}}, "metadata.a", "integer_out_of_range"),
    ({"metadata": {"a": INT_MIN - 1}}, "metadata.a", "integer_out_of_range"),
    ({"metadata": {"k\x00": 1}}, "metadata", "nul_character"),     # a key: its object named
    ({"k\ud800": 1}, None, "lone_surrogate"),
    ({"litellm_params": {"model": "openai/x\x00y"}}, "litellm_params.model", "nul_character"),
])
def test_each_unstorable_value_is_refused_naming_its_field(body: dict[str, Any],
                                                           param: str | None, code: str
                                                           ) -> None:
    error = refused(body)
    assert (error.param, error.code) == (param, code)
    assert (param or "a field name") in error.message


def test_what_json_readers_make_of_hostile_literals_is_refused() -> None:
    """Python's json (FastAPI's reader) takes NaN, Infinity, 1e999 and \\ud800 escapes."""
    for literal in (b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e999}', b'{"a": "\\ud800"}',
                    b'{"a": "\\u0000"}'):
        refused(json.loads(literal))


def test_storable_values_pass() -> None:
    check_storable({"a": ["text", "ünïcødé", "😀", 1.5, -0.0, 0, INT_MIN, INT_MAX, True, None],
                    "b": {"": ""}, "é": "\t\n"})


def test_nesting_is_counted_like_the_writer() -> None:
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = [value]
        return value

    check_storable(nested(MAX_JSON_DEPTH))
    assert refused(nested(MAX_JSON_DEPTH + 1)).code == "json_too_deep"
    assert refused(nested(50_000)).code == "json_too_deep"   # no recursion to run out of


def test_a_refusal_stays_short_whatever_the_path() -> None:
    value: Any = "\x00"
    for _ in range(200):
        value = {"n" * 1000: value}
    error = refused(value)
    assert error.code == "nul_character" and len(error.message) < 400


def test_check_text() -> None:
    check_text("qwen-local", "model")
    with pytest.raises(InvalidRequest) as caught:
        check_text("qwen\x00", "model")
    assert caught.value.param == "model" and "model contains a NUL" in caught.value.message


def test_stored_size() -> None:
    check_stored_size({"a": "x" * (MAX_STORED_JSON_BYTES - 8)}, "metadata")   # exactly the limit
    with pytest.raises(InvalidRequest) as caught:
        check_stored_size({"a": "x" * (MAX_STORED_JSON_BYTES - 7)}, "metadata")
    assert (caught.value.param, caught.value.code) == ("metadata", "value_too_large")


def test_the_ledger_width_is_the_schema_column() -> None:
    assert spend_logs.c.upstream.type.length == LEDGER_UPSTREAM_CHARS

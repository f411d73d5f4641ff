"""What the gateway may store: the one rule every route applies to what a client sends.

A value the database would refuse must be refused at the edge with a 400 naming the field, not
discovered at INSERT time (a 500 for an admin call; for a spend row, a row the ledger writer
cannot write). Unstorable are:

- NUL (U+0000): Postgres `text` and `jsonb` refuse it, `\\u0000` inside JSON too;
- lone surrogates (U+D800-U+DFFF): Python's json reads `\\ud800`, but no UTF-8 encoder writes it;
- numbers JSON cannot carry: NaN, Infinity and literals that overflow a double (`1e999` reads as
  infinity and would be written back as `null`), integers past 64 bits (orjson's writer);
- nesting past `MAX_JSON_DEPTH` (orjson's writer);
- a stored JSON document (key metadata, a model's litellm_params...) past
  `MAX_STORED_JSON_BYTES`, and text past its column's width (`LEDGER_UPSTREAM_CHARS`,
  `BUDGET_DURATION_CHARS`).

The checks walk the value once, iteratively (a hostile body may nest deeper than Python's
recursion limit). Documented in docs/admin-api.md ("What is refused").
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from faregate.errors import InvalidRequest
from faregate.wire.json_limits import MAX_JSON_DEPTH, too_deep

MAX_STORED_JSON_BYTES = 64 * 1024   # one stored JSON document, as written
LEDGER_UPSTREAM_CHARS = 512         # faregate_spend_logs.upstream: "<api_base>#<model>"
BUDGET_DURATION_CHARS = 32          # every payer's budget_duration column: VARCHAR(32)
INT32_MAX = 2**31 - 1               # a limit (rpm, tpm, parallel, page): INTEGER columns
MAX_BUDGET_DOLLARS = 1e9            # in nano-dollars a budget must fit a BIGINT (9.2e18)
INT_MIN, INT_MAX = -(2**63), 2**64 - 1   # what orjson writes: int64 and uint64
_MAX_SHOWN_NAME = 64                # a field name longer than this is cut in messages
_MAX_SHOWN_PATH = 256               # and a path to a field


def check_text(text: str, where: str) -> None:
    """InvalidRequest naming `where` if `text` cannot be stored (NUL, a lone surrogate)."""
    _check_text(text, where, where)


def _check_text(text: str, where: str, param: str | None) -> None:
    if "\x00" in text:
        raise InvalidRequest(f"{where} contains a NUL character (U+0000), which the database "
                             "cannot store; remove it", param=param, code="nul_character")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                f"{where} contains a lone surrogate (U+{ord(text[exc.start]):04X}), which is "
                "not valid Unicode text; send UTF-8 text", param=param,
                code="lone_surrogate") from None


def check_storable(value: Any, where: str = "") -> None:
    """InvalidRequest naming a field of `value` (a parsed JSON value) that cannot be stored:
    text as `check_text`, in values and in object keys alike, numbers that are not finite or
    do not fit 64 bits, nesting deeper than MAX_JSON_DEPTH. `where` names `value`
    itself ("" for a request body: its fields are then named as they are, `key_alias`,
    `metadata.team`, `models[0]`)."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, path or "the body", path or None)
        elif isinstance(item, dict):
            if depth >= MAX_JSON_DEPTH:
                raise too_deep()
            for name, inner in item.items():
                if isinstance(name, str):
                    _check_text(name, f"a field name in {path}" if path else "a field name",
                                path or None)
                stack.append((inner, _field(path, name), depth + 1))
        elif isinstance(item, list):
            if depth >= MAX_JSON_DEPTH:
                raise too_deep()
            stack.extend((inner, f"{path}[{i}]", depth + 1) for i, inner in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                shown = path or "the body"
                raise InvalidRequest(
                    f"{shown} is not a finite number (NaN, Infinity, or a literal beyond "
                    "±1.8e308 such as 1e999); send a finite number", param=path or None,
                    code="non_finite_number")
        elif isinstance(item, int) and not INT_MIN <= item <= INT_MAX:
            shown = path or "the body"
            raise InvalidRequest(f"{shown} is an integer beyond 64 bits; integers must lie "
                                 "within -2^63 and 2^64-1", param=path or None,
                                 code="integer_out_of_range")


def check_stored_size(document: Any, where: str) -> None:
    """InvalidRequest if `document` (already `check_storable`) is larger than one stored JSON
    document may be."""
    size = len(orjson.dumps(document))
    if size > MAX_STORED_JSON_BYTES:
        raise InvalidRequest(f"{where} is {size} bytes as JSON; at most "
                             f"{MAX_STORED_JSON_BYTES} bytes are stored", param=where,
                             code="value_too_large")


def _field(path: str, name: Any) -> str:
    """`path.name`, kept short enough for a message: deep paths keep their end."""
    shown = str(name)
    if len(shown) > _MAX_SHOWN_NAME or not shown.isprintable():
        shown = ascii(shown[:_MAX_SHOWN_NAME])
    full = f"{path}.{shown}" if path else shown
    return full if len(full) <= _MAX_SHOWN_PATH else "..." + full[3 - _MAX_SHOWN_PATH:]

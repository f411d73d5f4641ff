"""What client JSON the gateway accepts beyond being valid: only what it can also write.

The gateway writes what clients send (request bodies it must change, key metadata it stores)
with orjson, which refuses values nested deeper than 254 levels and integers past 64 bits.
Refusing those up front turns what would be a 5xx halfway through a request into a 400.
Documented in docs/admin-api.md.
"""

from __future__ import annotations

from typing import Any

import orjson

from faregate.errors import InvalidRequest

MAX_JSON_DEPTH = 254    # orjson's writer: arrays and objects nested at most this deep


def unwritable(value: Any) -> str | None:
    """Why `value` cannot be written as JSON (nested too deep, an integer past 64 bits), or
    None. orjson answers in C, far faster than walking the value in Python."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        return str(exc)
    return None


def too_deep() -> InvalidRequest:
    return InvalidRequest(f"The request body nests arrays and objects more than "
                          f"{MAX_JSON_DEPTH} levels deep; flatten it", code="json_too_deep")

"""How deep client JSON may nest, and a check that cannot itself be made to recurse.

orjson reads up to 1024 levels but writes at most 254, and the gateway writes what clients
send (request bodies it must change, key metadata it stores): one limit, far above any real
request, keeps everything the gateway accepts something it can also write. Documented in
docs/admin-api.md.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64


def deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest past `limit` levels. A loop, not recursion: the depth
    is the client's to choose."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            item = item.values()
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return False

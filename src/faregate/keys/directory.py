"""KeyDirectory: the in-memory view of virtual keys that the request path reads.

A hit costs a dict lookup. Admin changes made through this process replace the entry at once;
entries also expire after `ttl_s` so that changes made elsewhere are picked up. Unknown tokens
are remembered briefly so a flood of bad keys does not become a flood of queries.
"""

from __future__ import annotations

from collections.abc import Callable

from faregate.records import KeyRecord
from faregate.storage.database import SqlStorage

_NEGATIVE_TTL_S = 2.0
_MAX_NEGATIVE = 10_000


class KeyDirectory:
    def __init__(self, storage: SqlStorage, clock: Callable[[], float], ttl_s: float) -> None:
        self._storage = storage
        self._clock = clock
        self._ttl_s = ttl_s
        self._known: dict[str, tuple[KeyRecord, float]] = {}
        self._unknown: dict[str, float] = {}

    async def get(self, token: str) -> KeyRecord | None:
        now = self._clock()
        hit = self._known.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        miss_until = self._unknown.get(token)
        if miss_until is not None and miss_until > now:
            return None
        record = await self._storage.get_key(token)
        if record is None:
            if len(self._unknown) >= _MAX_NEGATIVE:
                self._unknown.clear()
            self._unknown[token] = now + _NEGATIVE_TTL_S
        else:
            self.put(record)
        return record

    def put(self, record: KeyRecord) -> None:
        self._unknown.pop(record.token, None)
        self._known[record.token] = (record, self._clock() + self._ttl_s)

    def forget(self, token: str) -> None:
        self._known.pop(token, None)
        self._unknown.pop(token, None)

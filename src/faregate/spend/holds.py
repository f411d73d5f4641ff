"""KeyHolds: the keys whose spend is not all in the database yet, because rows another process
left behind (an orphaned journal segment, a stream's checkpoint) are still on their way there.

Nothing may read such a key's spend from the database to admit against it: the total would miss
those rows and the key could be admitted past its budget (issue 13: a restart after SIGKILL
served 1,206 calls on a budget for 806). The hold is per key: a key with nothing pending never
waits, and a key whose rows cannot be written (its row locked, the database down) holds up no
other key. Each time such rows reach the database, listeners hear what each key gained, so a
key already being admitted in this process is credited with them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from faregate.records import SpendRow

Listener = Callable[[str, int], None]


class KeyHolds:
    def __init__(self) -> None:
        self._rows: Counter[str] = Counter()       # token -> rows handed over, not yet written
        self._released: dict[str, asyncio.Event] = {}
        self._listeners: list[Listener] = []
        self._payer_listeners: list[Listener] = []

    def held(self, token: str) -> bool:
        return token in self._rows

    @property
    def keys(self) -> int:
        return len(self._rows)

    def on_written(self, listener: Listener) -> None:
        """`listener(token, nanos)` for each key that gained spend from handed-over rows."""
        self._listeners.append(listener)

    def on_payers_written(self, listener: Listener) -> None:
        """`listener(scope, nanos)` for each payer above a key ("team:t1", ...) that gained
        spend from handed-over rows."""
        self._payer_listeners.append(listener)

    def add(self, tokens: Mapping[str, int]) -> None:
        """Rows (counted per key) that another process left are now this one's to write."""
        self._rows.update(tokens)

    def written(self, rows: Iterable[SpendRow], gained: Mapping[str, int],
                by_payer: Mapping[str, int] | None = None) -> None:
        """These handed-over rows are in the database (or dead-lettered for good); `gained` is
        the spend they added per key (rows the database already had add nothing), `by_payer`
        per payer above the key, by scope."""
        for token, nanos in gained.items():
            if nanos:
                for listener in self._listeners:
                    listener(token, nanos)
        for scope, nanos in (by_payer or {}).items():
            if nanos:
                for listener in self._payer_listeners:
                    listener(scope, nanos)
        for row in rows:
            if row.api_key not in self._rows:
                continue
            left = self._rows[row.api_key] - 1
            if left > 0:
                self._rows[row.api_key] = left
                continue
            del self._rows[row.api_key]
            released = self._released.pop(row.api_key, None)
            if released is not None:
                released.set()

    async def wait(self, token: str, timeout_s: float) -> bool:
        """Until the key is not held (True), or `timeout_s` passed first (False)."""
        if token not in self._rows:
            return True
        released = self._released.get(token)
        if released is None:
            released = self._released[token] = asyncio.Event()
        try:
            await asyncio.wait_for(released.wait(), timeout_s)
        except TimeoutError:
            return token not in self._rows
        return True


def count_by_key(rows: Iterable[SpendRow]) -> Counter[str]:
    return Counter(row.api_key for row in rows)

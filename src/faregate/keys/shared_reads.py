"""One database read per cache entry at a time.

When a cached entry expires under load, every request in flight misses on it at once; without
this each would go to the database (on SQLite: queued on its one connection, and for end users
a write). Callers missing on an entry while its read is in progress wait for that read's answer
or its error instead."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    def __init__(self) -> None:
        self._reading: dict[K, asyncio.Future[V]] = {}

    async def read(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """`read()`'s answer, shared with every caller asking for `key` while it runs."""
        reading = self._reading.get(key)
        if reading is not None:
            await asyncio.wait((reading,))
            if not reading.cancelled():
                return reading.result()             # the reader's answer, or its error
            return await self.read(key, read)       # its reader was cancelled: read again
        reading = self._reading[key] = asyncio.get_running_loop().create_future()
        try:
            found = await read()
        except asyncio.CancelledError:
            reading.cancel()
            raise
        except BaseException as exc:
            reading.set_exception(exc)
            reading.exception()                     # retrieved: no "never retrieved" log
            raise
        finally:
            if self._reading.get(key) is reading:
                del self._reading[key]
        reading.set_result(found)
        return found

    def forget(self, key: K) -> None:
        """A read begun before a change is not shared: callers from now on read again."""
        self._reading.pop(key, None)

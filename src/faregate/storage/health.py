"""DatabaseHealth: whether the database answers, as last seen by whoever used it.

The ledger writer, the key directory and a slow background probe report here; the request path
and readiness read one attribute. An outage is a connection-class failure, not any error: a
constraint violation says nothing about whether the database is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import sqlalchemy.exc

from faregate.storage.protocols import HealthProbe

log = logging.getLogger("faregate.database")

_PROBE_UP_S = 5.0        # while up: a cheap ping now and then notices an idle outage
_PROBE_DOWN_S = 1.0      # while down: notice the return quickly
_PING_TIMEOUT_S = 2.0


OUTAGE_ERRORS = (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError, OSError)


def is_outage(exc: BaseException) -> bool:
    """A failure that means 'cannot reach the database', as opposed to a bad query."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.TimeoutError, OSError))


class DatabaseHealth:
    def __init__(self, storage: HealthProbe, clock: Callable[[], float],
                 serve_while_down: bool) -> None:
        self._storage = storage
        self._clock = clock
        # general_settings.allow_requests_on_db_unavailable
        self.serve_while_down = serve_while_down
        self.up = True
        self.changed_at = clock()
        self._task: asyncio.Task[None] | None = None

    @property
    def refuses_requests(self) -> bool:
        """Read on every request: down, and not configured to serve through an outage."""
        return not self.up and not self.serve_while_down

    def failed(self, exc: BaseException) -> None:
        if self.up:
            log.error("database unreachable (%s); %s", type(exc).__name__,
                      "serving known keys from memory, spend kept on disk"
                      if self.serve_while_down else "refusing requests until it is back")
            self.up, self.changed_at = False, self._clock()

    def succeeded(self) -> None:
        if not self.up:
            log.warning("database reachable again after %.1fs", self._clock() - self.changed_at)
            self.up, self.changed_at = True, self._clock()

    async def probe(self) -> bool:
        try:
            await asyncio.wait_for(self._storage.ping(), _PING_TIMEOUT_S)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.failed(exc)
        else:
            self.succeeded()
        return self.up

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="database-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_PROBE_UP_S if self.up else _PROBE_DOWN_S)
            try:
                await self.probe()
            except Exception:
                log.exception("database probe failed unexpectedly")

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

# SQLSTATEs meaning "the database cannot serve now" (it may a moment later), by class or code:
# 08 connection exception, 53 insufficient resources (53300 too many connections, 53100 disk
# full, ...), 57P01/57P02/57P03 admin shutdown, crash shutdown, cannot connect now (starting
# up), 55000 object not in prerequisite state (what a database with ALLOW_CONNECTIONS false
# answers a new connection; faregate's queries raise it for nothing else).
_OUTAGE_CLASSES = ("08", "53")
_OUTAGE_CODES = frozenset({"55000", "57P01", "57P02", "57P03"})
# SQLite's "cannot serve now": busy (the busy timeout ran out: "database is locked"), locked,
# I/O error, cannot open the file, disk full.
_SQLITE_OUTAGES = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN",
                             "SQLITE_FULL"})


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what SQLAlchemy wraps (.orig), and its causes (`raise ... from`: how
    SQLAlchemy and its asyncpg adapter wrap; not __context__, which would make any error raised
    while handling an outage one): each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 16:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        orig = getattr(current, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, current.__cause__]
    return seen


def sqlstate(exc: BaseException) -> str | None:
    """The first SQLSTATE in the chain (asyncpg's and SQLAlchemy's adapter errors carry one)."""
    for e in _chain(exc):
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def is_outage(exc: BaseException) -> bool:
    """The one rule: a failure that means 'the database cannot serve now' (unreachable, shutting
    down, starting, refusing connections, out of connections or resources, busy, timed out), as
    opposed to a bad query or a constraint, which says nothing about whether it is up."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    code = sqlstate(exc)
    if code is not None:
        return code[:2] in _OUTAGE_CLASSES or code in _OUTAGE_CODES
    chain = _chain(exc)
    for e in chain:
        name = getattr(e, "sqlite_errorname", None)
        if isinstance(name, str):
            return "_".join(name.split("_")[:2]) in _SQLITE_OUTAGES   # SQLITE_BUSY_TIMEOUT
    for e in chain:
        if isinstance(e, (sqlalchemy.exc.TimeoutError, OSError)):   # pool timeout, refused,
            return True                                             # reset, DNS, timeouts
        # asyncpg's client-side connection errors (a closed connection, a connect that failed)
        if type(e).__module__.startswith("asyncpg") and (
                "Connection" in type(e).__name__ or type(e).__name__ == "InterfaceError"):
            return True
    return isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))


def outage_reason(exc: BaseException) -> str:
    """One line for a log or the console: the SQLSTATE (when there is one) and the message."""
    code = sqlstate(exc)
    inner = _chain(exc)[-1] if not isinstance(exc, sqlalchemy.exc.DBAPIError) else exc.orig
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    return f"SQLSTATE {code}: {text}" if code else f"{type(inner).__name__}: {text}"


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
            log.error("database unreachable (%s); %s", outage_reason(exc),
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

"""is_rejected_content: the database refused a row for what it holds, not because it is down.

Such a row will be refused on every retry, so the ledger writer sets it aside (a dead letter)
instead of retrying it forever in front of every later row. Outages (storage/health.py) are the
opposite case: they are retried, in order. Anything that is neither (a missing table, a bug) is
also retried: setting rows aside for it would hide it.
"""

from __future__ import annotations

from faregate.storage.health import is_outage, sqlstate

# 22: data exception (a NUL in text 22021, a value out of range 22003, too long 22001, ...);
# 23: integrity constraint (23505 cannot happen: rows are inserted ON CONFLICT DO NOTHING).
_CONTENT_CLASSES = ("22", "23")
# SQLite's own refusals of a row's content.
_SQLITE_CONTENT = ("SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE")
# Raised by a driver before the row reaches the database: text it cannot encode (a lone
# surrogate), an integer it cannot bind.
_CLIENT_SIDE = (UnicodeError, OverflowError)


def is_rejected_content(exc: BaseException) -> bool:
    if is_outage(exc):
        return False
    code = sqlstate(exc)
    if code is not None:
        return code[:2] in _CONTENT_CLASSES
    for error in _causes(exc):
        if isinstance(error, _CLIENT_SIDE):
            return True
        name = getattr(error, "sqlite_errorname", None)
        if isinstance(name, str) and name.startswith(_SQLITE_CONTENT):
            return True
        # asyncpg's client-side "invalid input for query argument" (it could not encode one)
        if type(error).__module__.startswith("asyncpg") and type(error).__name__ == "DataError":
            return True
    return False


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 16 and current not in chain:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return chain

"""The shared admission's Redis names, and its script calls packed as Redis protocol bytes.

A request's admission names every payer's keys and terms and every window it counts in: with
a key, its team, membership, organization and end user that is ~30 keys and ~50 arguments.
redis-py packs a command one argument at a time (each encoded, then joined onto the growing
buffer), which cost more than the rest of the admission together. Here each payer's part (its
five key names, its terms) and each window's (its counter's name, its limit) is packed once,
the first time it is seen, and a request joins those byte strings with its own few numbers.
`Pipeline` then sends a batch of packed calls on one connection and reads the answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from faregate.admission.demand import KEY, Payer, Window
from faregate.admission.resp_connection import Address, RespConnection

# Past this many payers (windows) the packed parts start over: a bound on memory.
MAX_PARTS = 100_000


def prefix_of(scope: str) -> str:
    """A payer's hash tag: a key's token (the names keys have always had, so replicas of an
    older version share their state during a rollout), else its scope ("team:t1")."""
    return scope[4:] if scope.startswith("key:") else scope


def payer_keys(prefix: str) -> list[str]:
    """A payer's budget, reservations (`leases`: request id -> its lease's end; `held`: request
    id -> its amount, and '=' their running sum), parallel slots and version. One hash tag per
    payer: they live in one cluster slot (a request's payers and windows do not: see
    docs/replicas.md, Redis Cluster).

    (`resv`/`resv_amount` held the reservations of versions that summed every open one on each
    admission, without the running sum: replicas of such a version and of this one do not see
    each other's reservations during a rollout. Budget spend, slots and versions are shared.)"""
    return [f"fg:{{{prefix}}}:budget", f"fg:{{{prefix}}}:leases", f"fg:{{{prefix}}}:held",
            f"fg:{{{prefix}}}:parallel", f"fg:{{{prefix}}}:version"]


def window_key(scope: str) -> str:
    """A rate window's counter. (`fg:w:` held the counters of versions that summed every
    bucket on every call, in a layout this one does not read: replicas of such a version
    count their windows apart during a rollout.)"""
    return f"fg:win:{scope}"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def number(value: int) -> bytes:
    text = b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(text), text)


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return b"%d" % value
    return str(value).encode()


def command(sha: str, keys: Sequence[Any], args: Sequence[Any]) -> bytes:
    """EVALSHA of `keys` and `args`, each packed now (the calls that are not per request)."""
    return b"".join([b"*%d\r\n" % (3 + len(keys) + len(args)), bulk(b"EVALSHA"),
                     bulk(sha.encode()), number(len(keys)),
                     *(bulk(_encode(v)) for v in keys), *(bulk(_encode(v)) for v in args)])


_ONE = _TOKENS = number(1)       # a request window's cost; a window's kind
_REQUESTS = number(0)


class PayerPart:
    """One payer's packed names and terms, as the admission and settlement scripts read them:
    per payer 5 keys (budget, leases, held, parallel, version) and 5 arguments (max
    budget or -1, parallel limit or -1, version, roll_from, roll_to); a settlement reads the
    first 4 keys and what admission held on it (1: a reservation, 2: a parallel slot)."""

    __slots__ = ("admit_keys", "budgeted", "held", "payer", "prefix", "settle_keys", "terms")

    def __init__(self, payer: Payer) -> None:
        self.payer = payer
        self.prefix = payer.scope[4:] if payer.level == KEY else payer.scope
        names = [bulk(name.encode()) for name in payer_keys(self.prefix)]
        self.admit_keys = b"".join(names)
        self.settle_keys = b"".join(names[:4])
        self.held = number((payer.max_budget_nanos is not None)
                           + 2 * (payer.max_parallel_requests is not None))
        self.budgeted = payer.budget_duration is not None
        self.terms = self.terms_rolling(0, 0)

    def terms_rolling(self, roll_from: int, roll_to: int) -> bytes:
        """Its terms, proposing to roll its period from `roll_from` to `roll_to` (0, 0: none
        proposed yet; -1 always when it has no budget_duration)."""
        payer = self.payer
        return b"".join((
            number(-1 if payer.max_budget_nanos is None else payer.max_budget_nanos),
            number(-1 if payer.max_parallel_requests is None else payer.max_parallel_requests),
            bulk(payer.version.encode()),
            number(roll_from if self.budgeted else -1), number(roll_to)))


class Parts:
    """Packed parts by payer (the same Payer object while its key's cache entry lives) and by
    window (its counter and limit)."""

    def __init__(self) -> None:
        self._payers: dict[int, PayerPart] = {}
        self._windows: dict[tuple[str, int, bool], tuple[bytes, bytes]] = {}

    def payer(self, payer: Payer) -> PayerPart:
        part = self._payers.get(id(payer))
        if part is None or part.payer is not payer:
            if len(self._payers) >= MAX_PARTS:
                self._payers.clear()
            part = self._payers[id(payer)] = PayerPart(payer)
        return part

    def window(self, window: Window) -> tuple[bytes, bytes]:
        """(its counter's name, its limit), packed."""
        at = (window.scope, window.limit, window.tokens)
        found = self._windows.get(at)
        if found is None:
            if len(self._windows) >= MAX_PARTS:
                self._windows.clear()
            found = self._windows[at] = (bulk(window_key(window.scope).encode()),
                                         number(window.limit))
        return found


def admit_call(sha: bytes, request_id: bytes, least: int, most: int, lease_ms: int,
               payers: Sequence[PayerPart], windows: Sequence[tuple[bytes, bytes]],
               costs: Sequence[int], kinds: Sequence[bool],
               rolls: dict[int, bytes] | None = None) -> bytes:
    """The admission script's call: KEYS per payer 5, then the windows' counters; ARGV the
    request id, least, most, lease ms, payer count, per payer its 5 terms (`rolls`: by payer
    index, terms that propose a period's roll), per window its limit, the request's cost and
    its kind (0 requests, 1 tokens)."""
    n, w = len(payers), len(windows)
    parts = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (8 + 10 * n + 4 * w), sha, number(5 * n + w)]
    parts += [p.admit_keys for p in payers]
    parts += [name for name, _ in windows]
    parts += [bulk(request_id), number(least), number(most), number(lease_ms), number(n)]
    if rolls:
        parts += [rolls.get(i, p.terms) for i, p in enumerate(payers)]
    else:
        parts += [p.terms for p in payers]
    for (_, limit), cost, tokens in zip(windows, costs, kinds, strict=True):
        parts += (limit, _ONE if cost == 1 else number(cost), _TOKENS if tokens else _REQUESTS)
    return b"".join(parts)


def settle_call(sha: bytes, request_id: bytes, cost: int, second: int,
                payers: Sequence[PayerPart], windows: Sequence[bytes],
                deltas: Sequence[int]) -> bytes:
    """The settlement script's call: KEYS per payer 4, then the tpm windows' counters; ARGV
    the request id, cost, the window second, payer count, per payer what admission held on
    it, each window's token delta."""
    n = len(payers)
    parts = [b"*%d\r\n$7\r\nEVALSHA\r\n" % (7 + 5 * n + 2 * len(windows)), sha,
             number(4 * n + len(windows))]
    parts += [p.settle_keys for p in payers]
    parts += windows
    parts += [bulk(request_id), number(cost), number(second), number(n)]
    parts += [p.held for p in payers]
    parts += [number(d) for d in deltas]
    return b"".join(parts)


def packed_sha(sha: str) -> bytes:
    return bulk(sha.encode())


class Pipeline:
    """Packed calls sent together, each answer (or its ResponseError) in order; a connection
    error is retried once on a fresh connection, as the client's Retry says (a call Redis ran
    before the connection closed runs twice).

    On a plain TCP Redis (redis://) the calls go on a connection of this pipeline's own
    (`RespConnection`: hiredis in an asyncio protocol, ~11 µs of CPU per round trip against
    redis-py's ~80), shared by concurrent callers; TLS and unix-socket URLs use the client's
    pool."""

    def __init__(self, pool: ConnectionPool, timeout_s: float = 2.0,
                 connect_timeout_s: float = 0.5) -> None:
        self._pool: Any = pool        # (redis-py's get_connection is untyped)
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        kwargs = pool.connection_kwargs
        self._address = Address(kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)),
                                int(kwargs.get("db") or 0), kwargs.get("username"),
                                kwargs.get("password")) \
            if pool.connection_class is Connection else None
        self._conn: RespConnection | None = None
        self._connecting: asyncio.Future[RespConnection] | None = None

    async def run(self, calls: Sequence[bytes]) -> list[Any]:
        if self._address is None:
            return await self._run_pooled(calls)
        try:
            return await (await self._connection()).exchange(list(calls), self._timeout_s)
        except RedisConnectionError:
            return await (await self._connection()).exchange(list(calls), self._timeout_s)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _connection(self) -> RespConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._connecting is None:          # one connect for every caller that needs it
            assert self._address is not None
            self._connecting = asyncio.ensure_future(RespConnection.open(
                self._address, self._connect_timeout_s, self._timeout_s))
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, done: asyncio.Future[RespConnection]) -> None:
        self._connecting = None
        if not done.cancelled() and done.exception() is None:
            self._conn = done.result()

    async def _run_pooled(self, calls: Sequence[bytes]) -> list[Any]:
        pool = self._pool
        conn = await pool.get_connection()        # no command name: redis-py >= 5.3
        try:
            results: list[Any] = await conn.retry.call_with_retry(
                lambda: self._exchange(conn, calls), lambda _: conn.disconnect())
            return results
        finally:
            await pool.release(conn)

    @staticmethod
    async def _exchange(conn: Any, calls: Sequence[bytes]) -> list[Any]:
        await conn.send_packed_command(b"".join(calls))
        out: list[Any] = []
        for _ in calls:
            try:
                out.append(await conn.read_response())
            except ResponseError as exc:        # this call's own error; the rest follow
                out.append(exc)
        return out

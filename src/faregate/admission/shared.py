"""Admission shared by every replica through Redis: one Lua script decides a request's budget
and all its rate limits atomically, so no replica can interleave between the checks.

Postgres stays the source of truth for spend: a key's Redis budget state is initialised from
its database row the first time a replica needs it (and again after Redis lost its data).
Reservations and parallel slots are leases: a replica that dies mid-request frees them when
they expire. Every admin change to a key bumps its version in Redis; the script refuses to
admit against an older version, so a blocked or deleted key is refused by every replica at
once (the replica reloads the key and decides again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from faregate.admission import periods
from faregate.admission.demand import Admitted, Demand, StaleKey, ratelimit_headers
from faregate.admission.local import LocalAdmission
from faregate.admission.refusals import budget_exceeded, rate_limited
from faregate.errors import ServiceUnavailable
from faregate.records import KeyRecord

log = logging.getLogger("faregate.redis")

_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = tonumber(t[1])
local rid, least, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_budget, lease = tonumber(ARGV[4]), now + tonumber(ARGV[5])
local parallel = tonumber(ARGV[6])
-- The period: ARGV[8] = -1 when the key has none; else the period end this call may roll past
-- (0: none yet), ARGV[9] its successor, computed in Python (one calendar for every store).
local roll_from, roll_to = tonumber(ARGV[8]), tonumber(ARGV[9])

if (redis.call('GET', KEYS[5]) or '0') ~= ARGV[7] then return {'stale'} end

if parallel >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= parallel then return {'parallel'} end
end

local heads = {}
for i = 6, #KEYS do
  local a = 10 + (i - 6) * 3
  local limit, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local fields = redis.call('HGETALL', KEYS[i])
  local used, oldest = 0, sec
  for f = 1, #fields, 2 do
    local s = tonumber(fields[f])
    if s <= sec - 60 then redis.call('HDEL', KEYS[i], fields[f])
    else
      used = used + tonumber(fields[f + 1])
      if s < oldest then oldest = s end
    end
  end
  local reset = oldest + 60 - sec
  if used + cost > limit then return {'window', i - 5, used, reset} end
  heads[#heads + 1] = {limit, limit - used - cost, reset}
end

local grant, rolled, base, reset_at = 0, 0, 0, 0
if max_budget >= 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'init'} end
  local b = redis.call('HMGET', KEYS[1], 'spend', 'base', 'reset_at')
  local spend = tonumber(b[1])
  base, reset_at = tonumber(b[2]), tonumber(b[3])
  if roll_from >= 0 and reset_at > 0 and now >= reset_at then
    if roll_from ~= reset_at or roll_to <= now then return {'roll', reset_at, now} end
    base, reset_at = spend, roll_to
    redis.call('HSET', KEYS[1], 'base', base, 'reset_at', reset_at)
    rolled = 1
  end
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, r in ipairs(gone) do redis.call('HDEL', KEYS[3], r) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(v) end
  local spent = spend - base
  local available = max_budget - spent - reserved
  if available < least then
    local wait = 0
    if reserved > 0 and max_budget - spent >= least then wait = 1 end
    return {'budget', spent, reserved, wait}
  end
  grant = math.min(most, available)
  redis.call('HSET', KEYS[3], rid, grant)
  redis.call('ZADD', KEYS[2], lease, rid)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) * 2)
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[5]) * 2)
end

for i = 6, #KEYS do
  redis.call('HINCRBY', KEYS[i], sec, tonumber(ARGV[10 + (i - 6) * 3 + 1]))
  redis.call('EXPIRE', KEYS[i], 120)
end
if parallel >= 0 then
  redis.call('ZADD', KEYS[4], lease, rid)
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[5]) * 2)
end
local out = {'ok', grant, sec, rolled, base, reset_at}
for _, h in ipairs(heads) do out[#out + 1] = h[1]; out[#out + 1] = h[2]; out[#out + 1] = h[3] end
return out
"""

_INIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'spend', ARGV[1], 'base', ARGV[2], 'reset_at', ARGV[3])
end
return 1
"""

_SETTLE = """
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'spend', ARGV[2])
end
for i = 5, #KEYS do
  local delta = tonumber(ARGV[i - 1])
  if delta ~= 0 and redis.call('HEXISTS', KEYS[i], ARGV[3]) == 1 then
    if redis.call('HINCRBY', KEYS[i], ARGV[3], delta) < 0 then
      redis.call('HSET', KEYS[i], ARGV[3], 0)
    end
  end
end
return 1
"""

_BUMP = "return redis.call('INCR', KEYS[1])"

# Keep a request's reservation and parallel slot while it is in flight; a lost one goes.
_RENEW = """
local t = redis.call('TIME')
local lease = tonumber(ARGV[2])
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease
for i = 1, 2 do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], 'XX', until_ms, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], lease * 2)
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('PEXPIRE', KEYS[3], lease * 2) end
return 1
"""
# A call to Redis waits this long for its answer. 0.5 s refused healthy requests of a loaded
# replica under a 300-request burst; while Redis hangs, each refusal takes this long.
CALL_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 0.5
# A reservation is a lease this short, renewed every RENEW_S while its request is in flight:
# a replica that dies (or loses an answer) strands nothing for longer than LEASE_S.
LEASE_S = 30.0
RENEW_S = 5.0
_POLL_S = 0.02
# A parallel refusal is decided again while this replica's settlements reach Redis, this often
# at most (callers at the limit may each have one on its way).
_PARALLEL_RECHECKS = 4


def _keys(token: str) -> list[str]:
    # One hash tag per virtual key: its budget, leases and version live in one cluster slot.
    return [f"fg:{{{token}}}:budget", f"fg:{{{token}}}:resv", f"fg:{{{token}}}:resv_amount",
            f"fg:{{{token}}}:parallel", f"fg:{{{token}}}:version"]


def _next_reset_ms(reset_ms: int, duration: str, now_ms: int) -> int:
    """periods.next_reset in the script's units: ms since the epoch, Redis's clock for now."""
    return _ms(periods.next_reset(_at(reset_ms), duration, _at(now_ms)))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _at(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // _MS


class RedisAdmission:
    def __init__(self, url: str, load_key: Callable[[str], Awaitable[KeyRecord | None]],
                 on_period_start: Callable[[str, int, datetime | None], None],
                 wait_timeout_s: float, fail_mode: str, fallback: LocalAdmission,
                 replicas: int) -> None:
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=CALL_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=10,
            # A pooled connection that a restarted Redis closed fails at once: send the call
            # again on a fresh one (from_url's pool retries nothing by default, and each stale
            # connection cost a 503 after recovery; pipelines retry the same way). Not
            # timeouts: a hang costs one timeout, not two. A call Redis ran before closing
            # the connection runs twice: admission books the same request id again (its
            # windows count it twice for a minute), a settlement adds its cost twice: both
            # stricter, never looser.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        self._admit = self.client.register_script(_ADMIT)
        self._init = self.client.register_script(_INIT)
        self._settle = self.client.register_script(_SETTLE)
        self._bump = self.client.register_script(_BUMP)
        self._renew = self.client.register_script(_RENEW)
        self._load_key = load_key
        self._on_period_start = on_period_start
        self._wait_timeout_s = wait_timeout_s
        self._fail_mode = fail_mode
        self._fallback = fallback
        self._replicas = replicas
        self._local: set[str] = set()         # request ids admitted by the fallback
        self._dirty: set[str] = set()          # keys whose Redis spend missed a settlement
        self._pending: list[tuple[str, list[str], list[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flushes = 0                       # settlement batches sent so far
        self._held: dict[str, str] = {}        # request id -> key token, admitted in Redis
        self._lost: dict[str, str] = {}        # ids whose admission answer was lost: release
        self._renewer: asyncio.Task[None] | None = None
        self.healthy = True

    # --- the admission protocol

    async def admit(self, demand: Demand) -> Admitted:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._keep_leases())
        try:
            admitted = await self._admit_shared(demand)
        except RedisError as exc:
            # The script may have reserved before its answer was lost: release that id as
            # soon as Redis answers again, rather than when its lease ends.
            self._lost[demand.request_id] = demand.key.token
            return await self._degraded(demand, exc)
        self._held[demand.request_id] = demand.key.token
        self._recovered()
        return admitted

    async def settle(self, admitted: Admitted, cost: int, tokens: int) -> None:
        """Queue the settlement; a flusher sends all queued ones in one pipeline.

        The caller does not wait for Redis: until the flush (a few ms) the reservation is
        simply held a little longer, which can only make admission stricter, never looser.
        """
        if admitted.settled:
            return
        demand = admitted.demand
        if demand.request_id in self._local:
            self._local.discard(demand.request_id)
            await self._fallback.settle(admitted, cost, tokens)
            return
        admitted.settled = True
        self._held.pop(demand.request_id, None)
        tpm = [w for w in demand.windows if w.tokens]
        self._pending.append((demand.key.token,
                              _keys(demand.key.token)[:4] + [f"fg:w:{w.scope}" for w in tpm],
                              [demand.request_id, cost, admitted.second,
                               *[tokens - w.cost for w in tpm]]))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for _, keys, args in batch:
                        await self._settle(keys=keys, args=args, client=pipe)
                    await pipe.execute()
            except RedisError as exc:
                # The leases free the reservations; the spend is in the ledger. Re-read these
                # keys' spend from the database once Redis answers again.
                self._dirty.update(token for token, _, _ in batch)
                log.warning("redis: could not settle %d requests (%s); their keys' spend "
                            "will be re-read from the database", len(batch),
                            type(exc).__name__)
            finally:
                self._flushes += 1

    async def _keep_leases(self) -> None:
        """Every RENEW_S: renew the leases of requests in flight here, release lost ones."""
        while True:
            await asyncio.sleep(RENEW_S)
            held, lost = list(self._held.items()), list(self._lost.items())
            if not held and not lost:
                continue
            lease_ms = int(LEASE_S * 1000)
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for rid, token in held:
                        names = _keys(token)
                        await self._renew(keys=[names[1], names[3], names[2]],
                                          args=[rid, lease_ms], client=pipe)
                    for rid, token in lost:
                        await self._settle(keys=_keys(token)[:4], args=[rid, 0, 0],
                                           client=pipe)
                    await pipe.execute()
            except RedisError:
                continue        # Redis still away: try again next round
            for rid, _ in lost:
                self._lost.pop(rid, None)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._flusher is not None:
            await self._flusher
        await self.client.aclose()

    def period_spend(self, key: KeyRecord) -> int:
        return key.period_spend_nanos

    def lifetime_spend(self, key: KeyRecord) -> int:
        return key.spend_nanos

    def forget(self, token: str) -> None:
        self._fallback.forget(token)

    def change_period(self, key: KeyRecord) -> None:
        self._fallback.change_period(key)

    async def version(self, token: str) -> str:
        """The key's current version; read before its row, so the row is at least as new."""
        try:
            version = await self.client.get(_keys(token)[4])
            return "0" if version is None else version.decode() if isinstance(version, bytes) \
                else str(version)
        except RedisError:
            return "?"                       # unknown: the next shared admission reloads it

    async def key_changed(self, key: KeyRecord | None, token: str) -> None:
        """After an admin change hit the database: every replica must notice at once."""
        names = _keys(token)
        await self._bump(keys=[names[4]])
        if key is not None and key.budget_reset_at is not None:
            await self.client.hset(names[0], "reset_at",
                                   _ms(key.budget_reset_at))

    # --- internals

    async def _admit_shared(self, demand: Demand) -> Admitted:
        key = demand.key
        token = key.token
        names = _keys(token)
        if token in self._dirty:
            await self.client.delete(names[0])
            self._dirty.discard(token)
        args: list[Any] = [demand.request_id, demand.least, demand.most,
                           -1 if key.max_budget_nanos is None else key.max_budget_nanos,
                           int(LEASE_S * 1000),
                           -1 if demand.parallel_limit is None else demand.parallel_limit,
                           demand.key_version, -1 if key.budget_duration is None else 0, 0]
        for w in demand.windows:
            args += [w.limit, w.cost, int(w.tokens)]
        window_keys = [f"fg:w:{w.scope}" for w in demand.windows]
        deadline = asyncio.get_running_loop().time() + self._wait_timeout_s
        rechecks = 0
        while True:
            flushes = self._flushes
            result = await self._admit(keys=names + window_keys, args=args)
            verdict = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if verdict == "ok":
                return self._admitted(demand, result)
            if verdict == "stale":
                raise StaleKey(token)
            if verdict == "init":
                await self._initialise(token)
                continue
            if verdict == "roll":     # the period ended: propose its successor, decide again
                args[7], args[8] = int(result[1]), _next_reset_ms(
                    int(result[1]), key.budget_duration or "", int(result[2]))
                continue
            if verdict == "parallel":
                flushing = self._flusher is not None and not self._flusher.done()
                if rechecks < _PARALLEL_RECHECKS and (flushing or self._flushes != flushes):
                    rechecks += 1
                    # This replica's own finished requests may not have freed their slots in
                    # Redis yet (settlements are sent a moment after the answer), or freed
                    # them while this script waited in line behind them: decide again.
                    if flushing and self._flusher is not None:
                        await asyncio.shield(self._flusher)
                    continue
                raise rate_limited(None, 0, 1, demand.parallel_limit)
            if verdict == "window":
                window = demand.windows[int(result[1]) - 1]
                raise rate_limited(window, int(result[2]), max(1, int(result[3])))
            spent, reserved, may_wait = int(result[1]), int(result[2]), int(result[3])
            if not may_wait or asyncio.get_running_loop().time() >= deadline:
                raise budget_exceeded(spent, key.max_budget_nanos or 0, reserved, demand.least)
            await asyncio.sleep(_POLL_S)      # settlements on other replicas may make room

    async def _initialise(self, token: str) -> None:
        fresh = await self._load_key(token)   # the database row, not a cached copy
        if fresh is None:
            raise StaleKey(token)
        reset_ms = _ms(fresh.budget_reset_at) if fresh.budget_reset_at else 0
        await self._init(keys=[_keys(token)[0]],
                         args=[fresh.spend_nanos, fresh.period_base_nanos, reset_ms])

    def _admitted(self, demand: Demand, result: list[Any]) -> Admitted:
        grant, second, rolled = int(result[1]), int(result[2]), int(result[3])
        if rolled:
            reset_at = _at(int(result[5]))
            self._on_period_start(demand.key.token, int(result[4]), reset_at)
        heads: dict[bool, tuple[int, int, int]] = {}
        for i, window in enumerate(demand.windows):
            values = (int(result[6 + 3 * i]), int(result[7 + 3 * i]), int(result[8 + 3 * i]))
            if window.tokens not in heads or values[1] < heads[window.tokens][1]:
                heads[window.tokens] = values
        return Admitted(demand, grant, second,
                        ratelimit_headers(heads.get(False), heads.get(True)))

    async def _degraded(self, demand: Demand, exc: Exception) -> Admitted:
        if self.healthy:
            self.healthy = False
            log.error("redis: unreachable (%s); admission %s", type(exc).__name__,
                      "fails closed" if self._fail_mode == "fail_closed"
                      else f"falls back to per-process limits / {self._replicas} replicas")
        if self._fail_mode == "fail_closed":
            raise ServiceUnavailable(
                "Budgets and rate limits are shared through Redis, which is unreachable "
                f"({type(exc).__name__}); requests are refused until it is back "
                "(general_settings.redis_failure_mode: fail_closed)", code="redis_unavailable")
        admitted = await self._fallback.admit(demand.scaled(self._replicas))
        self._local.add(demand.request_id)
        self._dirty.add(demand.key.token)
        return admitted

    def _recovered(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.warning("redis: reachable again; admission is shared across replicas again")

"""Admission shared by every replica through Redis: one Lua script decides a request's
budgets (every payer's: key, user, team, membership, organization, end user), parallel slots
and rate limits atomically, so no replica can interleave between the checks.

Postgres stays the source of truth for spend: a payer's Redis budget state is initialised from
its database row the first time a replica needs it (and again after Redis lost its data).
Reservations and parallel slots are leases: a replica that dies mid-request frees them when
they expire. Every admin change to a payer bumps its version in Redis; the script refuses to
admit against an older version, so a blocked or deleted key (or team, organization, ...) is
refused by every replica at once (the replica reloads it and decides again).
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
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from faregate.admission import periods
from faregate.admission.demand import (
    KEY,
    Admitted,
    Demand,
    Payer,
    StaleKey,
    ratelimit_headers,
)
from faregate.admission.local import LocalAdmission
from faregate.admission.redis_wire import (
    Parts,
    PayerPart,
    Pipeline,
    admit_call,
    command,
    packed_sha,
    payer_keys,
    prefix_of,
    settle_call,
)
from faregate.admission.refusals import budget_exceeded, rate_limited
from faregate.errors import GatewayError, ServiceUnavailable
from faregate.records import KeyRecord

log = logging.getLogger("faregate.redis")

# KEYS: per payer, 5 (budget, leases, held, parallel, version), then the windows.
# ARGV: request id, least, most, lease ms, payer count; per payer 5 (max budget or -1,
# parallel limit or -1, version, roll_from, roll_to); per window 3 (limit, cost, kind: 0
# requests, 1 tokens). Packed by
# redis_wire.admit_call.
# roll_from = -1 when the payer has no budget_duration; else the period end this call may roll
# past (0: none proposed yet) and roll_to its successor, computed in Python (one calendar for
# every store). Nothing is written unless the request is admitted: a period due is rolled in
# the decision, and stored with the admission.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = tonumber(t[1])
local rid, least, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local lease = now + lease_ms
local n = tonumber(ARGV[5])
local w0 = 5 + 5 * n

-- (limit, remaining, reset) of the tightest requests window, then tokens window (-1, 0, 0: none)
local function heads(out, by_kind)
  for _, kind in ipairs({'0', '1'}) do
    local h = by_kind[kind] or {-1, 0, 0}
    out[#out + 1] = h[1]; out[#out + 1] = h[2]; out[#out + 1] = h[3]
  end
  return out
end

local version_keys = {}
for p = 1, n do version_keys[p] = KEYS[p * 5] end
local versions = redis.call('MGET', unpack(version_keys))
for p = 1, n do
  if (versions[p] or '0') ~= ARGV[5 + (p - 1) * 5 + 3] then return {'stale', p} end
end

for p = 1, n do
  local parallel = tonumber(ARGV[5 + (p - 1) * 5 + 2])
  if parallel >= 0 then
    local slots = KEYS[(p - 1) * 5 + 4]
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    if redis.call('ZCARD', slots) >= parallel then return {'parallel', p} end
  end
end

-- A window: one-second buckets (field: the second, value: its amount) and 't' their total,
-- 'o' the oldest bucket's second, 'n' the newest's. Buckets leave as they age past 60 s,
-- visited once each (not every bucket on every call). The pruned state is written only with
-- an admission (below), as everything else.
-- By kind ('0' requests, '1' tokens): the tightest window after this request (its answer's
-- x-ratelimit-*), and before it (a refusal's: nothing was booked).
local tight, free, windows = {}, {}, {}
for i = 1, #KEYS - 5 * n do
  local counter = KEYS[5 * n + i]
  local a = w0 + (i - 1) * 3
  local limit, cost, kind = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
  local m = redis.call('HMGET', counter, 't', 'o', 'n', sec)
  local used, oldest, newest = tonumber(m[1]) or 0, tonumber(m[2]), tonumber(m[3])
  local bucket = tonumber(m[4]) or 0
  local gone = {}
  if newest == nil or oldest == nil then    -- a new counter (or one without its marks)
    used = 0
    local fields = redis.call('HGETALL', counter)
    for f = 1, #fields, 2 do
      local s = tonumber(fields[f])
      if s == nil then                      -- 't', 'o', 'n'
      elseif s <= sec - 60 then gone[#gone + 1] = s
      else
        used = used + tonumber(fields[f + 1])
        if oldest == nil or s < oldest then oldest = s end
      end
    end
  elseif newest <= sec - 60 then            -- every bucket aged out: the counter starts over
    used, oldest, gone = 0, nil, false
  elseif oldest <= sec - 60 then
    local s = oldest
    oldest = nil
    while s <= newest do
      local v = redis.call('HGET', counter, s)
      if v then
        if s > sec - 60 then oldest = s; break end
        used = used - tonumber(v)
        gone[#gone + 1] = s
      end
      s = s + 1
    end
  end
  local reset = (oldest or sec) + 60 - sec
  if used + cost > limit then return {'window', i, used, reset} end
  local left = limit - used - cost
  local t, f = tight[kind], free[kind]
  if t == nil or left < t[2] then tight[kind] = {limit, left, reset} end
  if f == nil or left + cost < f[2] then free[kind] = {limit, left + cost, reset} end
  windows[i] = {used, oldest, gone, newest, bucket}
end

local budgeted, due = {}, {}
for p = 1, n do
  local a = 5 + (p - 1) * 5
  if tonumber(ARGV[a + 1]) >= 0 then
    local b = (p - 1) * 5
    local st = redis.call('HMGET', KEYS[b + 1], 'spend', 'base', 'reset_at')
    if not st[1] then return {'init', p} end
    local spend, base, reset_at = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
    local roll_from, roll_to = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    local rolled = 0
    if roll_from >= 0 and reset_at > 0 and now >= reset_at then
      if roll_from ~= reset_at or roll_to <= now then
        due[#due + 1] = p
        due[#due + 1] = reset_at
      else
        base, reset_at, rolled = spend, roll_to, 1
      end
    end
    -- open reservations: their running sum (field '='), less those whose lease ended
    -- and '@' the second its keys' expiry was last pushed, and this id's amount if booked
    local gone = redis.call('ZRANGEBYSCORE', KEYS[b + 2], '-inf', now)
    if #gone > 0 then
      local freed = 0
      for _, v in ipairs(redis.call('HMGET', KEYS[b + 3], unpack(gone))) do
        freed = freed + (tonumber(v) or 0)
      end
      redis.call('HDEL', KEYS[b + 3], unpack(gone))
      redis.call('ZREMRANGEBYSCORE', KEYS[b + 2], '-inf', now)
      if redis.call('HINCRBY', KEYS[b + 3], '=', -freed) <= 0 then
        redis.call('HDEL', KEYS[b + 3], '=', '@')
      end
    end
    local h = redis.call('HMGET', KEYS[b + 3], '=', '@', rid)
    budgeted[#budgeted + 1] = {p, spend, base, reset_at, rolled, tonumber(h[1]) or 0,
                               tonumber(h[2]), tonumber(h[3]) or 0}
  end
end
if #due > 0 then
  local out = {'roll', now}
  for _, v in ipairs(due) do out[#out + 1] = v end
  return out
end

-- Every payer with a budget must have `least` available; the grant is the smallest room. A
-- payer nothing will make room on refuses at once; one whose reservations stand in the way
-- may be waited for.
local grant, waiting = most, nil
if #budgeted == 0 then grant = 0 end
for _, s in ipairs(budgeted) do
  local max_budget = tonumber(ARGV[5 + (s[1] - 1) * 5 + 1])
  local spent, reserved = s[2] - s[3], s[6]
  local available = max_budget - spent - reserved
  if available < least then
    if reserved > 0 and max_budget - spent >= least then
      if waiting == nil then waiting = {'budget', s[1], spent, reserved, 1} end
    else
      waiting = {'budget', s[1], spent, reserved, 0}
      break
    end
  elseif available < grant then
    grant = available
  end
end
if waiting ~= nil then
  return heads(waiting, free)    -- a refusal also tells the windows' state (its 429's)
end

-- The key's spend this period as read here (-1: no budget, no spend kept): its answers'
-- x-litellm-key-spend, with the period's end it belongs to.
local key_spent, key_reset = -1, 0
for _, s in ipairs(budgeted) do
  if s[1] == 1 then key_spent, key_reset = s[2] - s[3], s[4] end
end
local out = {'ok', grant, sec, key_spent, key_reset}
heads(out, tight)
for _, s in ipairs(budgeted) do
  local b = (s[1] - 1) * 5
  if s[5] == 1 then
    redis.call('HSET', KEYS[b + 1], 'base', s[3], 'reset_at', s[4])
    out[#out + 1] = s[1]; out[#out + 1] = s[3]; out[#out + 1] = s[4]
  end
  -- (an id booked twice, a call sent again on a fresh connection, holds both: exact still)
  redis.call('ZADD', KEYS[b + 2], lease, rid)
  if s[7] == sec then
    redis.call('HSET', KEYS[b + 3], rid, s[8] + grant, '=', s[6] + grant)
  else                       -- the keys outlive their newest lease: pushed once a second
    redis.call('HSET', KEYS[b + 3], rid, s[8] + grant, '=', s[6] + grant, '@', sec)
    redis.call('PEXPIRE', KEYS[b + 2], lease_ms * 2)
    redis.call('PEXPIRE', KEYS[b + 3], lease_ms * 2)
  end
end
for i = 1, #KEYS - 5 * n do
  local counter, w = KEYS[5 * n + i], windows[i]
  local cost = tonumber(ARGV[w0 + (i - 1) * 3 + 2])
  if w[3] == false then redis.call('DEL', counter)
  elseif #w[3] > 0 then redis.call('HDEL', counter, unpack(w[3])) end
  redis.call('HSET', counter, 't', w[1] + cost, 'o', w[2] or sec, 'n', sec, sec, w[5] + cost)
  -- kept 120 s from its newest bucket: set by the first booking of each second
  if w[4] ~= sec then redis.call('EXPIRE', counter, 120) end
end
for p = 1, n do
  if tonumber(ARGV[5 + (p - 1) * 5 + 2]) >= 0 then
    redis.call('ZADD', KEYS[(p - 1) * 5 + 4], lease, rid)
    redis.call('PEXPIRE', KEYS[(p - 1) * 5 + 4], lease_ms * 2)
  end
end
return out
"""

# (An admin change may have set reset_at alone before any state: 'spend' marks the state.)
_INIT = """
if redis.call('HEXISTS', KEYS[1], 'spend') == 0 then
  redis.call('HSET', KEYS[1], 'spend', ARGV[1], 'base', ARGV[2], 'reset_at', ARGV[3])
end
return 1
"""

# KEYS: per payer 4 (budget, leases, held, parallel), then the tpm windows. ARGV: request
# id, cost, the window second, payer count, per payer what admission held on it (1: a
# reservation, its budget; 2: a parallel slot; 3: both), then each window's token delta. Spend
# is added to every payer whose state Redis has, budget or not (a budget set later reads it).
_SETTLE = """
local n, cost = tonumber(ARGV[4]), tonumber(ARGV[2])
for p = 1, n do
  local b, held = (p - 1) * 4, tonumber(ARGV[4 + p])
  if held % 2 == 1 then       -- its reservation leaves the running sum (once: it may be gone)
    local amount = redis.call('HGET', KEYS[b + 3], ARGV[1])
    if amount then
      redis.call('HDEL', KEYS[b + 3], ARGV[1])
      if redis.call('HINCRBY', KEYS[b + 3], '=', -tonumber(amount)) <= 0 then
        redis.call('HDEL', KEYS[b + 3], '=', '@')
      end
    end
    redis.call('ZREM', KEYS[b + 2], ARGV[1])
  end
  if held >= 2 then redis.call('ZREM', KEYS[b + 4], ARGV[1]) end
  if cost > 0 and redis.call('HEXISTS', KEYS[b + 1], 'spend') == 1 then
    redis.call('HINCRBY', KEYS[b + 1], 'spend', cost)
  end
end
for i = 4 * n + 1, #KEYS do
  local delta = tonumber(ARGV[4 + n + i - 4 * n])
  if delta ~= 0 then
    local m = redis.call('HMGET', KEYS[i], ARGV[3], 't')
    if m[1] then             -- its bucket is still in the window
      local left = tonumber(m[1]) + delta
      if left < 0 then delta, left = delta - left, 0 end
      redis.call('HSET', KEYS[i], ARGV[3], left, 't', (tonumber(m[2]) or 0) + delta)
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
# After a call timed out (Redis hangs), admissions are refused (or fall back) at once instead
# of each waiting CALL_TIMEOUT_S: one PING at a time, every PROBE_EVERY_S, each waiting at most
# PROBE_TIMEOUT_S, checks Redis; the first answer lets admissions through again. (A refused
# connection already fails at once, and a restarted Redis is used again by the next call.)
PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 0.5
# A reservation is a lease this short, renewed every RENEW_S while its request is in flight:
# a replica that dies (or loses an answer) strands nothing for longer than LEASE_S.
LEASE_S = 30.0
RENEW_S = 5.0
# A settlement waits up to this long for an admission to share its round trip (a client that
# sends its next request at once); alone, it goes when this is up. Holding a reservation a
# few ms longer only makes admission stricter.
SETTLE_WITHIN_S = 0.005
RELEASE_ROUNDS = 2      # renewal rounds that release a lost admission once Redis answers
_POLL_S = 0.02
# A parallel refusal is decided again while this replica's settlements reach Redis, this often
# at most (callers at the limit may each have one on its way).
_PARALLEL_RECHECKS = 4


# Keys whose last spend reading this replica keeps for their answers' headers (as many as
# PayersByKey keeps payers for).
_MAX_KEY_SPENDS = 100_000


def _prefix(payer: Payer) -> str:
    return payer.scope[4:] if payer.level == KEY else payer.scope


def _settle_keys(demand: Demand) -> list[str]:
    """Each payer's budget, leases and slots, as _SETTLE reads them."""
    return [name for payer in demand.payers for name in payer_keys(_prefix(payer))[:4]]


def _heads(values: list[Any]) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-* from the script's tightest (limit, remaining, reset) of the requests
    windows, then the tokens windows (limit -1: none of that kind)."""
    requests = tuple(int(v) for v in values[0:3])
    tokens = tuple(int(v) for v in values[3:6])
    return ratelimit_headers(requests if requests[0] >= 0 else None,     # type: ignore[arg-type]
                             tokens if tokens[0] >= 0 else None)         # type: ignore[arg-type]


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
                 replicas: int,
                 load_payer: Callable[[Payer], Awaitable[Payer | None]] | None = None) -> None:
        """`load_key(token)`: the key's database row. `load_payer(payer)`: a payer above the
        key as its database row has it now (None: it is gone); without it, a payer's Redis
        state starts from the values its demand carries. `on_period_start(scope, base,
        reset_at)`: a payer's new period, to record."""
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
        self._pipeline = Pipeline(self.client.connection_pool, CALL_TIMEOUT_S, CONNECT_TIMEOUT_S)
        # Its own connection: a hung Redis's pooled ones wait their call timeout.
        self._probe_client = aioredis.Redis.from_url(
            url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S,
            max_connections=1)
        self._parts = Parts()
        self._admit = self.client.register_script(_ADMIT)
        self._init = self.client.register_script(_INIT)
        self._settle = self.client.register_script(_SETTLE)
        self._bump = self.client.register_script(_BUMP)
        self._renew = self.client.register_script(_RENEW)
        self._admit_sha = packed_sha(self._admit.sha)
        self._settle_sha = packed_sha(self._settle.sha)
        self._load_key = load_key
        self._load_payer = load_payer
        self._on_period_start = on_period_start
        self._wait_timeout_s = wait_timeout_s
        self._fail_mode = fail_mode
        self._fallback = fallback
        self._replicas = replicas
        self._local: set[str] = set()         # request ids admitted by the fallback
        self._dirty: set[str] = set()          # payers (prefixes) whose spend missed a settlement
        # token -> (period spend the last admission here read in Redis, plus this replica's
        # settlements since; that period's end in ms): the freshest spend an answer can show
        # without a round trip (period_spend).
        self._key_spend: dict[str, tuple[int, int]] = {}
        # Queued for the next pipeline: settlements (demand, its packed call), then
        # admissions (the packed call, the caller's answer). One sender sends them in that
        # order.
        self._pending: list[tuple[Demand, bytes]] = []
        self._admissions: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        self._held: dict[str, Demand] = {}     # request id -> its demand, admitted in Redis
        # Ids whose admission answer was lost, to release -> successful release rounds so far.
        self._lost: dict[str, tuple[Demand, int]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._initialising: dict[str, asyncio.Future[None]] = {}    # by payer prefix
        self._scripts_loaded = False
        self.healthy = True
        # The timeout that stopped admissions until a probe answers (None: Redis answers).
        self._hung: RedisTimeoutError | None = None
        self._prober: asyncio.Task[None] | None = None
        self.probes = 0                        # probes sent (tests count them)

    # --- the admission protocol

    async def admit(self, demand: Demand) -> Admitted:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._keep_leases())
        if self._hung is not None:
            return await self._degraded(demand, self._hung)     # Redis hangs: no call
        try:
            admitted = await self._admit_shared(demand)
        except (GatewayError, StaleKey):
            raise                   # a decision: the script that made it booked nothing
        except RedisError as exc:
            # The script may have reserved before its answer was lost: release that id as
            # soon as Redis answers again, rather than when its lease ends.
            self._lost[demand.request_id] = (demand, 0)
            self._timed_out(exc)
            return await self._degraded(demand, exc)
        except BaseException:
            # Cancelled (or failed) while a script was on its way: it may run, now or when a
            # hung Redis resumes. Release the id the same way.
            self._lost[demand.request_id] = (demand, 0)
            raise
        self._held[demand.request_id] = demand
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
        token = demand.payers[0].scope[4:]
        if token in self._key_spend:
            spent, reset_ms = self._key_spend[token]
            self._key_spend[token] = (spent + cost, reset_ms)
        parts = self._parts
        tpm = [w for w in demand.windows if w.tokens]
        self._pending.append((demand, settle_call(
            self._settle_sha, demand.request_id.encode(), cost, admitted.second,
            [parts.payer(p) for p in demand.payers], [parts.window(w)[0] for w in tpm],
            [tokens - w.cost for w in tpm])))
        if self._settle_timer is None and (self._flusher is None or self._flusher.done()):
            self._settle_timer = asyncio.get_running_loop().call_later(
                SETTLE_WITHIN_S, self._send_soon)

    def _send_soon(self) -> None:
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def drain(self) -> None:
        """Send what is queued now and wait until it is sent (closing; tests)."""
        if self._pending or self._admissions:
            self._send_soon()
        if self._flusher is not None:
            await self._flusher

    async def _decide(self, call: bytes) -> Any:
        """One admission script, sent in the next pipeline: after the settlements queued
        before it, with the admissions of other requests waiting meanwhile (one round trip
        for all of them, and this replica's finished requests free their slots first)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._admissions.append((call, answer))
        self._send_soon()
        return await answer

    async def _flush(self) -> None:
        """Send what is queued, settlements first, in one pipeline; again while more came."""
        try:
            while self._pending or self._admissions:
                await self._send_batch()
        finally:
            for _, answer in self._admissions:     # cancelled (closing): nothing waits on
                if not answer.done():
                    answer.set_exception(RedisConnectionError("admission is closing"))
            self._admissions = []

    async def _send_batch(self) -> None:
        batch, self._pending = self._pending, []
        admissions = [a for a in self._admissions if not a[1].done()]     # not cancelled
        self._admissions = []
        calls = [(self._settle, call) for _, call in batch]
        calls += [(self._admit, call) for call, _ in admissions]
        try:
            try:
                if not self._scripts_loaded:
                    # Loaded before the first pipeline: a NOSCRIPT answer is sent again after
                    # the rest of its pipeline, so the first settlements would run after the
                    # admissions queued behind them (refused by slots they were freeing).
                    for script in (self._settle, self._admit):
                        await self.client.script_load(script.script)
                    self._scripts_loaded = True
                results = await self._pipelined(calls)
            except BaseException as exc:
                # Those that queued meanwhile would wait behind this one: a hung Redis costs
                # each admission one call timeout, not two.
                admissions += self._admissions
                self._admissions = []
                for _, answer in admissions:
                    if not answer.done():
                        answer.set_exception(type(exc)(*exc.args) if isinstance(exc, RedisError)
                                             else RedisConnectionError(repr(exc)))
                raise
            for (_, answer), result in zip(admissions, results[len(batch):], strict=True):
                if answer.done():
                    continue
                if isinstance(result, Exception):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
            failed = [r for r in results[:len(batch)] if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        except RedisError as exc:
                self._timed_out(exc)
                # The spend is in the ledger: re-read these payers' spend from the database
                # once Redis answers again. The settlements may never have been sent (a flush
                # that had to open a connection during a hang times out in its handshake):
                # release their reservations and slots as lost admissions are released, not
                # when their leases end (they are no longer renewed).
                self._dirty.update(_prefix(payer) for demand, _ in batch
                                   for payer in demand.payers)
                for demand, _ in batch:
                    self._lost[demand.request_id] = (demand, 0)
                if batch:
                    log.warning("redis: could not settle %d requests (%s); their payers' "
                                "spend will be re-read from the database", len(batch),
                                type(exc).__name__)

    async def _pipelined(self, calls: list[tuple[AsyncScript, bytes]]) -> list[Any]:
        """Run packed script calls (by their digests) in one pipeline, each answer or its
        ResponseError in order. (redis-py's pipeline would first ask SCRIPT EXISTS: a round
        trip more.) A Redis that lost its scripts (restarted) gets them loaded and those
        calls again."""
        results = await self._pipeline.run([call for _, call in calls])
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for script in {calls[i][0] for i in missing}:
                script.sha = await self.client.script_load(script.script)
            again = await self._pipelined([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return results

    async def _keep_leases(self) -> None:
        """Every RENEW_S: renew the leases of requests in flight here, release lost ones."""
        while True:
            await asyncio.sleep(RENEW_S)
            held, lost = list(self._held.items()), list(self._lost.items())
            if not held and not lost:
                continue
            lease_ms = int(LEASE_S * 1000)
            calls: list[tuple[AsyncScript, bytes]] = []
            for rid, demand in held:
                for payer in demand.payers:
                    names = payer_keys(_prefix(payer))
                    calls.append((self._renew, command(self._renew.sha,
                                                       [names[1], names[3], names[2]],
                                                       [rid, lease_ms])))
            for rid, (demand, _) in lost:
                calls.append((self._settle, command(
                    self._settle.sha, _settle_keys(demand),
                    [rid, 0, 0, len(demand.payers), *[3] * len(demand.payers)])))
            try:
                results = await self._pipelined(calls)
            except RedisError:
                continue        # Redis still away: try again next round
            failed = [r for r in results if isinstance(r, ResponseError)]
            if failed:
                log.error("redis: renewing leases failed: %s", failed[0])
                continue
            log.debug("redis: renewed %d requests' leases, released %d lost", len(held),
                      len(lost))
            # A lost admission may still be in Redis's socket buffer when the first release
            # runs on another connection (a hung Redis reads both when it resumes, in either
            # order): release it once more a round later, then forget it.
            for rid, (demand, rounds) in lost:
                if rounds >= RELEASE_ROUNDS - 1:
                    self._lost.pop(rid, None)
                else:
                    self._lost[rid] = (demand, rounds + 1)

    def _timed_out(self, exc: RedisError) -> None:
        """A call timed out: stop sending admissions until a probe answers."""
        if isinstance(exc, RedisTimeoutError) and self._hung is None:
            self._hung = exc
            if self._prober is None or self._prober.done():
                self._prober = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """PING every PROBE_EVERY_S (one at a time, on its own connection) until Redis
        answers; then admissions call it again."""
        while self._hung is not None:
            await asyncio.sleep(PROBE_EVERY_S)
            self.probes += 1
            try:
                await self._probe_client.ping()
            except (RedisError, OSError):
                continue
            self._hung = None
            self._recovered()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        if self._renewer is not None:
            self._renewer.cancel()
        await self.drain()
        await self._pipeline.close()
        await self.client.aclose()
        await self._probe_client.aclose()

    def period_spend(self, key: KeyRecord) -> int:
        """The newer of the key's row and what this replica last read in Redis (spend only
        grows within a period): /key/info's fresh row wins over an old reading, an answer's
        cached row loses to this request's. A reading from an earlier period is ignored."""
        seen = self._key_spend.get(key.token)
        if seen is None or (key.budget_reset_at is not None
                            and _ms(key.budget_reset_at) > seen[1]):
            return key.period_spend_nanos
        return max(seen[0], key.period_spend_nanos)

    def lifetime_spend(self, key: KeyRecord) -> int:
        return key.spend_nanos

    def forget(self, scope: str) -> None:
        self._key_spend.pop(prefix_of(scope), None)
        self._fallback.forget(scope)

    def change_period(self, scope: str, reset_at: datetime | None) -> None:
        self._key_spend.pop(prefix_of(scope), None)
        self._fallback.change_period(scope, reset_at)

    async def version(self, token: str) -> str:
        """The key's current version; read before its row, so the row is at least as new."""
        return await self.payer_version(f"key:{token}")

    async def payer_version(self, scope: str) -> str:
        """A payer's current version ("key:<token>", "team:<id>", ...); read it before the
        payer's row, so that the row is at least as new."""
        if self._hung is not None:
            return "?"                       # Redis hangs: the admission refuses (or falls back)
        try:
            version = await self.client.get(payer_keys(prefix_of(scope))[4])
            return "0" if version is None else version.decode() if isinstance(version, bytes) \
                else str(version)
        except RedisError:
            return "?"                       # unknown: the next shared admission reloads it

    async def key_changed(self, key: KeyRecord | None, token: str) -> None:
        """After an admin change hit the database: every replica must notice at once."""
        await self.payer_changed(f"key:{token}",
                                 None if key is None else key.budget_reset_at)

    async def payer_changed(self, scope: str, reset_at: datetime | None) -> None:
        """After an admin change to a payer (a team blocked, an organization's budget raised,
        a key updated) hit the database: bump its version, so that every replica's next
        request with it reloads it; `reset_at`: its period's end, if it has one."""
        names = payer_keys(prefix_of(scope))
        try:
            await self._bump(keys=[names[4]])
            if reset_at is not None:
                await self.client.hset(names[0], "reset_at", _ms(reset_at))
        except RedisError as exc:
            # The change is in the database already: say so, with a 503 rather than a 500
            # (seen under load as a connect timeout in /customer/new).
            raise ServiceUnavailable(
                f"Redis is unreachable ({type(exc).__name__}): the change is saved in the "
                "database, but other replicas may go on with their cached copy of "
                f"{scope.split(':', 1)[0]} {prefix_of(scope)[:80]} until it expires "
                "(key_cache_ttl_s) or the next change reaches Redis",
                code="redis_unavailable") from exc

    # --- internals

    async def _admit_shared(self, demand: Demand) -> Admitted:
        payers, parts = demand.payers, self._parts
        wired: list[PayerPart] = [parts.payer(p) for p in payers]
        if self._dirty:
            for part in wired:
                if part.prefix in self._dirty:
                    self._dirty.discard(part.prefix)     # one admission deletes it, not all
                    try:
                        await self.client.delete(payer_keys(part.prefix)[0])
                    except BaseException:
                        self._dirty.add(part.prefix)
                        raise
        windows = [parts.window(w) for w in demand.windows]
        costs = [w.cost for w in demand.windows]
        kinds = [w.tokens for w in demand.windows]
        rid = demand.request_id.encode()
        lease_ms = int(LEASE_S * 1000)
        rolls: dict[int, bytes] = {}
        deadline = asyncio.get_running_loop().time() + self._wait_timeout_s
        rechecks = 0
        while True:
            result = await self._decide(admit_call(self._admit_sha, rid, demand.least,
                                                   demand.most, lease_ms, wired, windows,
                                                   costs, kinds, rolls))
            verdict = result[0].decode() if isinstance(result[0], bytes) else result[0]
            if verdict == "ok":
                return self._admitted(demand, result)
            if verdict == "stale":
                raise StaleKey(payers[int(result[1]) - 1].scope)
            if verdict == "init":
                await self._initialise(payers[int(result[1]) - 1])
                continue
            if verdict == "roll":     # periods ended: propose their successors, decide again
                now_ms = int(result[1])
                for at in range(2, len(result), 2):
                    i, reset_ms = int(result[at]) - 1, int(result[at + 1])
                    rolls[i] = wired[i].terms_rolling(reset_ms, _next_reset_ms(
                        reset_ms, payers[i].budget_duration or "", now_ms))
                continue
            if verdict == "parallel":
                if rechecks < _PARALLEL_RECHECKS and self._pending:
                    rechecks += 1
                    # This replica's own finished requests may not have freed their slots in
                    # Redis yet (settlements are queued a moment after the answer): decided
                    # again, this goes after them in the next pipeline.
                    continue
                raise rate_limited(None, 0, 1, payers[int(result[1]) - 1])
            if verdict == "window":
                window = demand.windows[int(result[1]) - 1]
                raise rate_limited(window, int(result[2]), max(1, int(result[3])))
            payer = payers[int(result[1]) - 1]
            spent, reserved, may_wait = int(result[2]), int(result[3]), int(result[4])
            if not may_wait or asyncio.get_running_loop().time() >= deadline:
                refused = budget_exceeded(payer, spent, reserved, demand.least)
                refused.headers.update({name.decode(): value.decode()
                                        for name, value in _heads(result[5:11])})
                raise refused
            await asyncio.sleep(_POLL_S)      # settlements on other replicas may make room

    async def _initialise(self, payer: Payer) -> None:
        """A payer's budget state in Redis, from its database row (not a cached copy): once
        for all the admissions that found it missing at once (a cold burst would otherwise
        take a pooled connection, and a database read, each)."""
        prefix = _prefix(payer)
        running = self._initialising.get(prefix)
        if running is None:
            running = asyncio.ensure_future(self._initialise_now(payer))
            self._initialising[prefix] = running
            running.add_done_callback(lambda _: self._initialising.pop(prefix, None))
        await asyncio.shield(running)

    async def _initialise_now(self, payer: Payer) -> None:
        fresh: Payer | KeyRecord | None
        if payer.level == KEY:
            fresh = await self._load_key(payer.scope[4:])
        elif self._load_payer is not None:
            fresh = await self._load_payer(payer)
        else:
            fresh = payer
        if fresh is None:
            raise StaleKey(payer.scope)
        # a row without a period end of its own: the one its Payer derived (named budget)
        reset_at = fresh.budget_reset_at or payer.budget_reset_at
        reset_ms = _ms(reset_at) if reset_at else 0
        await self._init(keys=[payer_keys(_prefix(payer))[0]],
                         args=[fresh.spend_nanos, fresh.period_base_nanos, reset_ms])

    def _admitted(self, demand: Demand, result: list[Any]) -> Admitted:
        grant, second = int(result[1]), int(result[2])
        if int(result[3]) >= 0:
            if len(self._key_spend) >= _MAX_KEY_SPENDS:
                self._key_spend.clear()     # a bound on memory: the next answers read again
            self._key_spend[demand.payers[0].scope[4:]] = (int(result[3]), int(result[4]))
        for at in range(11, len(result), 3):     # periods rolled
            payer = demand.payers[int(result[at]) - 1]
            self._on_period_start(payer.scope, int(result[at + 1]), _at(int(result[at + 2])))
        return Admitted(demand, grant, second, _heads(result[5:11]))

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
        self._dirty.update(_prefix(payer) for payer in demand.payers)
        return admitted

    def _recovered(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.warning("redis: reachable again; admission is shared across replicas again")

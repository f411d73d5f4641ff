"""RedisAdmission's rate windows (a private real redis-server): a window keeps its total as
bookings come and go instead of summing its buckets on every call, so the total must stay the
sum of the buckets as bookings age out (some, or all at once), as settlements give tokens
back, and after its marks are lost. Time passes by moving the window's bookings back (with a
few seconds' margin: a second may tick during a test)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from faregate.admission.budgets import Budgets
from faregate.admission.demand import Demand, Window
from faregate.admission.local import LocalAdmission
from faregate.admission.redis_wire import window_key
from faregate.admission.shared import RedisAdmission
from faregate.errors import RateLimited
from faregate.records import KeyRecord

KEY = KeyRecord(token="windowtest", key_name="sk-...test")
RPM = Window("k:windowtest:rpm", False, 3, 1, "rpm_limit")

# Every booking (and the oldest/newest marks) `ARGV[1]` seconds earlier.
_MOVE_BACK = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
for f = 1, #fields, 2 do
  local name, value = fields[f], fields[f + 1]
  if name == 'o' or name == 'n' then value = tonumber(value) - tonumber(ARGV[1])
  elseif name ~= 't' then name = tonumber(name) - tonumber(ARGV[1]) end
  redis.call('HSET', KEYS[1], name, value)
end
redis.call('EXPIRE', KEYS[1], 120)
return 1
"""


def admission(url: str) -> RedisAdmission:
    async def load_key(token: str) -> KeyRecord | None:
        return KEY

    local = LocalAdmission(Budgets(lambda: datetime.now(UTC), 1.0, lambda *_: None), 1.0)
    return RedisAdmission(url, load_key, lambda *_: None, 1.0, "fail_closed", local, 1)


async def move_back(adm: RedisAdmission, window: Window, seconds: int) -> None:
    await adm.client.eval(_MOVE_BACK, 1, window_key(window.scope), seconds)


async def buckets(adm: RedisAdmission, window: Window) -> tuple[int, int]:
    """(the window's kept total, the sum of its buckets)."""
    fields = await adm.client.hgetall(window_key(window.scope))
    total = int(fields.get(b"t", 0))
    return total, sum(int(v) for k, v in fields.items() if k not in (b"t", b"o", b"n"))


async def admits(adm: RedisAdmission, rid: str, *windows: Window) -> bool:
    try:
        admitted = await adm.admit(Demand(rid, KEY, 0, 0, windows))
    except RateLimited:
        return False
    await adm.settle(admitted, 0, 0)
    return True


async def test_bookings_leave_the_window_after_a_minute_and_the_total_follows(
        private_redis: tuple[str, object]) -> None:
    adm = admission(private_redis[0])
    try:
        assert await admits(adm, "a0", RPM)
        await move_back(adm, RPM, 30)            # half a minute on: two more, then full
        assert [await admits(adm, f"a{i}", RPM) for i in (1, 2, 3)] == [True, True, False]
        await move_back(adm, RPM, 27)            # a0 is 57 s old: it still counts
        assert not await admits(adm, "b", RPM)
        await move_back(adm, RPM, 5)             # 62 s: a0 leaves, a1 and a2 stay
        assert [await admits(adm, f"c{i}", RPM) for i in range(2)] == [True, False]
        assert await buckets(adm, RPM) == (3, 3)
        await move_back(adm, RPM, 61)            # everything aged out at once
        assert [await admits(adm, f"d{i}", RPM) for i in range(4)] == [True] * 3 + [False]
        assert await buckets(adm, RPM) == (3, 3)
    finally:
        await adm.close()


async def test_a_refusal_says_when_the_oldest_booking_leaves(
        private_redis: tuple[str, object]) -> None:
    adm = admission(private_redis[0])
    try:
        assert await admits(adm, "a", RPM)
        await move_back(adm, RPM, 40)
        assert await admits(adm, "b", RPM) and await admits(adm, "c", RPM)
        with pytest.raises(RateLimited) as refused:
            await adm.admit(Demand("d", KEY, 0, 0, (RPM,)))
        assert refused.value.headers["Retry-After"] in ("19", "20")
    finally:
        await adm.close()


async def test_settled_tokens_come_back_to_the_total(private_redis: tuple[str, object]) -> None:
    adm = admission(private_redis[0])
    tpm = Window("k:windowtest:tpm", True, 100, 60, "tpm_limit")
    try:
        first = await adm.admit(Demand("a", KEY, 0, 0, (tpm,)))
        await adm.settle(first, 0, 10)           # 60 reserved, 10 used
        await adm.drain()
        assert await buckets(adm, tpm) == (10, 10)
        second = await adm.admit(Demand("b", KEY, 0, 0, (tpm,)))     # 10 + 60 fit 100
        with pytest.raises(RateLimited):
            await adm.admit(Demand("c", KEY, 0, 0, (tpm,)))          # 70 + 60 do not
        await adm.settle(second, 0, 200)         # more than reserved: counted in full
        await adm.drain()
        assert await buckets(adm, tpm) == (210, 210)
    finally:
        await adm.close()


async def test_a_counter_without_its_total_is_counted_again(
        private_redis: tuple[str, object]) -> None:
    adm = admission(private_redis[0])
    try:
        assert [await admits(adm, f"a{i}", RPM) for i in range(4)] == [True] * 3 + [False]
        await adm.client.hdel(window_key(RPM.scope), "t", "o", "n")
        assert not await admits(adm, "b", RPM)   # its three bookings counted from the buckets
        await move_back(adm, RPM, 61)
        assert [await admits(adm, f"c{i}", RPM) for i in range(4)] == [True] * 3 + [False]
        assert await buckets(adm, RPM) == (3, 3)
    finally:
        await adm.close()


async def test_a_settlement_takes_no_bucket_below_zero_nor_the_total(
        private_redis: tuple[str, object]) -> None:
    adm = admission(private_redis[0])
    tpm = Window("k:windowtest:tpm", True, 100, 60, "tpm_limit")
    try:
        first = await adm.admit(Demand("a", KEY, 0, 0, (tpm,)))
        # the bucket holds less than the settlement gives back (as if counted elsewhere)
        await adm.client.hset(window_key(tpm.scope), str(first.second), 5)
        await adm.client.hset(window_key(tpm.scope), "t", 5)
        await adm.settle(first, 0, 0)            # -60 on a bucket of 5: it stops at 0
        await adm.drain()
        assert await buckets(adm, tpm) == (0, 0)
    finally:
        await adm.close()

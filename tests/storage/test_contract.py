"""SqlStorage's contract, run on SQLite and on the real Postgres (the `db_url` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from support import token

from faregate.records import KeyRecord, SpendRow, StoredModel
from faregate.storage.database import (
    DuplicateAlias,
    DuplicateModelId,
    SpendQuery,
    SqlStorage,
    _key_values,
)
from faregate.storage.schema import keys

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
BIG = 5 * 10**15                 # $5M in nanos: needs a BIGINT


def key(n: int, **fields: object) -> KeyRecord:
    base: dict[str, object] = {"token": token(n), "key_name": f"sk-...{n:04d}",
                               "created_at": T0 + timedelta(minutes=n), "updated_at": T0}
    base.update(fields)
    return KeyRecord(**base)  # type: ignore[arg-type]


def row(request_id: str, api_key: str, spend: int = 100, at: datetime = T0,
        **fields: object) -> SpendRow:
    base: dict[str, object] = dict(
        request_id=request_id, api_key=api_key, key_alias=None, model="m",
        upstream="http://up/v1#m", call_type="chat_completion", prompt_tokens=10,
        completion_tokens=5, spend_nanos=spend, start_time=at,
        end_time=at + timedelta(milliseconds=1500), status="success")
    base.update(fields)
    return SpendRow(**base)  # type: ignore[arg-type]


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[SqlStorage]:
    store = SqlStorage.from_url(db_url)
    try:
        yield store
    finally:
        await store.close()


def is_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and \
        value.utcoffset() == timedelta(0)


async def rows_of(storage: SqlStorage, api_key: str) -> list[dict]:
    return await storage.spend_logs(SpendQuery(api_key=api_key, page_size=10_000))


async def assert_spend_is_sum_of_rows(storage: SqlStorage, *tokens: str) -> None:
    for t in tokens:
        record = await storage.get_key(t)
        assert record is not None
        assert record.spend_nanos == sum(r["spend_nanos"] for r in await rows_of(storage, t))


# keys


async def test_insert_and_get_key_round_trip(storage: SqlStorage) -> None:
    record = key(1, key_alias="team-a", models=("gpt-4o", "qwen"), max_budget_nanos=BIG,
                 spend_nanos=BIG - 1, period_base_nanos=7, budget_duration="1mo",
                 budget_reset_at=T0 + timedelta(days=30), expires=T0 + timedelta(days=365),
                 metadata={"team": "a", "nested": {"n": [1, 2]}, "ü": "ö"}, tpm_limit=1000,
                 rpm_limit=60, max_parallel_requests=4, blocked=True,
                 aliases={"my-gpt": "qwen", "ü": "gpt-4o"})
    await storage.insert_key(record)
    got = await storage.get_key(record.token)
    assert got == record
    assert isinstance(got.models, tuple)
    for value in (got.budget_reset_at, got.expires, got.created_at, got.updated_at):
        assert is_utc(value)


async def test_minimal_key_round_trip(storage: SqlStorage) -> None:
    record = key(2)
    await storage.insert_key(record)
    got = await storage.get_key(record.token)
    assert got == record
    assert got.models == () and got.metadata == {} and got.blocked is False
    assert got.max_budget_nanos is None and got.key_alias is None


async def test_get_missing_key(storage: SqlStorage) -> None:
    assert await storage.get_key(token(404)) is None
    assert await storage.get_key_by_alias("nobody") is None


async def test_get_key_by_alias(storage: SqlStorage) -> None:
    await storage.insert_key(key(1, key_alias="alpha"))
    await storage.insert_key(key(2, key_alias="beta"))
    got = await storage.get_key_by_alias("beta")
    assert got is not None and got.token == token(2)
    assert await storage.get_key_by_alias("Beta") is None     # exact match


async def test_duplicate_alias_on_insert(storage: SqlStorage) -> None:
    await storage.insert_key(key(1, key_alias="same"))
    with pytest.raises(DuplicateAlias):
        await storage.insert_key(key(2, key_alias="same"))
    assert await storage.get_key(token(2)) is None
    assert (await storage.get_key_by_alias("same")).token == token(1)  # type: ignore[union-attr]


async def test_many_keys_without_alias(storage: SqlStorage) -> None:
    for n in range(3):
        await storage.insert_key(key(n))
    assert (await storage.list_keys(1, 10))[1] == 3


async def test_duplicate_alias_on_update(storage: SqlStorage) -> None:
    await storage.insert_key(key(1, key_alias="taken"))
    await storage.insert_key(key(2, key_alias="mine"))
    with pytest.raises(DuplicateAlias):
        await storage.update_key(token(2), {"key_alias": "taken"})
    assert (await storage.get_key(token(2))).key_alias == "mine"  # type: ignore[union-attr]
    # keeping its own alias is not a duplicate
    again = await storage.update_key(token(2), {"key_alias": "mine", "rpm_limit": 5})
    assert again is not None and again.key_alias == "mine" and again.rpm_limit == 5


async def test_update_key_returns_new_record_and_keeps_the_rest(storage: SqlStorage) -> None:
    original = key(1, key_alias="a", models=("m1",), max_budget_nanos=500, spend_nanos=120,
                   metadata={"x": 1}, tpm_limit=10, expires=T0 + timedelta(days=1))
    await storage.insert_key(original)
    before = datetime.now(UTC)
    updated = await storage.update_key(original.token, {
        "max_budget_nanos": BIG, "models": ("m2", "m3"), "metadata": {"y": [2]},
        "blocked": True, "expires": None})
    assert updated is not None
    assert updated.max_budget_nanos == BIG
    assert updated.models == ("m2", "m3")
    assert updated.metadata == {"y": [2]}
    assert updated.blocked is True
    assert updated.expires is None
    assert is_utc(updated.updated_at) and updated.updated_at >= before - timedelta(seconds=1)
    # everything not named is untouched
    untouched = ("token", "key_name", "key_alias", "spend_nanos", "period_base_nanos",
                 "budget_duration", "budget_reset_at", "tpm_limit", "rpm_limit",
                 "max_parallel_requests", "created_at")
    for name in untouched:
        assert getattr(updated, name) == getattr(original, name), name
    assert await storage.get_key(original.token) == updated


async def test_update_missing_key(storage: SqlStorage) -> None:
    assert await storage.update_key(token(9), {"rpm_limit": 1}) is None


async def test_start_budget_period(storage: SqlStorage) -> None:
    await storage.insert_key(key(1, spend_nanos=900, budget_duration="1d"))
    await storage.start_budget_period(token(1), 900, T0 + timedelta(days=2))
    got = await storage.get_key(token(1))
    assert got is not None
    assert got.period_base_nanos == 900
    assert got.period_spend_nanos == 0
    assert got.budget_reset_at == T0 + timedelta(days=2)
    assert got.spend_nanos == 900


async def test_replace_token_moves_key_and_spend_rows(storage: SqlStorage) -> None:
    old, new = token(1), token(2)
    await storage.insert_key(key(1, key_alias="keeper", max_budget_nanos=1000))
    await storage.insert_key(key(3))
    await storage.write_spend([row("r1", old, 10), row("r2", old, 20), row("r3", token(3), 5)])
    replaced = await storage.replace_token(old, new, "sk-...new0")
    assert replaced is not None
    assert replaced.token == new and replaced.key_name == "sk-...new0"
    assert replaced.key_alias == "keeper" and replaced.max_budget_nanos == 1000
    assert replaced.spend_nanos == 30
    assert await storage.get_key(old) is None
    assert await rows_of(storage, old) == []
    assert sorted(r["request_id"] for r in await rows_of(storage, new)) == ["r1", "r2"]
    assert [r["request_id"] for r in await rows_of(storage, token(3))] == ["r3"]
    await assert_spend_is_sum_of_rows(storage, new, token(3))


async def test_replace_missing_token(storage: SqlStorage) -> None:
    assert await storage.replace_token(token(1), token(2), "sk-...x") is None
    assert await storage.get_key(token(2)) is None


async def test_delete_keys_returns_only_existing(storage: SqlStorage) -> None:
    for n in (1, 2, 3):
        await storage.insert_key(key(n))
    deleted = await storage.delete_keys([token(1), token(404), token(3)])
    assert sorted(deleted) == [token(1), token(3)]
    assert await storage.get_key(token(1)) is None
    assert await storage.get_key(token(2)) is not None
    assert await storage.delete_keys([token(1)]) == []
    assert await storage.delete_keys([]) == []


async def test_list_keys_pagination_and_total(storage: SqlStorage) -> None:
    for n in (5, 1, 4, 2, 3, 7, 6):                     # created_at follows n
        await storage.insert_key(key(n))
    page1, total = await storage.list_keys(1, 3)
    page2, _ = await storage.list_keys(2, 3)
    page3, _ = await storage.list_keys(3, 3)
    page4, _ = await storage.list_keys(4, 3)
    assert total == 7
    assert [k.token for k in page1 + page2 + page3] == [token(n) for n in range(1, 8)]
    assert [len(p) for p in (page1, page2, page3, page4)] == [3, 3, 1, 0]
    assert all(is_utc(k.created_at) for k in page1)


async def test_list_keys_empty(storage: SqlStorage) -> None:
    assert await storage.list_keys(1, 10) == ([], 0)


# spend


async def test_write_spend_inserts_rows_and_adds_to_keys(storage: SqlStorage) -> None:
    a, b = token(1), token(2)
    await storage.insert_key(key(1, spend_nanos=1000))
    await storage.insert_key(key(2))
    n = await storage.write_spend([row("r1", a, 10), row("r2", b, BIG), row("r3", a, 32)])
    assert n == 3
    assert (await storage.get_key(a)).spend_nanos == 1042  # type: ignore[union-attr]
    assert (await storage.get_key(b)).spend_nanos == BIG  # type: ignore[union-attr]
    assert await storage.total_spend() == 42 + BIG
    assert await storage.write_spend([]) == 0


async def test_write_spend_row_fields_round_trip(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    original = row("req-xyz", token(1), 77, key_alias="al", model="qwen", upstream="http://u#q",
                   call_type="text_completion", prompt_tokens=123, completion_tokens=456,
                   status="partial", attempts=2,
                   error="upstream_error/upstream_disconnected: dropped the connection")
    await storage.write_spend([original])
    (got,) = await storage.spend_logs(SpendQuery(request_id="req-xyz"))
    assert got == {
        "request_id": "req-xyz", "api_key": token(1), "key_alias": "al", "model": "qwen",
        "upstream": "http://u#q", "call_type": "text_completion", "prompt_tokens": 123,
        "completion_tokens": 456, "spend_nanos": 77, "start_time": original.start_time,
        "end_time": original.end_time, "status": "partial", "user_id": None,
        "team_id": None, "organization_id": None, "end_user": None, "attempts": 2,
        "error": original.error}
    assert is_utc(got["start_time"]) and is_utc(got["end_time"])


async def test_write_spend_is_idempotent(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    batch = [row(f"r{i}", token(1), 100 + i) for i in range(4)]
    assert await storage.write_spend(batch) == 4
    spend = (await storage.get_key(token(1))).spend_nanos  # type: ignore[union-attr]
    assert spend == 406
    assert await storage.write_spend(batch) == 0
    assert (await storage.get_key(token(1))).spend_nanos == 406  # type: ignore[union-attr]
    assert len(await rows_of(storage, token(1))) == 4
    # a retried batch that overlaps: only the new row counts
    assert await storage.write_spend([batch[0], row("r9", token(1), 1000)]) == 1
    assert (await storage.get_key(token(1))).spend_nanos == 1406  # type: ignore[union-attr]
    await assert_spend_is_sum_of_rows(storage, token(1))


async def test_key_spend_is_always_the_sum_of_its_rows(storage: SqlStorage) -> None:
    tokens = [token(n) for n in range(3)]
    for n in range(3):
        await storage.insert_key(key(n))
    batches = [[row(f"r{b}-{i}", tokens[(b + i) % 3], 1 + b * 10 + i) for i in range(5)]
               for b in range(4)]
    for batch in batches + batches[1:3]:
        await storage.write_spend(batch)
        await assert_spend_is_sum_of_rows(storage, *tokens)
    # concurrent writers of overlapping batches
    await asyncio.gather(*(storage.write_spend(b) for b in batches + batches))
    extra = [row(f"x{i}", tokens[i % 3], 7) for i in range(6)]
    await asyncio.gather(storage.write_spend(extra[:4]), storage.write_spend(extra[2:]))
    await assert_spend_is_sum_of_rows(storage, *tokens)
    assert await storage.total_spend() == sum(r.spend_nanos for b in batches for r in b) + 42


async def test_duplicate_request_id_within_one_batch(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    assert await storage.write_spend([row("dup", token(1), 5), row("dup", token(1), 7)]) == 1
    await assert_spend_is_sum_of_rows(storage, token(1))


async def test_spend_logs_filters_and_pagination(storage: SqlStorage) -> None:
    a, b = token(1), token(2)
    await storage.insert_key(key(1))
    await storage.insert_key(key(2))
    hour = timedelta(hours=1)
    rows = [row(f"a{i}", a, 10 + i, T0 + i * hour) for i in range(5)] + \
        [row(f"b{i}", b, 100 + i, T0 + i * hour) for i in range(3)] + \
        [row("a2x", a, 1, T0 + 2 * hour)]
    await storage.write_spend(rows)

    everything = await storage.spend_logs(SpendQuery())
    assert len(everything) == 9
    starts = [r["start_time"] for r in everything]
    assert starts == sorted(starts, reverse=True)                # newest first

    mine = await storage.spend_logs(SpendQuery(api_key=a))
    assert [r["request_id"] for r in mine] == ["a4", "a3", "a2", "a2x", "a1", "a0"]

    one = await storage.spend_logs(SpendQuery(request_id="b1"))
    assert [(r["request_id"], r["spend_nanos"]) for r in one] == [("b1", 101)]
    assert await storage.spend_logs(SpendQuery(request_id="b1", api_key=a)) == []

    window = await storage.spend_logs(SpendQuery(api_key=a, start=T0 + hour, end=T0 + 3 * hour))
    assert [r["request_id"] for r in window] == ["a2", "a2x", "a1"]   # start <=, < end
    assert [r["request_id"] for r in await storage.spend_logs(
        SpendQuery(start=T0 + 4 * hour))] == ["a4"]
    assert [r["request_id"] for r in await storage.spend_logs(
        SpendQuery(end=T0 + hour))] == ["a0", "b0"]

    pages = [await storage.spend_logs(SpendQuery(api_key=a, page=p, page_size=4))
             for p in (1, 2, 3)]
    assert [len(p) for p in pages] == [4, 2, 0]
    assert [r["request_id"] for r in pages[0] + pages[1]] == [r["request_id"] for r in mine]


async def test_total_spend(storage: SqlStorage) -> None:
    assert await storage.total_spend() == 0
    await storage.insert_key(key(1))
    await storage.write_spend([row("r1", token(1), BIG), row("r2", token(1), 3)])
    assert await storage.total_spend() == BIG + 3


async def test_rows_of_deleted_keys_are_kept(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    await storage.write_spend([row("r1", token(1), 9)])
    await storage.delete_keys([token(1)])
    assert await storage.total_spend() == 9
    # and a late row for a deleted key is still recorded
    assert await storage.write_spend([row("r2", token(1), 1)]) == 1
    assert await storage.total_spend() == 10


# time zones


async def test_naive_reads_come_back_utc(storage: SqlStorage) -> None:
    await storage.insert_key(key(1, budget_reset_at=T0, expires=T0))
    await storage.write_spend([row("r1", token(1))])
    got = await storage.get_key(token(1))
    assert got is not None
    assert got.budget_reset_at == T0 and is_utc(got.budget_reset_at)
    (log,) = await storage.spend_logs(SpendQuery())
    assert log["start_time"] == T0 and is_utc(log["start_time"])
    assert log["end_time"] - log["start_time"] == timedelta(milliseconds=1500)


PLUS2 = timezone(timedelta(hours=2))


async def test_non_utc_spend_times_keep_their_instant(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    await storage.write_spend([row("r1", token(1), at=T0.astimezone(PLUS2))])
    (got,) = await storage.spend_logs(SpendQuery(request_id="r1"))
    assert got["start_time"] == T0 and is_utc(got["start_time"])
    assert got["end_time"] == T0 + timedelta(milliseconds=1500)


async def test_non_utc_key_times_keep_their_instant(storage: SqlStorage) -> None:
    local = T0.astimezone(PLUS2)                          # same instant as T0
    await storage.insert_key(key(1, expires=local))
    await storage.insert_key(key(2))
    await storage.update_key(token(2), {"expires": local})
    await storage.start_budget_period(token(2), 0, local)
    one, two = await storage.get_key(token(1)), await storage.get_key(token(2))
    assert one is not None and two is not None
    assert one.expires == T0
    assert two.expires == T0
    assert two.budget_reset_at == T0


async def test_spend_filters_in_another_zone_select_by_instant(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    await storage.write_spend([row("early", token(1), at=T0 - timedelta(minutes=30)),
                               row("late", token(1), at=T0)])
    since = (T0 - timedelta(minutes=10)).astimezone(PLUS2)
    until = (T0 - timedelta(minutes=10)).astimezone(PLUS2)
    assert [r["request_id"] for r in await storage.spend_logs(SpendQuery(start=since))] == \
        ["late"]
    assert [r["request_id"] for r in await storage.spend_logs(SpendQuery(end=until))] == \
        ["early"]


# races


async def test_concurrent_duplicate_alias_is_duplicate_alias(db_url: str,
                                                              storage: SqlStorage) -> None:
    other = SqlStorage.from_url(db_url)
    try:
        async with other.engine.begin() as conn:
            # another admin request is half way through inserting the same alias
            await conn.execute(keys.insert().values(**_key_values(key(1, key_alias="race"))))
            attempt = asyncio.create_task(storage.insert_key(key(2, key_alias="race")))
            await asyncio.sleep(0.3)             # it has passed its SELECT and waits on the lock
            assert not attempt.done()
        with pytest.raises(DuplicateAlias):
            await attempt
    finally:
        await other.close()


async def test_concurrent_alias_update_is_duplicate_alias(db_url: str,
                                                          storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    await storage.insert_key(key(2))
    other = SqlStorage.from_url(db_url)
    try:
        async with other.engine.begin() as conn:
            await conn.execute(keys.update().where(keys.c.token == token(1))
                               .values(key_alias="race"))
            attempt = asyncio.create_task(storage.update_key(token(2), {"key_alias": "race"}))
            await asyncio.sleep(0.3)
            assert not attempt.done()
        with pytest.raises(DuplicateAlias):
            await attempt
        assert (await storage.get_key(token(2))).key_alias is None  # type: ignore[union-attr]
    finally:
        await other.close()


# stored models


def stored(model_id: str, name: str = "m", **fields: object) -> StoredModel:
    base: dict[str, object] = dict(
        id=model_id, model_name=name,
        litellm_params={"model": "openai/x", "api_base": "http://up/v1",
                        "api_key": "fg1:abcd0123:c2VhbGVk", "input_cost_per_token": 0.5e-6,
                        "output_cost_per_token": 1e-6},
        model_info={"max_output_tokens": 512}, created_at=T0, updated_at=T0)
    base.update(fields)
    return StoredModel(**base)  # type: ignore[arg-type]


async def test_stored_models_round_trip_in_creation_order(storage: SqlStorage) -> None:
    assert await storage.list_models() == []
    second = stored("b", created_at=T0 + timedelta(seconds=1))
    first = stored("a")
    await storage.insert_model(second)
    await storage.insert_model(first)
    got = await storage.list_models()
    assert got == [first, second]
    assert all(is_utc(m.created_at) and is_utc(m.updated_at) for m in got)
    assert await storage.get_model("a") == first
    assert await storage.get_model("nope") is None


async def test_stored_model_ids_are_unique(storage: SqlStorage) -> None:
    await storage.insert_model(stored("a"))
    with pytest.raises(DuplicateModelId):
        await storage.insert_model(stored("a", name="other"))
    assert [m.model_name for m in await storage.list_models()] == ["m"]


async def test_update_and_delete_stored_models(storage: SqlStorage) -> None:
    await storage.insert_model(stored("a"))
    later = T0 + timedelta(hours=1)
    changed = stored("a", name="renamed", litellm_params={"model": "openai/y"},
                     model_info={}, updated_at=later)
    assert await storage.update_model(changed)
    assert await storage.get_model("a") == changed
    assert not await storage.update_model(stored("missing"))
    assert await storage.delete_model("a")
    assert not await storage.delete_model("a")
    assert await storage.list_models() == []


async def test_reseal_is_a_compare_and_set(storage: SqlStorage) -> None:
    original = stored("a")
    await storage.insert_model(original)
    resealed = {**original.litellm_params, "api_key": "fg1:ffff0000:bmV3"}
    later = T0 + timedelta(minutes=5)
    assert await storage.reseal_model("a", original.litellm_params, resealed, later)
    row = await storage.get_model("a")
    assert row is not None and row.litellm_params == resealed and row.updated_at == later
    # what it expected is gone now: a second writer with the old view loses, changing nothing
    assert not await storage.reseal_model("a", original.litellm_params,
                                          {**resealed, "api_key": "fg1:0:x"}, later)
    assert (await storage.get_model("a")) == row
    assert not await storage.reseal_model("missing", {}, resealed, later)

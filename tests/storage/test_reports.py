"""The UI's reads (storage/reports.py) on SQLite and on the real Postgres: the rollup equals the
ledger (writes, a regenerated key, an upgrade of a database with rows), days and hours of the
viewer's time zone, keyset pages that neither skip nor repeat rows sharing a timestamp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, func, select
from sqlalchemy.engine import Connection
from support import fresh_pg_database, token

from faregate.records import KeyRecord, SpendRow, TeamRecord, UserRecord
from faregate.storage import migrate
from faregate.storage.database import SqlStorage, create_engine
from faregate.storage.protocols import ReportStore, Storage
from faregate.storage.reports import (
    HOURLY_LEVELS,
    Cursor,
    KeyFilters,
    LogFilters,
    SearchCursor,
    Totals,
    local_midnight,
)
from faregate.storage.schema import spend_logs, spend_rollup, spend_rollup_hour

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[SqlStorage]:
    store = SqlStorage.from_url(db_url)
    try:
        yield store
    finally:
        await store.close()


def key(n: int, created: datetime = T0, **fields: Any) -> KeyRecord:
    return KeyRecord(token=token(n), key_name=f"sk-...{n:04d}", created_at=created,
                     updated_at=created, **fields)


def row(request_id: str, n: int, at: datetime, spend: int = 100, model: str = "m",
        status: str = "success", **payers: str | None) -> SpendRow:
    return SpendRow(request_id, token(n), None, model, "u", "chat_completion", 3, 5, spend, at,
                    at + timedelta(seconds=2), status, **payers)


async def rollup_equals_ledger(store: SqlStorage) -> None:
    """Every level's sums per id in the rollup are the ledger's."""
    levels = {"all": None, "model": spend_logs.c.model, "key": spend_logs.c.api_key,
              "team": spend_logs.c.team_id, "user": spend_logs.c.user_id,
              "org": spend_logs.c.organization_id, "end_user": spend_logs.c.end_user}
    async with store.engine.connect() as conn:
        for level, column in levels.items():
            sums = (func.sum(spend_logs.c.spend_nanos), func.count(),
                    func.sum(spend_logs.c.prompt_tokens))
            if column is None:
                want = {("", *tuple(r)) for r in await conn.execute(select(*sums))
                        if r[1]}
            else:
                want = {tuple(r) for r in await conn.execute(
                    select(column, *sums).where(column.is_not(None)).group_by(column))}
            tables = [spend_rollup] + ([spend_rollup_hour] if level in HOURLY_LEVELS else [])
            for table in tables:
                r = table.c
                got = {tuple(x) for x in await conn.execute(
                    select(r.id, func.sum(r.spend_nanos), func.sum(r.requests),
                           func.sum(r.prompt_tokens)).where(r.level == level).group_by(r.id)
                    .having(func.sum(r.requests) != 0))}
                assert got == want, (table.name, level)


def test_sql_storage_is_a_report_store(tmp_path: Path) -> None:
    store = SqlStorage.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(store, ReportStore) and isinstance(store, Storage)


async def test_rollup_follows_writes_retries_and_regeneration(storage: SqlStorage) -> None:
    await storage.insert_keys([key(1), key(2)])
    rows = [row(f"r{i}", 1 + i % 2, T0 + timedelta(minutes=7 * i), spend=10 + i,
                model=f"m{i % 3}", status="failure" if i % 5 == 0 else "success",
                team_id="t1" if i % 2 else None, user_id="u1", end_user=f"e{i % 2}",
                organization_id="o1" if i % 4 == 0 else None) for i in range(40)]
    assert await storage.write_spend(rows[:25]) == 25
    assert await storage.write_spend(rows[20:]) == 15       # a retried batch adds nothing twice
    await rollup_equals_ledger(storage)
    # regenerate: the rows move to the new token, and so does the key level
    assert await storage.replace_token(token(1), token(9), "sk-...9") is not None
    await rollup_equals_ledger(storage)
    totals = await storage.report_totals(T0, T0 + timedelta(days=1))
    assert totals == Totals(sum(10 + i for i in range(40)), 40, 8, 120, 200)
    assert totals.error_rate == 0.2
    assert (await storage.report_totals(T0, T0 + timedelta(days=1), "key", token(1))
            == Totals())
    moved = await storage.report_totals(T0, T0 + timedelta(days=1), "key", token(9))
    assert moved.requests == 20


async def test_a_day_of_the_viewers_zone(storage: SqlStorage) -> None:
    """A row at 23:30 UTC is the next day in Tokyo and the same day in New York."""
    await storage.insert_keys([key(1)])
    late = datetime(2026, 1, 1, 23, 30, tzinfo=UTC)
    await storage.write_spend([row("late", 1, late, spend=7),
                               row("early", 1, datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
                                   spend=5)])
    start, end = datetime(2025, 12, 30, tzinfo=UTC), datetime(2026, 1, 4, tzinfo=UTC)

    async def days(tz: str) -> dict[date, int]:
        return {p.start.date(): p.totals.spend_nanos
                for p in await storage.report_usage(start, end, "day", tz)}

    assert await days("UTC") == {date(2026, 1, 1): 12}
    assert await days("Asia/Tokyo") == {date(2026, 1, 1): 5, date(2026, 1, 2): 7}
    assert await days("America/New_York") == {date(2025, 12, 31): 5, date(2026, 1, 1): 7}
    tokyo = await storage.report_usage(start, end, "day", "Asia/Tokyo")
    assert [p.start.isoformat() for p in tokyo] == ["2026-01-01T00:00:00+09:00",
                                                    "2026-01-02T00:00:00+09:00"]


async def test_hours_of_a_half_hour_zone(storage: SqlStorage) -> None:
    """India is UTC+5:30: its hours start at half past in UTC, and the rollup's quarter
    hours put each row in the right one."""
    await storage.insert_keys([key(1)])
    await storage.write_spend([row("a", 1, datetime(2026, 1, 1, 0, 10, tzinfo=UTC), spend=1),
                               row("b", 1, datetime(2026, 1, 1, 0, 40, tzinfo=UTC), spend=2)])
    hours = await storage.report_usage(T0 - timedelta(hours=1), T0 + timedelta(hours=2),
                                       "hour", "Asia/Kolkata")
    assert [(p.start.isoformat(), p.totals.spend_nanos) for p in hours] == [
        ("2026-01-01T05:00:00+05:30", 1), ("2026-01-01T06:00:00+05:30", 2)]


async def test_a_dst_day_is_one_day(storage: SqlStorage) -> None:
    """Berlin's 29 March 2026 has 23 hours; its first and last rows are on one day, and the
    October day with 25 hours has two 2 a.m. hours."""
    await storage.insert_keys([key(1)])
    await storage.write_spend([
        row("spring-first", 1, datetime(2026, 3, 28, 23, 30, tzinfo=UTC), spend=1),
        row("spring-last", 1, datetime(2026, 3, 29, 21, 30, tzinfo=UTC), spend=2),
        row("autumn-1", 1, datetime(2026, 10, 25, 0, 30, tzinfo=UTC), spend=4),   # 02:30+2
        row("autumn-2", 1, datetime(2026, 10, 25, 1, 30, tzinfo=UTC), spend=8)])  # 02:30+1
    spring = await storage.report_usage(datetime(2026, 3, 27, tzinfo=UTC),
                                        datetime(2026, 3, 31, tzinfo=UTC), "day",
                                        "Europe/Berlin")
    assert [(p.start.date(), p.totals.spend_nanos) for p in spring] == [(date(2026, 3, 29), 3)]
    autumn = await storage.report_usage(datetime(2026, 10, 24, 22, tzinfo=UTC),
                                        datetime(2026, 10, 25, 3, tzinfo=UTC), "hour",
                                        "Europe/Berlin")
    assert [(p.start.isoformat(), p.totals.spend_nanos) for p in autumn] == [
        ("2026-10-25T02:00:00+02:00", 4), ("2026-10-25T02:00:00+01:00", 8)]


async def test_usage_grouped_names_the_top_and_sums_the_rest(storage: SqlStorage) -> None:
    await storage.insert_team(TeamRecord("big", created_at=T0, updated_at=T0))
    await storage.insert_team(TeamRecord("small", created_at=T0, updated_at=T0))
    await storage.insert_keys([key(1), key(2), key(3)])
    await storage.write_spend([
        row("1", 1, T0, spend=50, team_id="big", model="a"),
        row("2", 2, T0, spend=5, team_id="small", model="b"),
        row("3", 3, T0 + timedelta(days=1), spend=1, model="b")])       # no team
    span = (T0, T0 + timedelta(days=2))
    by_team = await storage.report_usage(*span, "day", "UTC", "team", top=1)
    assert [(p.start.date(), p.group, p.totals.spend_nanos) for p in by_team] == [
        (date(2026, 1, 1), "big", 50), (date(2026, 1, 1), None, 5),
        (date(2026, 1, 2), None, 1)]
    by_model = await storage.report_usage(*span, "day", "UTC", "model")
    assert {(p.group, p.totals.spend_nanos) for p in by_model} == {("a", 50), ("b", 5),
                                                                  ("b", 1)}
    mine = await storage.report_usage(*span, "day", "UTC", "team", only="small")
    assert [(p.group, p.totals.spend_nanos) for p in mine] == [("small", 5)]
    for bad in ({"bucket": "week"}, {"group": "planet"}, {"only": "x"}, {"top": 0},
                {"tz_name": "Mars/Olympus"}):
        with pytest.raises(ValueError):
            await storage.report_usage(*span, **bad)


async def test_overview(storage: SqlStorage) -> None:
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    await storage.insert_keys([key(1, key_alias="one"), key(2)])
    await storage.write_spend([
        row("today", 1, now - timedelta(hours=1), spend=10, end_user="e1"),
        row("week", 2, now - timedelta(days=3), spend=20, status="failure", team_id=None),
        row("month", 2, now - timedelta(days=20), spend=40, model="other"),
        row("old", 2, now - timedelta(days=60), spend=80)])
    view = await storage.report_overview(now, "UTC", top=5)
    assert view.today == Totals(10, 1, 0, 3, 5)
    assert (view.last_7_days.spend_nanos, view.last_7_days.failures) == (30, 1)
    assert view.last_30_days.spend_nanos == 70
    assert [(k.id, k.alias, k.spend_nanos) for k in view.top_keys] == [
        (token(2), None, 140), (token(1), "one", 10)]
    assert [(m.id, m.totals.spend_nanos) for m in view.top_models] == [("other", 40),
                                                                       ("m", 30)]
    assert sum(d.spend_nanos for d in view.daily_by_model) == 70
    assert view.top_teams == []                             # rows named no team
    # the ledger made the end user its row named
    assert [(e.id, e.spend_nanos) for e in view.top_end_users] == [("e1", 10)]


ZONES = ("UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu")    # +00 -05 +05:30 +05:45


def spread_rows(n: int, first: datetime) -> list[SpendRow]:
    """Rows at irregular minutes over ~10 days, three models, some failures."""
    return [row(f"z{i}", 1, first + timedelta(minutes=53 * i + i % 7, seconds=i % 60),
                spend=1_000 + 37 * i, model=f"m{i % 3}",
                status="failure" if i % 11 == 0 else "success") for i in range(n)]


def want_buckets(rows: list[SpendRow], start: datetime, end: datetime, tz: str,
                 bucket: str, by_model: bool) -> dict[tuple[datetime, str | None], int]:
    """The ledger's own sums per bucket of the zone (SUM over the rows, in Python)."""
    zone = ZoneInfo(tz)
    out: dict[tuple[datetime, str | None], int] = {}
    for r in rows:
        if not start <= r.start_time < end:
            continue
        local = r.start_time.astimezone(zone)
        if bucket == "day":
            at = datetime(local.year, local.month, local.day, tzinfo=zone)
        else:   # the zone's hour: the wall-clock hour, kept apart across a DST change
            at = (local - timedelta(minutes=local.minute, seconds=local.second,
                                    microseconds=local.microsecond))
        place = (at.astimezone(UTC), r.model if by_model else None)
        out[place] = out.get(place, 0) + r.spend_nanos
    return out


@pytest.mark.parametrize("tz", ZONES)
async def test_usage_and_overview_equal_the_ledger_in_every_zone(storage: SqlStorage,
                                                                 tz: str) -> None:
    """Whole hours come from the hourly rollup, the hours a zone's day or hour cuts from the
    15-minute one: either way each bucket is the SUM of its ledger rows."""
    await storage.insert_keys([key(1)])
    rows = spread_rows(300, T0)
    await storage.write_spend(rows)
    await rollup_equals_ledger(storage)
    start = T0 + timedelta(hours=5, minutes=45)                 # not on a whole hour
    end = T0 + timedelta(days=9, hours=7, minutes=15)
    for bucket, span in (("day", (start, end)), ("hour", (start, start + timedelta(days=2)))):
        for by_model in (False, True):
            points = await storage.report_usage(*span, bucket, tz,    # type: ignore[arg-type]
                                                "model" if by_model else None)
            got: dict[tuple[datetime, str | None], int] = {}
            for p in points:
                place = (p.start.astimezone(UTC), p.group)
                got[place] = got.get(place, 0) + p.totals.spend_nanos
            assert got == want_buckets(rows, *span, tz, bucket, by_model), (bucket, by_model)
            assert sum(p.totals.requests for p in points) == sum(
                1 for r in rows if span[0] <= r.start_time < span[1])
    now = T0 + timedelta(days=10, hours=3, minutes=20)
    view = await storage.report_overview(now, tz)
    zone = ZoneInfo(tz)
    for days, totals in ((1, view.today), (7, view.last_7_days), (30, view.last_30_days)):
        since = local_midnight(now, zone, days - 1)
        inside = [r for r in rows if since <= r.start_time < now]
        assert totals == Totals(sum(r.spend_nanos for r in inside), len(inside),
                                sum(r.status != "success" for r in inside),
                                3 * len(inside), 5 * len(inside)), days
    daily = {(d.day, d.model): d.spend_nanos for d in view.daily_by_model}
    want_daily: dict[tuple[date, str], int] = {}
    for r in rows:
        if local_midnight(now, zone, 29) <= r.start_time < now:
            place = (r.start_time.astimezone(zone).date(), r.model)
            want_daily[place] = want_daily.get(place, 0) + r.spend_nanos
    assert daily == want_daily


async def test_log_pages_neither_skip_nor_repeat_rows_sharing_a_time(
        storage: SqlStorage) -> None:
    await storage.insert_keys([key(1), key(2)])
    same = T0 + timedelta(hours=1)
    rows = [row(f"s{i}", 1 + i % 2, same, model="x" if i % 3 else "y") for i in range(7)]
    rows += [row(f"e{i}", 1, T0 + timedelta(minutes=i)) for i in range(3)]
    await storage.write_spend(rows)
    seen: list[str] = []
    after: Cursor | None = None
    while True:
        page = await storage.report_logs(LogFilters(), after, limit=3)
        seen += [r.request_id for r in page.rows]
        if page.next is None:
            break
        after = page.next
    assert seen == [f"s{i}" for i in reversed(range(7))] + ["e2", "e1", "e0"]
    only = await storage.report_logs(LogFilters(model="y", api_key=token(1)), limit=10)
    assert [r.request_id for r in only.rows] == ["s6", "s0"]
    assert (await storage.report_logs(LogFilters(status="error"))).rows == []
    ranged = await storage.report_logs(LogFilters(start=T0 + timedelta(minutes=1),
                                                  end=T0 + timedelta(minutes=2)))
    assert [r.request_id for r in ranged.rows] == ["e1"]
    # the live tail: what came after a row the page showed
    newer = await storage.report_logs_newer("e1")
    assert [r.request_id for r in newer] == [f"s{i}" for i in reversed(range(7))] + ["e2"]
    assert [r.request_id for r in await storage.report_logs_newer("s3")] == ["s6", "s5", "s4"]
    assert await storage.report_logs_newer("unknown") == []
    detail = await storage.report_log("s2")
    assert detail is not None and detail.latency_s == 2.0 and detail.start_time == same
    assert await storage.report_log("nope") is None
    with pytest.raises(ValueError):
        await storage.report_logs(limit=0)


async def test_keys_page(storage: SqlStorage) -> None:
    await storage.insert_team(TeamRecord("t1", created_at=T0, updated_at=T0))
    # five keys share one creation time: the token orders them
    await storage.insert_keys(
        [key(n, key_alias=f"alias-{n}", team_id="t1" if n % 2 else None,
             blocked=n == 4) for n in range(1, 6)]
        + [key(n, created=T0 + timedelta(minutes=n), key_alias=f"x_{n}%")
           for n in range(6, 9)])
    await storage.write_spend([row("used", 3, T0 + timedelta(hours=2))])
    seen: list[str] = []
    after: Cursor | None = None
    while True:
        page = await storage.report_keys(KeyFilters(), after, limit=2)
        seen += [r.key.token for r in page.rows]
        if page.next is None:
            break
        after = page.next
    assert seen == [token(n) for n in (8, 7, 6, 5, 4, 3, 2, 1)]
    used = {r.key.token: r.last_used for r in (await storage.report_keys(limit=20)).rows}
    assert used[token(3)] == T0 + timedelta(hours=2) and used[token(2)] is None

    async def found(**filters: Any) -> list[str]:
        page = await storage.report_keys(KeyFilters(**filters), limit=20)
        return [r.key.key_alias or "" for r in page.rows]

    assert await found(search="alias-") == [f"alias-{n}" for n in (1, 2, 3, 4, 5)]
    assert await found(search="alias-3") == ["alias-3"]
    assert await found(search="x_7%") == ["x_7%"]        # LIKE's wildcards are plain text
    assert await found(search="x%") == []
    assert await found(search="ALIAS") == []               # alias prefixes are exact
    assert await found(search="0" * 63 + "2") == ["alias-2"]     # a token prefix
    assert await found(team_id="t1") == ["alias-5", "alias-3", "alias-1"]
    assert await found(blocked=True) == ["alias-4"]
    assert await found(team_id="t1", search="alias-3") == ["alias-3"]
    assert await found(search="alias-\U0010ffff") == []    # the last code point: no error


async def test_key_search_pages_in_alias_then_token_order(storage: SqlStorage) -> None:
    """A search reads pages of its matches in alias order (code points, so 'B' < 'a' < 'é'),
    then the keys only their token matches, by token; no page skips or repeats a key."""
    aliases = {1: "a~3", 2: "aB", 3: "a", 4: "aé", 5: "a_", 6: "b", 7: None, 8: "ab"}
    await storage.insert_keys([key(n, key_alias=a) for n, a in aliases.items()]
                              + [key(0xa0 + n, key_alias=f"z{n}") for n in range(3)])
    # "a" is hex: the aliases from "a", then tokens from "a" (0xa0... here: none start so)
    want_alias = ["a", "aB", "a_", "ab", "a~3", "aé"]
    for limit in (1, 2, 4, 6, 7, 50):
        seen: list[str | None] = []
        after: Cursor | SearchCursor | None = None
        while True:
            page = await storage.report_keys(KeyFilters(search="a"), after, limit)
            seen += [r.key.key_alias for r in page.rows]
            assert len(page.rows) <= limit
            if page.next is None:
                break
            after = page.next
        assert seen == want_alias, limit
    # a prefix of tokens (64 hex digits, zero-padded: "00" matches every token here)
    tokens = sorted(token(n) for n in [*aliases, 0xa0, 0xa1, 0xa2])
    for limit in (1, 3, 50):
        seen_tokens: list[str] = []
        after = None
        while True:
            page = await storage.report_keys(KeyFilters(search="00"), after, limit)
            seen_tokens += [r.key.token for r in page.rows]
            if page.next is None:
                break
            after = page.next
        assert seen_tokens == tokens, limit
    # both: "a" as alias prefix first, then the keys whose token starts "0...0a" and alias not
    both = await storage.report_keys(KeyFilters(search="0" * 62 + "a"), None, 50)
    assert [r.key.key_alias for r in both.rows] == ["z0", "z1", "z2"]


async def test_payer_lists(storage: SqlStorage) -> None:
    from faregate.records import BudgetRecord
    await storage.insert_budget(BudgetRecord("b1", max_budget_nanos=500, created_at=T0,
                                             updated_at=T0))
    await storage.insert_user(UserRecord("u1", created_at=T0, updated_at=T0))
    for n in range(3):
        await storage.insert_team(TeamRecord(f"t{n}", team_alias=f"team {n}",
                                             max_budget_nanos=1000 if n == 0 else None,
                                             budget_id="b1" if n == 1 else None,
                                             created_at=T0, updated_at=T0))
    from faregate.records import MemberRecord
    await storage.add_team_member(MemberRecord("t0", "u1", created_at=T0))
    await storage.insert_keys([key(1, team_id="t0", user_id="u1"), key(2, team_id="t0")])
    await storage.write_spend([row("r", 1, T0, spend=300, team_id="t0", user_id="u1")])
    await storage.start_period("team:t0", 100, None)
    first = await storage.report_payers("team", limit=2)
    assert [t.id for t in first.rows] == ["t2", "t1"] and first.next is not None
    rest = await storage.report_payers("team", first.next, limit=2)
    assert [t.id for t in rest.rows] == ["t0"] and rest.next is None
    t0 = rest.rows[0]
    assert (t0.alias, t0.spend_nanos, t0.period_spend_nanos, t0.max_budget_nanos, t0.keys,
            t0.members) == ("team 0", 300, 200, 1000, 2, 1)
    assert first.rows[1].max_budget_nanos == 500          # the named budget's
    assert first.rows[0].max_budget_nanos is None
    user = (await storage.report_payers("user")).rows
    assert [(u.id, u.keys, u.members) for u in user] == [("u1", 1, 0)]
    assert (await storage.report_payers("customer")).rows == []
    assert (await storage.report_payers("organization")).rows == []
    with pytest.raises(ValueError):
        await storage.report_payers("user", organization_id="o1")


async def test_list_keys_pages_are_the_offset_pages(storage: SqlStorage) -> None:
    """/key/list's page N reads only its keys' rows; the pages are the creation order."""
    await storage.insert_keys([key(n, created=T0 + timedelta(seconds=n % 4))
                               for n in range(1, 12)])
    want = sorted((token(n) for n in range(1, 12)),
                  key=lambda t: (int(t, 16) % 4, t))
    got: list[str] = []
    for page in (1, 2, 3, 4):
        listed, total = await storage.list_keys(page, 3)
        assert total == 11
        got += [k.token for k in listed]
    assert got == want
    await storage.insert_keys([key(20 + n, team_id="t" if n % 2 else None,
                                   user_id="u" if n < 3 else None) for n in range(6)])
    team_keys, total = await storage.list_keys(1, 2, team_id="t")
    assert total == 3 and [k.token for k in team_keys] == [token(21), token(23)]
    assert [k.token for k in (await storage.list_keys(2, 2, team_id="t"))[0]] == [token(25)]
    both, total = await storage.list_keys(1, 10, user_id="u", team_id="t")
    assert total == 1 and [k.token for k in both] == [token(21)]
    assert await storage.list_keys(9, 10, user_id="nobody") == ([], 0)


@pytest.fixture(params=["sqlite", "postgres"])
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_pg_database("faregate_rep") as url:
        yield url


async def test_upgrade_from_0006_fills_the_rollup_from_the_rows(fresh_url: str) -> None:
    await asyncio.to_thread(command.upgrade, migrate._config(fresh_url), "0006")
    rows = [{"request_id": f"r{i}", "api_key": token(i % 3), "key_alias": None,
             "model": f"m{i % 2}", "upstream": "u", "call_type": "chat_completion",
             "prompt_tokens": 1, "completion_tokens": 2, "spend_nanos": 10 * i,
             "start_time": T0 + timedelta(minutes=11 * i),
             "end_time": T0 + timedelta(minutes=11 * i), "status": "success",
             "team_id": "t" if i % 2 else None, "user_id": None, "organization_id": None,
             "end_user": None} for i in range(20)]

    def write(conn: Connection) -> None:
        table = Table("faregate_spend_logs", MetaData(), autoload_with=conn)
        conn.execute(table.insert(), rows)
        conn.commit()

    engine = create_engine(fresh_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(write)
    finally:
        await engine.dispose()
    await asyncio.to_thread(migrate.upgrade, fresh_url)
    store = SqlStorage.from_url(fresh_url)
    try:
        await rollup_equals_ledger(store)
        assert (await store.report_totals(T0, T0 + timedelta(days=1))).requests == 20
        # and the triggers go on from there
        await store.insert_keys([key(0)])
        await store.write_spend([row("after", 0, T0, spend=1)])
        await rollup_equals_ledger(store)
    finally:
        await store.close()

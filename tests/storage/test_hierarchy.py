"""The hierarchy's storage contract (issue 14), on SQLite and on the real Postgres: budgets,
users, teams and members, organizations and members, end users, a key's payers in one read,
and every level's spend kept equal to the sum of the rows that name it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from support import token

from faregate.records import (
    BudgetRecord,
    EndUserRecord,
    KeyRecord,
    MemberRecord,
    OrganizationMemberRecord,
    OrganizationRecord,
    SpendRow,
    TeamRecord,
    UserRecord,
)
from faregate.storage.database import SpendQuery, SqlStorage
from faregate.storage.protocols import (
    DuplicateId,
    HierarchyStore,
    PageAfter,
    Storage,
    parse_scope,
    scope,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
BIG = 5 * 10**15


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[SqlStorage]:
    store = SqlStorage.from_url(db_url)
    try:
        yield store
    finally:
        await store.close()


def key(n: int, **fields: Any) -> KeyRecord:
    return KeyRecord(token=token(n), key_name=f"sk-...{n:04d}",
                     created_at=T0 + timedelta(minutes=n), updated_at=T0, **fields)


def row(request_id: str, api_key: str, spend: int, **payers: str | None) -> SpendRow:
    return SpendRow(request_id, api_key, None, "m", "u", "chat_completion", 1, 1, spend, T0,
                    T0 + timedelta(seconds=1), "success", **payers)


def at(minutes: int) -> dict[str, datetime]:
    return {"created_at": T0 + timedelta(minutes=minutes), "updated_at": T0}


def test_sql_storage_is_a_hierarchy_store(tmp_path: Any) -> None:
    store = SqlStorage.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(store, HierarchyStore)
    assert isinstance(store, Storage)


def test_scopes() -> None:
    assert scope("team", "t1") == "team:t1"
    assert scope("member", "t1", "u:1") == "member:t1:u:1"
    assert parse_scope("member:t1:u:1") == ("member", ("t1", "u:1"))
    assert parse_scope("end_user:a:b") == ("end_user", ("a:b",))
    assert parse_scope("key:abc") == ("key", ("abc",))
    for bad in ("team", "team:", "nope:x", "member:t1", "member::u"):
        with pytest.raises(ValueError):
            parse_scope(bad)
    with pytest.raises(ValueError):
        scope("member", "t1")


# each entity's round trip


async def test_budget_round_trip(storage: SqlStorage) -> None:
    budget = BudgetRecord("b1", max_budget_nanos=BIG, budget_duration="30d", tpm_limit=10,
                          rpm_limit=2, max_parallel_requests=3, **at(0))
    await storage.insert_budget(budget)
    assert await storage.get_budget("b1") == budget
    with pytest.raises(DuplicateId):
        await storage.insert_budget(budget)
    changed = await storage.update_budget("b1", {"max_budget_nanos": 5, "tpm_limit": None})
    assert changed is not None
    assert (changed.max_budget_nanos, changed.tpm_limit, changed.rpm_limit) == (5, None, 2)
    assert changed.updated_at is not None and changed.updated_at > T0
    assert await storage.update_budget("nope", {"tpm_limit": 1}) is None
    assert await storage.delete_budget("b1") is True
    assert await storage.delete_budget("b1") is False
    assert await storage.get_budget("b1") is None


async def test_user_round_trip_and_ledger_owned_fields(storage: SqlStorage) -> None:
    user = UserRecord("u1", user_email="a@b.c", user_alias="Ann", user_role="proxy_admin",
                      models=("gpt-4o", "qwen"), max_budget_nanos=BIG, budget_duration="1mo",
                      budget_reset_at=T0 + timedelta(days=31), tpm_limit=1, rpm_limit=2,
                      max_parallel_requests=3, metadata={"ü": [1, {"x": None}]},
                      budget_id="b1", **at(0))
    await storage.insert_user(user)
    assert await storage.get_user("u1") == user
    assert (await storage.get_user("u1")).budget_reset_at.tzinfo is not None  # type: ignore
    with pytest.raises(DuplicateId):
        await storage.insert_user(UserRecord("u1", **at(1)))
    with pytest.raises(ValueError, match="spend_nanos"):
        await storage.update_user("u1", {"spend_nanos": 0})
    with pytest.raises(ValueError, match="no field"):
        await storage.update_user("u1", {"team_id": "t"})
    updated = await storage.update_user("u1", {"models": ("a",), "metadata": {}})
    assert updated is not None and updated.models == ("a",) and updated.metadata == {}
    assert updated.user_email == "a@b.c"
    minimal = UserRecord("u2", **at(1))
    await storage.insert_user(minimal)
    assert await storage.get_user("u2") == minimal


async def test_team_members_and_delete(storage: SqlStorage) -> None:
    team = TeamRecord("t1", team_alias="core", organization_id="o1", models=("m",),
                      max_budget_nanos=10, blocked=True, budget_id="b", **at(0))
    await storage.insert_team(team)
    assert await storage.get_team("t1") == team
    for n, user in enumerate(("u1", "u2")):
        await storage.add_team_member(MemberRecord(
            "t1", user, role="admin" if n == 0 else "user", max_budget_in_team_nanos=5 + n,
            created_at=T0 + timedelta(minutes=n)))
    with pytest.raises(DuplicateId):
        await storage.add_team_member(MemberRecord("t1", "u1", created_at=T0))
    members = await storage.list_team_members("t1")
    assert [(m.user_id, m.role, m.max_budget_in_team_nanos) for m in members] == [
        ("u1", "admin", 5), ("u2", "user", 6)]
    changed = await storage.update_team_member("t1", "u2", {"max_budget_in_team_nanos": 99,
                                                            "role": "admin"})
    assert changed is not None and (changed.role, changed.max_budget_in_team_nanos) == (
        "admin", 99)
    assert await storage.update_team_member("t1", "u9", {"role": "user"}) is None
    assert [m.team_id for m in await storage.list_user_teams("u2")] == ["t1"]
    assert await storage.remove_team_member("t1", "u2") is True
    assert await storage.remove_team_member("t1", "u2") is False
    assert await storage.delete_team("t1") is True
    assert await storage.get_team("t1") is None
    assert await storage.list_team_members("t1") == []      # memberships went with it


async def test_organizations_and_members(storage: SqlStorage) -> None:
    org = OrganizationRecord("o1", organization_alias="acme", models=("m",),
                             max_budget_nanos=BIG, metadata={"k": "v"}, **at(0))
    await storage.insert_organization(org)
    assert await storage.get_organization("o1") == org
    await storage.add_organization_member(OrganizationMemberRecord("o1", "u1", "org_admin",
                                                                   T0))
    await storage.add_organization_member(OrganizationMemberRecord("o1", "u2",
                                                                   created_at=T0))
    with pytest.raises(DuplicateId):
        await storage.add_organization_member(OrganizationMemberRecord("o1", "u1",
                                                                       created_at=T0))
    changed = await storage.update_organization_member("o1", "u2",
                                                       {"user_role": "internal_user_viewer"})
    assert changed is not None and changed.user_role == "internal_user_viewer"
    assert [m.user_id for m in await storage.list_organization_members("o1")] == ["u1", "u2"]
    assert await storage.remove_organization_member("o1", "u1") is True
    await storage.insert_user(UserRecord("u2", **at(0)))
    assert await storage.delete_user("u2") is True            # memberships go with the user
    assert await storage.list_organization_members("o1") == []
    assert await storage.delete_organization("o1") is True
    assert await storage.get_organization("o1") is None


async def test_end_user_get_or_create(storage: SqlStorage) -> None:
    made = await storage.get_or_create_end_user("cust-1", budget_id="default")
    assert (made.end_user_id, made.budget_id, made.spend_nanos, made.blocked) == (
        "cust-1", "default", 0, False)
    again = await storage.get_or_create_end_user("cust-1", budget_id="other")
    assert again == made                      # the first creation's budget stays
    # many requests of a new end user at once: one row, every caller gets it
    got = await asyncio.gather(*(storage.get_or_create_end_user("cust-2") for _ in range(8)))
    assert len({g.created_at for g in got}) == 1
    page = await storage.list_end_users()
    assert [e.end_user_id for e in page.items] == ["cust-1", "cust-2"]
    blocked = await storage.update_end_user("cust-1", {"blocked": True, "alias": "Bob"})
    assert blocked is not None and blocked.blocked and blocked.alias == "Bob"
    assert await storage.delete_end_user("cust-1") is True
    await storage.insert_end_user(EndUserRecord("cust-3", max_budget_nanos=7, **at(0)))
    assert (await storage.get_end_user("cust-3")).max_budget_nanos == 7  # type: ignore


# lists


async def test_keyset_pagination_with_ties_and_filters(storage: SqlStorage) -> None:
    # ids out of creation order, and three users created at the same instant
    minutes = {"u5": 0, "u1": 1, "u9": 2, "u3": 2, "u7": 2, "u2": 3, "u0": 4}
    for user_id, minute in minutes.items():
        await storage.insert_user(UserRecord(user_id, user_role="proxy_admin"
                                             if user_id in ("u1", "u3") else "internal_user",
                                             **at(minute)))
    want = ["u5", "u1", "u3", "u7", "u9", "u2", "u0"]
    seen: list[str] = []
    after: PageAfter | None = None
    for _ in range(10):
        page = await storage.list_users(after=after, limit=2)
        seen += [u.user_id for u in page.items]
        after = page.next_after
        if after is None:
            break
    assert seen == want
    exact = await storage.list_users(limit=7)
    assert [u.user_id for u in exact.items] == want and exact.next_after is None
    admins = await storage.list_users({"user_role": "proxy_admin"})
    assert [u.user_id for u in admins.items] == ["u1", "u3"]
    with pytest.raises(ValueError):
        await storage.list_users({"password": "x"})
    with pytest.raises(ValueError):
        await storage.list_users(limit=0)


async def test_keys_with_owners(storage: SqlStorage) -> None:
    await storage.insert_key(key(1, user_id="u1", team_id="t1", organization_id="o1",
                                 budget_id="b1"))
    await storage.insert_key(key(2, user_id="u1"))
    await storage.insert_key(key(3, team_id="t1"))
    got = await storage.get_key(token(1))
    assert got is not None
    assert (got.user_id, got.team_id, got.organization_id, got.budget_id) == (
        "u1", "t1", "o1", "b1")
    by_team = await storage.list_keys_page({"team_id": "t1"})
    assert [k.token for k in by_team.items] == [token(1), token(3)]
    by_user = await storage.list_keys_page({"user_id": "u1"}, limit=1)
    assert [k.token for k in by_user.items] == [token(1)]
    rest = await storage.list_keys_page({"user_id": "u1"}, after=by_user.next_after)
    assert [k.token for k in rest.items] == [token(2)] and rest.next_after is None
    moved = await storage.update_key(token(2), {"team_id": "t2"})
    assert moved is not None and moved.team_id == "t2" and moved.user_id == "u1"
    listed, total = await storage.list_keys(1, 10)            # the old list still works
    assert total == 3 and listed[0].team_id == "t1"


# a key's payers


async def test_key_payers_in_one_read(storage: SqlStorage) -> None:
    for budget_id, nanos in (("bk", 1), ("bu", 2), ("bt", 3), ("bo", 4)):
        await storage.insert_budget(BudgetRecord(budget_id, max_budget_nanos=nanos, **at(0)))
    await storage.insert_user(UserRecord("u1", budget_id="bu", **at(0)))
    await storage.insert_organization(OrganizationRecord("o1", budget_id="bo", **at(0)))
    await storage.insert_organization(OrganizationRecord("o2", **at(0)))
    await storage.insert_team(TeamRecord("t1", organization_id="o1", budget_id="bt", **at(0)))
    await storage.add_team_member(MemberRecord("t1", "u1", max_budget_in_team_nanos=9,
                                               created_at=T0))
    # the team's organization wins over the key's own
    await storage.insert_key(key(1, user_id="u1", team_id="t1", organization_id="o2",
                                 budget_id="bk"))
    payers = await storage.get_key_payers(token(1))
    assert payers is not None
    assert payers.key.token == token(1)
    assert payers.user is not None and payers.user.user_id == "u1"
    assert payers.team is not None and payers.team.team_id == "t1"
    assert payers.member is not None and payers.member.max_budget_in_team_nanos == 9
    assert payers.organization is not None and payers.organization.organization_id == "o1"
    assert {b: r.max_budget_nanos for b, r in payers.budgets.items()} == {
        "bk": 1, "bu": 2, "bt": 3, "bo": 4}
    # each payer's null terms fall back to its named budget; its own terms stay
    await storage.update_budget("bt", {"rpm_limit": 60, "budget_duration": "30d"})
    await storage.update_team("t1", {"max_budget_nanos": 777})
    resolved = (await storage.get_key_payers(token(1))).with_budget_terms()  # type: ignore
    assert resolved.key.max_budget_nanos == 1 and resolved.user.max_budget_nanos == 2  # type: ignore
    assert resolved.team is not None and (resolved.team.max_budget_nanos,
                                          resolved.team.rpm_limit,
                                          resolved.team.budget_duration) == (777, 60, "30d")
    assert resolved.organization.max_budget_nanos == 4  # type: ignore[union-attr]
    assert resolved.member == payers.member
    # a personal key in an organization of its own; a bare key
    await storage.insert_key(key(2, user_id="u1", organization_id="o2"))
    personal = await storage.get_key_payers(token(2))
    assert personal is not None and personal.team is None and personal.member is None
    assert personal.organization is not None and personal.organization.organization_id == "o2"
    assert set(personal.budgets) == {"bu"}
    await storage.insert_key(key(3))
    bare = await storage.get_key_payers(token(3))
    assert bare is not None and bare.key == await storage.get_key(token(3))
    assert (bare.user, bare.team, bare.member, bare.organization, bare.budgets) == (
        None, None, None, None, {})
    # a key naming a team that does not exist (deleted): the key alone
    await storage.insert_key(key(4, team_id="gone", user_id="u1"))
    orphan = await storage.get_key_payers(token(4))
    assert orphan is not None and orphan.team is None and orphan.member is None
    assert await storage.get_key_payers(token(99)) is None


# spend at every level


async def make_hierarchy(storage: SqlStorage) -> None:
    for user_id in ("u1", "u2"):
        await storage.insert_user(UserRecord(user_id, **at(0)))
    await storage.insert_organization(OrganizationRecord("o1", **at(0)))
    for team_id in ("t1", "t2"):
        await storage.insert_team(TeamRecord(team_id, organization_id="o1", **at(0)))
        for user_id in ("u1", "u2"):
            await storage.add_team_member(MemberRecord(team_id, user_id, created_at=T0))
    for n in range(4):
        await storage.insert_key(key(n))


def payer_rows(prefix: str, count: int) -> list[SpendRow]:
    """Rows spread over 4 keys, 2 teams, 2 users, one organization, 3 end users (and some
    rows naming no end user, or no team)."""
    out = []
    for i in range(count):
        team = ("t1", "t2", None)[i % 3]
        out.append(row(f"{prefix}{i}", token(i % 4), 10 + i, user_id=("u1", "u2")[i % 2],
                       team_id=team, organization_id="o1" if team else None,
                       end_user=("c1", "c2", "c3", None)[i % 4]))
    return out


async def assert_every_level_is_the_sum_of_its_rows(storage: SqlStorage) -> None:
    everything = await storage.spend_logs(SpendQuery(page_size=100_000))

    def total(**match: str | None) -> int:
        return sum(r["spend_nanos"] for r in everything
                   if all(r[name] == value for name, value in match.items()))

    for n in range(4):
        assert (await storage.get_key(token(n))).spend_nanos == total(  # type: ignore
            api_key=token(n))
    for user_id in ("u1", "u2"):
        # a user pays for its personal keys' rows; its team rows are its members'
        assert (await storage.get_user(user_id)).spend_nanos == total(  # type: ignore
            user_id=user_id, team_id=None) > 0
    for team_id in ("t1", "t2"):
        assert (await storage.get_team(team_id)).spend_nanos == total(  # type: ignore
            team_id=team_id)
        for user_id in ("u1", "u2"):
            member = await storage.get_team_member(team_id, user_id)
            assert member is not None
            assert member.spend_nanos == total(team_id=team_id, user_id=user_id)
    assert (await storage.get_organization("o1")).spend_nanos == total(  # type: ignore
        organization_id="o1")
    for end_user in ("c1", "c2", "c3"):
        found = await storage.get_end_user(end_user)
        assert found is not None and found.spend_nanos == total(end_user=end_user)
    # and the totals computed in SQL agree
    for level, column in (("user", "user_id"), ("team", "team_id"),
                          ("organization", "organization_id"), ("end_user", "end_user"),
                          ("key", "api_key")):
        sums = await storage.spend_totals(level, SpendQuery(page_size=1000))
        assert {s.id: s.spend_nanos for s in sums} == {
            r[column]: total(**{column: r[column]}) for r in everything if r[column]}


async def test_write_spend_adds_to_every_level(storage: SqlStorage) -> None:
    await make_hierarchy(storage)
    rows = payer_rows("a", 24)
    written = await storage.write_spend_rows(rows)
    assert written.rows == 24
    assert written.by_payer["team:t1"] == sum(r.spend_nanos for r in rows if r.team_id == "t1")
    assert written.by_payer["member:t2:u2"] == sum(
        r.spend_nanos for r in rows if (r.team_id, r.user_id) == ("t2", "u2"))
    assert "end_user:c1" in written.by_payer and "key:" + token(0) not in written.by_payer
    await assert_every_level_is_the_sum_of_its_rows(storage)
    assert (await storage.get_team("t1")).spend_nanos > 0  # type: ignore[union-attr]


async def test_retried_rows_add_nothing_anywhere(storage: SqlStorage) -> None:
    await make_hierarchy(storage)
    rows = payer_rows("r", 12)
    await storage.write_spend(rows)
    before = await storage.get_team("t1"), await storage.get_end_user("c1")
    again = await storage.write_spend_rows([*rows, row("r0", token(0), 10**9, team_id="t1")])
    assert (again.rows, dict(again.by_key), dict(again.by_payer)) == (0, {}, {})
    assert (await storage.get_team("t1"), await storage.get_end_user("c1")) == before
    # a batch overlapping the recorded rows: only the new row counts, at its levels
    one = row("r-new", token(1), 5, user_id="u1", team_id="t1", organization_id="o1")
    written = await storage.write_spend_rows([*rows[:3], one])
    assert written.rows == 1
    assert dict(written.by_payer) == {"team:t1": 5, "member:t1:u1": 5, "org:o1": 5}
    personal = row("r-personal", token(1), 3, user_id="u1", end_user="c1")
    assert dict((await storage.write_spend_rows([personal])).by_payer) == {
        "user:u1": 3, "end_user:c1": 3}
    await assert_every_level_is_the_sum_of_its_rows(storage)


async def test_concurrent_overlapping_batches_keep_every_level_exact(
        storage: SqlStorage) -> None:
    await make_hierarchy(storage)
    rows = payer_rows("c", 120)
    batches = [rows[i:i + 17] for i in range(0, len(rows), 13)]       # overlapping
    await asyncio.gather(*(storage.write_spend(b) for b in batches + batches[::-1]))
    await assert_every_level_is_the_sum_of_its_rows(storage)
    assert sum(r["spend_nanos"] for r in await storage.spend_logs(
        SpendQuery(page_size=1000))) == sum(r.spend_nanos for r in rows)


async def test_concurrent_writers_on_two_connections(db_url: str) -> None:
    """Two storages (two processes' worth of connections) writing overlapping batches at once,
    on the same team, members and end users: no deadlock, every level exact."""
    first, second = SqlStorage.from_url(db_url), SqlStorage.from_url(db_url)
    try:
        await make_hierarchy(first)
        rows = payer_rows("w", 200)
        batches = [rows[i:i + 25] for i in range(0, len(rows), 20)]
        await asyncio.gather(*(first.write_spend(b) for b in batches),
                             *(second.write_spend(b) for b in batches[::-1]))
        await assert_every_level_is_the_sum_of_its_rows(first)
    finally:
        await first.close()
        await second.close()


async def test_missing_payers_gain_nothing_and_end_users_are_made(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    written = await storage.write_spend_rows([
        row("x1", token(1), 30, user_id="ghost", team_id="nowhere", organization_id="none",
            end_user="new-customer")])
    assert written.rows == 1
    assert await storage.get_user("ghost") is None
    assert await storage.get_team("nowhere") is None
    customer = await storage.get_end_user("new-customer")
    assert customer is not None and customer.spend_nanos == 30 and not customer.blocked
    assert (await storage.get_key(token(1))).spend_nanos == 30  # type: ignore[union-attr]


async def test_rows_without_payers_write_as_before(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    written = await storage.write_spend_rows([row("p1", token(1), 8), row("p2", token(1), 9)])
    assert (written.rows, dict(written.by_key), dict(written.by_payer)) == (
        2, {token(1): 17}, {})


async def test_start_period_for_each_level(storage: SqlStorage) -> None:
    await make_hierarchy(storage)
    await storage.get_or_create_end_user("c1")
    reset = T0 + timedelta(days=30)
    for scope_name in ("user:u1", "team:t1", "member:t1:u2", "org:o1", "end_user:c1"):
        assert await storage.start_period(scope_name, 1234, reset) is True
    assert (await storage.get_user("u1")).period_base_nanos == 1234  # type: ignore
    assert (await storage.get_team("t1")).budget_reset_at == reset  # type: ignore
    member = await storage.get_team_member("t1", "u2")
    assert member is not None and (member.period_base_nanos, member.budget_reset_at) == (
        1234, reset)
    assert (await storage.get_team_member("t1", "u1")).period_base_nanos == 0  # type: ignore
    assert (await storage.get_organization("o1")).period_base_nanos == 1234  # type: ignore
    assert (await storage.get_end_user("c1")).period_base_nanos == 1234  # type: ignore
    assert await storage.start_period("team:nope", 1, None) is False
    with pytest.raises(ValueError):
        await storage.start_period("key:" + token(0), 1, None)   # keys: start_budget_period


async def test_spend_logs_filter_by_payer(storage: SqlStorage) -> None:
    await make_hierarchy(storage)
    rows = payer_rows("f", 24)
    await storage.write_spend(rows)

    async def ids(**query: Any) -> set[str]:
        got = await storage.spend_logs(SpendQuery(page_size=1000, **query))
        return {r["request_id"] for r in got}

    assert await ids(user_id="u1") == {r.request_id for r in rows if r.user_id == "u1"}
    assert await ids(team_id="t2") == {r.request_id for r in rows if r.team_id == "t2"}
    assert await ids(end_user="c3") == {r.request_id for r in rows if r.end_user == "c3"}
    assert await ids(organization_id="o1") == {r.request_id for r in rows if r.organization_id}
    assert await ids(team_id="t1", user_id="u1") == {
        r.request_id for r in rows if (r.team_id, r.user_id) == ("t1", "u1")}
    totals = await storage.spend_totals("team", SpendQuery(user_id="u2"))
    assert {t.id: (t.spend_nanos, t.requests) for t in totals} == {
        team: (sum(r.spend_nanos for r in rows if (r.team_id, r.user_id) == (team, "u2")),
               sum(1 for r in rows if (r.team_id, r.user_id) == (team, "u2")))
        for team in ("t1", "t2")}
    assert [t.spend_nanos for t in totals] == sorted((t.spend_nanos for t in totals),
                                                     reverse=True)
    with pytest.raises(ValueError):
        await storage.spend_totals("api_key; drop table", SpendQuery())


async def test_the_same_rows_in_opposite_orders_at_once_do_not_deadlock(db_url: str) -> None:
    """Two writers handed one batch in opposite orders (a retry beside an adoption): both
    finish, without a deadlock error, and the rows count once at every level."""
    first, second = SqlStorage.from_url(db_url), SqlStorage.from_url(db_url)
    try:
        await make_hierarchy(first)
        for round_ in range(5):
            rows = payer_rows(f"o{round_}-", 200)
            await asyncio.gather(first.write_spend(rows), second.write_spend(rows[::-1]))
        await assert_every_level_is_the_sum_of_its_rows(first)
    finally:
        await first.close()
        await second.close()


async def test_spend_totals_by_utc_day(storage: SqlStorage) -> None:
    await storage.insert_key(key(1))
    plus_two = timezone(timedelta(hours=2))
    late = datetime(2026, 1, 1, 23, 30, tzinfo=UTC)
    early_next = datetime(2026, 1, 2, 2, 30, tzinfo=plus_two)     # 00:30 UTC on the 2nd
    rows = [replace(row("d1", token(1), 5, team_id="t1"), start_time=late),
            replace(row("d2", token(1), 7, team_id="t1"), start_time=early_next),
            replace(row("d3", token(1), 11, team_id="t2"), start_time=early_next),
            replace(row("d4", token(1), 13), start_time=late)]
    await storage.write_spend(rows)
    by_team = await storage.spend_totals("team", SpendQuery(), by_day=True)
    assert [(t.day, t.id, t.spend_nanos) for t in by_team] == [
        (date(2026, 1, 1), "t1", 5), (date(2026, 1, 2), "t2", 11), (date(2026, 1, 2), "t1", 7)]
    daily = await storage.spend_totals("all", SpendQuery(), by_day=True)
    assert [(t.day, t.id, t.spend_nanos, t.requests) for t in daily] == [
        (date(2026, 1, 1), None, 18, 2), (date(2026, 1, 2), None, 18, 2)]
    (everything,) = await storage.spend_totals("all", SpendQuery())
    assert (everything.spend_nanos, everything.requests, everything.prompt_tokens) == (36, 4, 4)
    assert await storage.spend_totals("all", SpendQuery(user_id="nobody")) == []
    one_day = await storage.spend_totals("all", SpendQuery(
        start=datetime(2026, 1, 2, tzinfo=UTC)), by_day=True)
    assert [(t.day, t.spend_nanos) for t in one_day] == [(date(2026, 1, 2), 18)]


async def test_nulls_where_none_are_taken_are_refused_by_name(storage: SqlStorage) -> None:
    # no times given: the store stamps them
    await storage.insert_team(TeamRecord("t1"))
    team = await storage.get_team("t1")
    assert team is not None and team.created_at is not None and team.updated_at is not None
    with pytest.raises(ValueError, match="user_role"):
        await storage.insert_user(UserRecord("u1", user_role=None))  # type: ignore[arg-type]
    assert await storage.get_user("u1") is None
    await storage.insert_user(UserRecord("u1"))
    with pytest.raises(ValueError, match="models"):
        await storage.update_user("u1", {"models": None})
    with pytest.raises(ValueError, match="blocked"):
        await storage.update_team("t1", {"blocked": None})
    cleared = await storage.update_user("u1", {"max_budget_nanos": None, "user_email": None})
    assert cleared is not None and cleared.max_budget_nanos is None
    with pytest.raises(DuplicateId) as info:
        await storage.insert_team(TeamRecord("t1"))
    assert (info.value.kind, info.value.entity_id) == ("team", "t1")
    assert str(info.value) == "team t1 already exists"


async def test_a_payer_made_after_its_rows_starts_with_their_sum_and_a_fresh_budget(
        storage: SqlStorage) -> None:
    """A team deleted and made again (or a user whose keys kept naming it): its spend is the
    sum of the rows naming it, as always, and its period starts at zero."""
    await make_hierarchy(storage)
    await storage.write_spend(payer_rows("e", 24))
    assert await storage.delete_team("t1") and await storage.delete_user("u2")
    assert await storage.delete_end_user("c1")
    await storage.write_spend(payer_rows("f", 12))        # rows naming them while gone
    await storage.insert_team(TeamRecord("t1", organization_id="o1"))
    await storage.insert_user(UserRecord("u2"))
    for team_id, user_id in (("t1", "u1"), ("t1", "u2"), ("t2", "u2")):   # u2 left t2 too
        await storage.add_team_member(MemberRecord(team_id, user_id))
    team = await storage.get_team("t1")
    assert team is not None and team.spend_nanos > 0
    assert team.period_base_nanos == team.spend_nanos       # a fresh budget
    # the end user was made again by the first row naming it: its period began before it
    made = await storage.get_or_create_end_user("c1")
    f_rows = sum(r.spend_nanos for r in payer_rows("f", 12) if r.end_user == "c1")
    assert made.spend_nanos - made.period_base_nanos == f_rows > 0
    assert made.period_base_nanos > 0
    await storage.write_spend(payer_rows("g", 12))        # and it goes on adding up
    await assert_every_level_is_the_sum_of_its_rows(storage)

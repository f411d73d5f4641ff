"""Spend per level through the API (issue 14): /spend/logs filters, /global/spend/report,
/user/daily/activity, /team/daily/activity and the top-N lists, on SQLite and Postgres.

Ledger rows are written through storage with their payer fields set; each report must equal
the sum of the rows it selects, computed here in Python.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api.conftest import RunningGateway
from api.openai_shape import openai_error

from faregate.keys.tokens import token_of
from faregate.money import nanos_to_dollars
from faregate.records import SpendRow

DAY0 = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = ["2026-03-01", "2026-03-02", "2026-03-03"]


async def seed(gw: RunningGateway) -> tuple[list[SpendRow], list[str]]:
    """48 rows over 3 UTC days (one at 23:59:59, one at 00:00:00), 2 keys, 2 teams (and no
    team), 2 users, 3 end users (and none), 2 models."""
    keys = [await gw.new_key(), await gw.new_key()]
    tokens = [token_of(k) for k in keys]
    rows = []
    for n in range(48):
        start = DAY0 + timedelta(hours=n * 1.5)
        if n == 15:
            start = DAY0 + timedelta(days=1) - timedelta(seconds=1)
        if n == 16:
            start = DAY0 + timedelta(days=1)
        rows.append(SpendRow(
            f"req-{n}", tokens[n % 2], None, ["gpt-a", "gpt-b"][n % 3 == 0], "u",
            "chat_completion", 10 + n, 2 * n, 1_000_003 * (n + 1), start,
            start + timedelta(seconds=1), "success",
            user_id=["u1", "u2"][n % 4 < 2], team_id=[None, "t1", "t2"][n % 3],
            organization_id="o1" if n % 3 else None,
            end_user=[None, "c1", "c2", "c3"][n % 4]))
    assert await gw.app.storage.write_spend(rows) == len(rows)
    return rows, keys


def total(rows: list[SpendRow], day: str | None = None, **fields: str) -> dict[str, int]:
    """Sums over the rows of one UTC day (or all) whose fields hold the given values."""
    picked = [r for r in rows if (day is None or day_of(r) == day)
              and all(getattr(r, name) == value for name, value in fields.items())]
    return {"spend": sum(r.spend_nanos for r in picked), "requests": len(picked),
            "prompt": sum(r.prompt_tokens for r in picked),
            "completion": sum(r.completion_tokens for r in picked)}


def day_of(row: SpendRow) -> str:
    return row.start_time.date().isoformat()


async def get(gw: RunningGateway, path: str, **params: str) -> Any:
    resp = await gw.admin("GET", path, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_spend_logs_filter_by_every_payer_and_keep_their_paging(
        gateway: RunningGateway) -> None:
    rows, keys = await seed(gateway)
    for param, field in (("user_id", "user_id"), ("team_id", "team_id"),
                         ("end_user", "end_user"), ("organization_id", "organization_id")):
        value = getattr(rows[1], field)
        got = await get(gateway, "/spend/logs", **{param: value}, page_size="1000")
        want = {r.request_id for r in rows if getattr(r, field) == value}
        assert {g["request_id"] for g in got} == want
        assert sum(g["spend_nanos"] for g in got) == sum(
            r.spend_nanos for r in rows if r.request_id in want)
    both = await get(gateway, "/spend/logs", team_id="t1", end_user="c1", page_size="1000")
    assert {g["request_id"] for g in both} == {
        r.request_id for r in rows if (r.team_id, r.end_user) == ("t1", "c1")}
    first = await get(gateway, "/spend/logs", user_id="u1", page_size="5")
    second = await get(gateway, "/spend/logs", user_id="u1", page_size="5", page="2")
    assert len(first) == len(second) == 5
    assert not {g["request_id"] for g in first} & {g["request_id"] for g in second}
    assert first[0]["user"] == "u1" and first[0]["metadata"]["user_api_key_user_id"] == "u1"
    # a virtual key still reads only its own rows, whatever it filters by
    own = await gateway.http.get("/spend/logs", params={"team_id": "t1", "page_size": "1000"},
                                 headers={"Authorization": f"Bearer {keys[0]}"})
    assert own.status_code == 200
    assert {g["request_id"] for g in own.json()} == {
        r.request_id for r in rows if r.team_id == "t1" and r.api_key == token_of(keys[0])}


@pytest.mark.parametrize(("group_by", "plural", "name", "field"), [
    ("team", "teams", "team_name", "team_id"), ("customer", "customers", "customer",
                                                "end_user")])
async def test_report_per_day_equals_the_rows(gateway: RunningGateway, group_by: str,
                                               plural: str, name: str, field: str) -> None:
    rows, _ = await seed(gateway)
    report = await get(gateway, "/global/spend/report", start_date=DAYS[0],
                       end_date=DAYS[1], group_by=group_by)
    got = {(d["group_by_day"][:10], g[name]): g["total_spend_nanos"]
           for d in report for g in d[plural]}
    want: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        if getattr(r, field) is not None and day_of(r) in DAYS[:2]:
            want[day_of(r), getattr(r, field)] += r.spend_nanos
    assert got == dict(want)
    assert report[0]["group_by_day"] == "2026-03-01T00:00:00+00:00"
    for d in report:
        for g in d[plural]:
            assert g["total_spend"] == nanos_to_dollars(g["total_spend_nanos"])


@pytest.mark.parametrize(("group_by", "name", "field"), [
    ("api_key", "api_key", "api_key"), ("model", "model", "model"),
    ("user", "user_id", "user_id")])
async def test_report_totals_equal_the_rows(gateway: RunningGateway, group_by: str,
                                            name: str, field: str) -> None:
    rows, _ = await seed(gateway)
    report = await get(gateway, "/global/spend/report", start_date=DAYS[1],
                       end_date=DAYS[2], group_by=group_by, team_id="t1")
    kept = [r for r in rows if day_of(r) in DAYS[1:] and r.team_id == "t1"]
    want = {}
    for value in {getattr(r, field) for r in kept}:
        t = total(kept, **{field: value})
        want[value] = (t["spend"], t["prompt"], t["completion"], t["requests"])
    assert {g[name]: (g["total_spend_nanos"], g["total_input_tokens"],
                      g["total_output_tokens"], g["api_requests"]) for g in report} == want
    spends = [g["total_spend_nanos"] for g in report]
    assert spends == sorted(spends, reverse=True)


async def test_report_filters_by_key_customer_and_user(gateway: RunningGateway) -> None:
    rows, keys = await seed(gateway)
    report = await get(gateway, "/global/spend/report", start_date=DAYS[0],
                       end_date=DAYS[2], group_by="team", api_key=keys[0],
                       customer_id="c2", internal_user_id="u1")
    got = sum(g["total_spend_nanos"] for d in report for g in d["teams"])
    assert got == sum(r.spend_nanos for r in rows if r.api_key == token_of(keys[0])
                      and r.end_user == "c2" and r.user_id == "u1" and r.team_id) > 0


async def test_user_daily_activity_is_per_utc_day(gateway: RunningGateway) -> None:
    rows, keys = await seed(gateway)
    body = await get(gateway, "/user/daily/activity", start_date=DAYS[0],
                     end_date=DAYS[2], user_id="u1")
    mine = [r for r in rows if r.user_id == "u1"]
    assert [d["date"] for d in body["results"]] == DAYS
    for result in body["results"]:
        want = total(mine, result["date"])
        m = result["metrics"]
        assert (m["spend_nanos"], m["api_requests"], m["prompt_tokens"],
                m["completion_tokens"]) == tuple(want.values())
        assert m["total_tokens"] == want["prompt"] + want["completion"]
        models = result["breakdown"]["models"]
        assert sum(v["metrics"]["spend_nanos"] for v in models.values()) == want["spend"]
        assert models["gpt-b"]["metrics"]["spend_nanos"] == total(
            mine, result["date"], model="gpt-b")["spend"]
        assert sum(v["metrics"]["spend_nanos"] for v in
                   result["breakdown"]["api_keys"].values()) == want["spend"]
    meta = body["metadata"]
    assert meta["total_spend_nanos"] == sum(r.spend_nanos for r in mine)
    assert meta["total_api_requests"] == len(mine)
    assert (meta["page"], meta["total_pages"], meta["has_more"]) == (1, 1, False)
    # the row at 23:59:59 is the first day's, the one at midnight the second's
    first = body["results"][0]["metrics"]["api_requests"]
    assert first == sum(1 for r in mine if r.start_time < DAY0 + timedelta(days=1))
    # paged by day; the totals stay the whole range's
    paged = await get(gateway, "/user/daily/activity", start_date=DAYS[0],
                      end_date=DAYS[2], user_id="u1", page_size="2", page="2")
    assert [d["date"] for d in paged["results"]] == DAYS[2:]
    assert paged["results"][0]["metrics"] == body["results"][2]["metrics"]
    assert paged["results"][0]["breakdown"] == body["results"][2]["breakdown"]
    assert (paged["metadata"]["total_pages"], paged["metadata"]["has_more"]) == (2, False)
    assert paged["metadata"]["total_spend_nanos"] == meta["total_spend_nanos"]
    # filters: a key and a model
    narrow = await get(gateway, "/user/daily/activity", start_date=DAYS[0],
                       end_date=DAYS[0], api_key=keys[0], model="gpt-a")
    assert narrow["metadata"]["total_spend_nanos"] == total(
        rows, DAYS[0], api_key=token_of(keys[0]), model="gpt-a")["spend"]


async def test_team_daily_activity(gateway: RunningGateway) -> None:
    rows, _ = await seed(gateway)
    body = await get(gateway, "/team/daily/activity", start_date=DAYS[0],
                     end_date=DAYS[2], team_ids="t2")
    for result in body["results"]:
        assert result["metrics"]["spend_nanos"] == total(
            rows, result["date"], team_id="t2")["spend"]
    assert body["metadata"]["total_spend_nanos"] == sum(
        r.spend_nanos for r in rows if r.team_id == "t2")


async def test_top_lists(gateway: RunningGateway) -> None:
    rows, _ = await seed(gateway)

    def ranked(field: str) -> list[tuple[str, float]]:
        sums: dict[str, int] = defaultdict(int)
        for r in rows:
            if getattr(r, field) is not None:
                sums[getattr(r, field)] += r.spend_nanos
        return sorted(((k, nanos_to_dollars(v)) for k, v in sums.items()),
                      key=lambda kv: -kv[1])

    keys = await get(gateway, "/global/spend/keys", limit="1")
    assert [(k["api_key"], k["total_spend"]) for k in keys] == ranked("api_key")[:1]
    models = await get(gateway, "/global/spend/models")
    assert [(m["model"], m["total_spend"]) for m in models] == ranked("model")
    teams = await get(gateway, "/global/spend/teams")
    assert [(t["team_id"], t["total_spend"]) for t in teams["total_spend_per_team"]] == \
        ranked("team_id")
    resp = await gateway.admin("POST", "/global/spend/end_users", json={
        "startTime": DAYS[2], "endTime": DAYS[2]})
    assert resp.status_code == 200, resp.text
    want = total(rows, DAYS[2], end_user="c3")
    c3 = [u for u in resp.json() if u["end_user"] == "c3"]
    assert c3 == [{"end_user": "c3", "total_spend": nanos_to_dollars(want["spend"]),
                   "total_count": want["requests"]}]


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/global/spend/report", {"end_date": "2026-03-01"}, "start_date"),
    ("/global/spend/report", {"start_date": "2026-03-01"}, "end_date"),
    ("/global/spend/report", {"start_date": "2026-13-01", "end_date": "2026-03-01"},
     "start_date"),
    ("/global/spend/report", {"start_date": "2026-03-02", "end_date": "2026-03-01"},
     "end_date"),
    ("/global/spend/report", {"start_date": "2026-03-01", "end_date": "2026-03-01",
                              "group_by": "tag"}, None),
    ("/user/daily/activity", {"start_date": "yesterday", "end_date": "2026-03-01"},
     "start_date"),
    ("/user/daily/activity", {"start_date": "2026-03-01", "end_date": "99999-01-01"},
     "end_date"),
    ("/user/daily/activity", {"start_date": "2026-03-01", "end_date": "2026-03-01",
                              "page_size": "0"}, None),
    ("/team/daily/activity", {"start_date": "2026-03-01", "end_date": "2026-03-01"},
     "team_ids"),
    ("/team/daily/activity", {"start_date": "2026-03-01", "end_date": "2026-03-01",
                              "team_ids": "t1,t2"}, "team_ids"),
    ("/spend/logs", {"start_date": "2026-02-30"}, "start_date"),
    ("/global/spend/keys", {"limit": "0"}, None),
])
async def test_bad_input_is_a_400(gateway: RunningGateway, path: str, params: dict[str, str],
                                  param: str | None) -> None:
    resp = await gateway.admin("GET", path, params=params)
    assert resp.status_code == 400, resp.text
    error = openai_error(resp.status_code, resp.json())
    if param is not None:
        assert error["param"] == param


async def test_reports_need_the_master_key(gateway: RunningGateway) -> None:
    key = await gateway.new_key()
    for path in ("/global/spend/report", "/user/daily/activity", "/team/daily/activity",
                 "/global/spend/keys", "/global/spend/teams", "/global/spend/models"):
        resp = await gateway.http.get(path, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code in (401, 403), (path, resp.text)
    resp = await gateway.http.post("/global/spend/end_users", json={},
                                   headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code in (401, 403)

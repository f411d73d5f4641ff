"""Every UI page over HTTP on Postgres (the browser tests run on SQLite), with ledger rows of
several keys, a team and customers: each page answers 200 with the numbers the admin API
reports, each bad parameter a 400 page, never a 5xx. Add "sqlite" to the fixture's params to run
it there as well (it passes; the browser tests already cover SQLite)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import date, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from support import MASTER_KEY, fresh_pg_database, in_thread, stop
from ui.browsing import start_ui_gateway

from faregate.storage import migrate

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
KEY_LINK = re.compile(r'href="/ui/keys/([0-9a-f]{64})"')


@pytest.fixture(scope="module", params=["postgres"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           mock_upstream: str) -> Iterator[tuple[str, dict[str, dict]]]:
    """A gateway with two keys (one in a team), calls made and written to the ledger."""
    tmp = tmp_path_factory.mktemp(f"ui-{request.param}")
    with _database(request.param, tmp) as url:
        in_thread(migrate.upgrade, url)
        gateway = start_ui_gateway(tmp, url, mock_upstream)
        try:
            base = gateway.base_url
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                              timeout=10) as api:
                api.post("/team/new", json={"team_id": "t-pages"}).raise_for_status()
                keys = {alias: api.post("/key/generate", json={"key_alias": alias, **extra}
                                        ).json()
                        for alias, extra in (("pages-a", {"team_id": "t-pages",
                                                          "max_budget": 5}),
                                             ("pages-b", {}))}
            for alias, n in (("pages-a", 3), ("pages-b", 2)):
                client = openai.OpenAI(api_key=keys[alias]["key"], base_url=f"{base}/v1",
                                       max_retries=0)
                for i in range(n):
                    client.chat.completions.create(
                        model="qwen-local", messages=[{"role": "user", "content": f"x{i}"}],
                        max_tokens=8, user=f"customer-{alias}")
            _wait_for_rows(base, 5)
            yield base, keys
        finally:
            stop(gateway.proc)


def _database(backend: str, tmp: Path):  # a context manager yielding the URL
    if backend == "postgres":
        return fresh_pg_database("faregate_ui")
    return nullcontext(f"sqlite:///{tmp / 'faregate.db'}")


def _wait_for_rows(base: str, n: int) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as api:
        for _ in range(100):
            if len(api.get("/spend/logs").json()) >= n:
                return
            time.sleep(0.1)
    raise AssertionError(f"{n} ledger rows never arrived")


@contextmanager
def session(base: str, key: str = MASTER_KEY) -> Iterator[httpx.Client]:
    """An HTTP client logged in to the UI through its form."""
    with httpx.Client(base_url=base, timeout=10) as client:
        token = CSRF.search(client.get("/ui/login").text)[1]
        answer = client.post("/ui/login", data={"csrf": token, "key": key, "next": ""})
        assert answer.status_code == 303, answer.text
        yield client


def test_every_page(served) -> None:
    base, keys = served
    a = keys["pages-a"]
    with session(base) as ui, httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as api:
        rows = api.get("/spend/logs").json()
        overview = ui.get("/ui/overview")
        assert overview.status_code == 200
        assert "5 requests" in overview.text and "0.0% errors" in overview.text
        assert "pages-a" in overview.text and "t-pages" in overview.text
        assert "customer-pages-a" in overview.text

        listed = ui.get("/ui/keys")
        assert listed.status_code == 200 and "pages-a" in listed.text
        assert "pages-b" in ui.get("/ui/keys", params={"q": "pages-"}).text
        # a search pages in alias order from an alias position (the Next link's `after`)
        after_a = ui.get("/ui/keys", params={"q": "pages-", "after": "alias~pages-a"}).text
        assert "pages-b" in after_a and "pages-a" not in after_a
        only_team = ui.get("/ui/keys", params={"team_id": "t-pages"}).text
        assert "pages-a" in only_team and "pages-b" not in only_team
        assert "pages-a" not in ui.get("/ui/keys", params={"state": "blocked"}).text
        found = KEY_LINK.findall(ui.get("/ui/keys", params={"q": a["key"]}).text)
        assert found == [a["token"]]
        page = ui.get(f"/ui/keys/{a['token']}")
        assert page.status_code == 200 and "/ $5" in page.text

        for group in ("model", "key", "team", "user", "customer", "organization"):
            for bucket in ("day", "hour"):
                answer = ui.get("/ui/usage", params={"group": group, "bucket": bucket})
                assert answer.status_code == 200, (group, bucket, answer.text[-300:])
        by_key = ui.get("/ui/usage", params={"group": "key"}).text
        assert "pages-a" in by_key and "pages-b" in by_key
        csv_lines = ui.get("/ui/usage.csv", params={"group": "key"}).text.splitlines()
        spend_a = sum(r["spend"] for r in rows if r["api_key"] == a["token"])
        [line_a] = [line for line in csv_lines if ",pages-a," in line]
        assert line_a.split(",")[3] == f"{spend_a:.9f}" and line_a.split(",")[5] == "3"
        # streamed: the dearest key's buckets first, then the other's (one day: one line each)
        spend_b = sum(r["spend"] for r in rows if r["api_key"] != a["token"])
        assert [line.split(",")[2] for line in csv_lines[1:]] == (
            ["pages-a", "pages-b"] if spend_a >= spend_b else ["pages-b", "pages-a"])

        logs = ui.get("/ui/logs")
        assert logs.status_code == 200 and logs.text.count('href="/ui/logs/') == 5
        assert ui.get("/ui/logs", params={"key": "pages-b"}).text.count('href="/ui/logs/') == 2
        assert ui.get("/ui/logs", params={"team_id": "t-pages"}).text.count(
            'href="/ui/logs/') == 3
        assert ui.get("/ui/logs", params={"status": "failure"}).text.count(
            'href="/ui/logs/') == 0
        newest = ui.get("/ui/logs/tail", params={"key": "pages-b"}).json()
        assert len(newest["rows"]) == 2 and newest["full"] is False
        assert newest["after"] == newest["rows"][0]["href"].rsplit("/", 1)[1]
        assert ui.get("/ui/logs/tail", params={"key": "pages-b", "after": newest["after"]}
                      ).json()["rows"] == []
        first = rows[0]["request_id"]
        detail = ui.get(f"/ui/logs/{first}")
        assert detail.status_code == 200 and first in detail.text
        assert ui.get("/ui/models").status_code == 200

    with session(base, a["key"]) as mine:
        me = mine.get("/ui/me")
        assert me.status_code == 200 and "pages-a" in me.text and "pages-b" not in me.text
        assert mine.get("/ui/overview").status_code == 403


@pytest.mark.parametrize(("path", "params", "says"), [
    ("/ui/usage", {"bucket": "week"}, "bucket must be day or hour"),
    ("/ui/usage", {"group": "planet"}, "group must be one of"),
    ("/ui/usage", {"from": "yesterday"}, "must be a date like"),
    ("/ui/usage", {"from": "2026-02-01", "to": "2026-01-01"}, "is after"),
    ("/ui/usage", {"bucket": "hour", "from": "2026-01-01", "to": "2026-02-01"}, "At most 14"),
    ("/ui/logs", {"status": "weird"}, "status must be one of"),
    ("/ui/logs", {"from": "noon"}, "must be a time like"),
    ("/ui/logs/tail", {"after": "x" * 65}, "must be the request id"),
])
def test_bad_parameters_are_400_pages(served, path: str, params: dict, says: str) -> None:
    base, _ = served
    with session(base) as ui:
        answer = ui.get(path, params=params)
    assert answer.status_code == 400 and says in answer.text, answer.text[-400:]


def test_unknown_things_are_404_pages(served) -> None:
    base, _ = served
    with session(base) as ui:
        for path in ("/ui/keys/" + "0" * 64, "/ui/logs/no-such-request",
                     "/ui/models/no-such-model/edit"):
            answer = ui.get(path)
            assert answer.status_code == 404, path
            assert "content-security-policy" in answer.headers


def test_origin_behind_a_proxy(served) -> None:
    """A form's Origin must name this site: the Host, or the X-Forwarded-Host a proxy sets."""
    base, _ = served
    with session(base) as ui:
        token = CSRF.search(ui.get("/ui/keys/new").text)[1]
        form = {"csrf": token, "key_alias": "via-proxy"}
        refused = ui.post("/ui/keys/new", data=form,
                          headers={"Origin": "https://gateway.example"})
        assert refused.status_code == 403 and "another site" in refused.text
        made = ui.post("/ui/keys/new", data=form,
                       headers={"Origin": "https://gateway.example",
                                "X-Forwarded-Host": "gateway.example"})
        assert made.status_code == 200 and "Key created" in made.text


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns", "Pacific/Kiritimati"])
def test_usage_in_other_zones_sums_the_same(served, zone: str) -> None:
    """Hour and day buckets in zones a half hour or 14 hours from UTC: every row lands in one
    bucket, so the CSV's buckets add up to what the admin API reports."""
    base, _ = served
    with session(base) as ui, httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as api:
        expected = sum(round(r["spend"] * 10**9) for r in api.get("/spend/logs").json())
        ui.cookies.set("faregate_tz", zone.replace("/", "%2F"), path="/ui")
        today = date.today()
        span = {"from": (today - timedelta(days=2)).isoformat(),
                "to": (today + timedelta(days=2)).isoformat()}
        assert f"Times in {zone}" in ui.get("/ui/overview").text
        for bucket in ("day", "hour"):
            lines = ui.get("/ui/usage.csv", params={**span, "bucket": bucket,
                                                    "group": "model"}).text.splitlines()
            assert sum(int(line.split(",")[4]) for line in lines[1:]) == expected, bucket
            page = ui.get("/ui/usage", params={**span, "bucket": bucket})
            assert page.status_code == 200


def test_no_such_page(served) -> None:
    base, _ = served
    answer = httpx.get(f"{base}/ui/no/such/<b>page</b>")
    assert answer.status_code == 404 and "No such page" in answer.text
    assert "<b>" not in answer.text and "content-security-policy" in answer.headers

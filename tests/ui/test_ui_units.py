"""The UI's pure parts: the session cookie's signature, chart geometry, money as shown, the
viewer's day boundaries, which admin route each page stands for, the login throttle."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from faregate.api.admin_auth import ROUTES
from faregate.secret import Secret
from faregate.storage.reports import Cursor
from faregate.ui.charts import BudgetBar, stacked_bars
from faregate.ui.pages import all_routes
from faregate.ui.reads import Range, bucket_starts, cursor_from, cursor_text
from faregate.ui.render import dollars
from faregate.ui.session import Session, SessionSigner
from faregate.ui.throttle import LoginThrottle

MASTER = Secret("sk-unit-master-key-0123456789")


def test_session_round_trip_and_refusals() -> None:
    signer = SessionSigner(MASTER, max_age_s=100)
    session = Session.anonymous(1000).signed_in("key", 1000, "ab" * 32)
    value = signer.dumps(session)
    assert MASTER.reveal() not in value
    assert signer.loads(value, 1050) == session
    assert signer.loads(value, 1101) is None                      # expired
    assert signer.loads(value, 999) is None                       # from the future
    body, mac = value.split(".")
    assert signer.loads(f"{body}x.{mac}", 1050) is None           # body changed
    assert signer.loads(f"{body}.{mac[:-2]}AA", 1050) is None     # signature changed
    assert signer.loads("garbage", 1050) is None
    assert signer.loads("", 1050) is None
    assert signer.loads("a" * 2000, 1050) is None
    # another master key: every session ends
    assert SessionSigner(Secret("sk-another-master-0123456789")).loads(value, 1050) is None


def test_login_gives_a_new_csrf_token() -> None:
    anonymous = Session.anonymous(0)
    admin = anonymous.signed_in("admin", 5)
    assert admin.csrf != anonymous.csrf and admin.is_admin
    assert admin.csrf_matches(admin.csrf)
    assert not admin.csrf_matches(anonymous.csrf) and not admin.csrf_matches(None)


def test_stacked_bars() -> None:
    chart = stacked_bars("t", ["a", "b"], {"small": [1, 0], "big": [3, 4]}, str,
                         width=200, height=100)
    assert [name for _, name in chart.legend] == ["big", "small"]     # dearest first
    tallest = max(r.height for r in chart.rects)
    assert chart.y_ticks[-1][1] == "5"                                # 4 rounds up to 5
    assert tallest == pytest.approx(68 * 4 / 5)                       # plot height 68
    assert chart.rows == (("a", "3", "1", "4"), ("b", "4", "0", "4"))
    many = stacked_bars("t", ["a"], {f"s{i}": [10 - i] for i in range(10)}, str)
    assert [name for _, name in many.legend][-1] == "other"
    assert len(many.legend) == 8 and many.rows[0][-2] == str(3 + 2 + 1)
    assert stacked_bars("t", ["a"], {}, str).empty


def test_budget_bar() -> None:
    bar = BudgetBar(spent=25, reserved=10, budget=100)
    assert (bar.spent_pct, bar.reserved_pct, bar.remaining, bar.over) == (25, 10, 65, False)
    full = BudgetBar(spent=90, reserved=30, budget=100)
    assert full.reserved_pct == 10 and full.remaining == 0 and full.over
    assert BudgetBar(5, 0, None).remaining is None


@pytest.mark.parametrize(("nanos", "shown"), [
    (None, "—"), (0, "$0"), (1, "$0.000000001"), (5_600, "$0.0000056"),
    (999_944_000, "$0.999944"), (10**9, "$1"), (1_234_005_000_000, "$1,234.01")])
def test_dollars(nanos: int | None, shown: str) -> None:
    assert dollars(nanos) == shown


def test_days_and_hours_in_the_viewers_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    span = Range.last_days(datetime(2026, 3, 1, 20, 0, tzinfo=UTC), tokyo, 2)
    # 20:00 UTC is already March 2 in Tokyo: the last 2 days are March 1 and 2 there
    assert span.days() == [date(2026, 3, 1), date(2026, 3, 2)]
    assert span.start == datetime(2026, 2, 28, 15, 0, tzinfo=UTC)
    berlin = ZoneInfo("Europe/Berlin")
    dst = Range.of_days(date(2026, 3, 29), date(2026, 3, 29), berlin)   # 23 hours long
    assert len(bucket_starts(dst, "hour")) == 23
    assert len(bucket_starts(dst, "day")) == 1


def test_cursor_text_round_trip() -> None:
    cursor = Cursor(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "abc~def")
    assert cursor_from(cursor_text(cursor) or "") == cursor
    assert cursor_from("nonsense") is None and cursor_from("x~y") is None


# The pages that only show a form or a question before a change: the change's rule applies.
FORM_PAGES = ("/new", "/edit", "/delete")


def test_every_admin_page_stands_for_an_admin_route() -> None:
    """Each admin page is admitted by the rule of a real admin route (a typo would fall back
    to proxy_admin only, silently); a change, or a page that leads to one, by a rule that no
    proxy_admin_viewer passes."""
    pages = [p for p in all_routes() if p.who == "admin"]
    assert len(pages) > 40
    for page in pages:
        assert page.api in ROUTES, (page.path, page.methods, page.api)
        changes = "POST" in page.methods or page.path.endswith(FORM_PAGES)
        assert ROUTES[page.api].viewer is not changes, (page.path, page.methods, page.api)


def test_login_throttle() -> None:
    throttle = LoginThrottle(limit=3, window_s=60, max_addresses=2)
    for t in (0, 10, 20):
        assert throttle.retry_after("a", t) is None
        throttle.failed("a", t)
    assert throttle.retry_after("a", 21) == 39             # until the failure at 0 ages out
    assert throttle.retry_after("b", 21) is None           # another address: untouched
    assert throttle.retry_after("a", 60) is None           # 0 is out of the window: 2 left
    throttle.failed("a", 60)
    assert throttle.retry_after("a", 61) == 9              # the one at 10 is now the oldest
    assert throttle.retry_after("a", 200) is None          # all aged out, and forgotten
    # Bounded: a third address pushes out the one whose failures began first.
    throttle.failed("b", 300)
    throttle.failed("c", 301)
    throttle.failed("d", 302)
    assert len(throttle._failures) == 2 and "b" not in throttle._failures

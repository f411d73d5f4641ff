"""The admin UI in a real browser: Debian's chromium (scripts/browser.sh installs it), driven by
Playwright for Python, against `faregate serve` as a process on SQLite (test_pages_backends.py
checks every page over HTTP on Postgres too).

One gateway and one browser per test module (a module's tests share the database: each creates
its own keys, with names of its own). Screenshots: tests/ui/browsing.py's SCREENSHOTS."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from support import in_thread, stop
from ui.browsing import start_ui_gateway

from faregate.storage import migrate

CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 800}
# The console's line for a page answered 4xx (a form shown again with its error, a refused
# page): the tests check those pages themselves. Anything else logged as an error (a CSP
# violation, a script error, a 5xx) fails the test.
EXPECTED_REFUSAL = re.compile(r"^Failed to load resource: the server responded with a status "
                              r"of 4\d\d ")


# Per module: the journey's overview counts today's requests, so no other file's calls may land
# in its database (two UI files can share a pytest worker).
@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Iterator[str]:
    """`faregate serve` on a fresh SQLite database; yields its base URL."""
    tmp = tmp_path_factory.mktemp("ui")
    url = f"sqlite:///{tmp / 'faregate.db'}"
    in_thread(migrate.upgrade, url)
    served = start_ui_gateway(tmp, url, mock_upstream)
    yield served.base_url
    stop(served.proc)


# Per module, not per session: Playwright's sync API runs an event loop on this thread while
# it is open, and every later test file on this pytest worker that calls asyncio.run() would
# fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing at /usr/bin/chromium: run scripts/browser.sh "
                    "(scripts/test.sh does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM),
                                     args=["--no-sandbox", "--disable-gpu"],
                                     timeout=90_000)     # slow on a busy shared box
        yield launched
        launched.close()


@pytest.fixture
def page(browser, gateway):
    """A fresh browser context (no cookies) at 1280x800, in UTC; fails the test on any
    console error or alert/prompt (an alert() would mean injected script ran). The UI's own
    confirm() questions are answered yes."""
    context = browser.new_context(viewport=VIEWPORT, timezone_id="UTC", base_url=gateway)
    p = context.new_page()
    problems: list[str] = []
    p.on("dialog", lambda d: _dialog(d, problems))
    p.on("console", lambda m: problems.append(f"console: {m.text}")
         if m.type == "error" and not EXPECTED_REFUSAL.search(m.text) else None)
    p.problems = problems
    yield p
    context.close()
    assert not problems, problems


def _dialog(dialog, problems: list[str]) -> None:
    if dialog.type == "confirm":
        dialog.accept()
    else:
        problems.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

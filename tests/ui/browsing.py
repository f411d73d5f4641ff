"""Helpers for the browser tests: log in, take a screenshot for docs/ui/, the admin API."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from support import MASTER_KEY

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui"


def login(page, key: str = MASTER_KEY) -> None:
    page.goto("/ui/login")
    page.get_by_label("Key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/ui/(overview|me)$"))


def shoot(page, name: str) -> None:
    """A 1280x800 screenshot of the page as it is, into docs/ui/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def admin(base_url: str) -> httpx.Client:
    """The admin API with the master key (to set up what a test does not click through)."""
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                        timeout=10)

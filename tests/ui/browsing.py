"""Helpers for the browser tests: log in, take a screenshot for docs/ui/, the admin API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from support import MASTER_KEY, env_for, free_port, stop, wait_for_port, write_config

# The committed screenshots are retaken on demand (FAREGATE_UI_SCREENSHOTS=1 scripts/test.sh
# tests/ui); other runs still take them, into a scratch folder, so a test run leaves the
# checkout as it was.
SCREENSHOTS = (Path(__file__).resolve().parents[2] / "docs" / "ui"
               if os.environ.get("FAREGATE_UI_SCREENSHOTS") == "1"
               else Path(tempfile.gettempdir()) / "faregate-ui-screenshots")
SALT_KEY = "ui-test-salt-key-0123456789"


@dataclass
class UiGateway:
    proc: subprocess.Popen
    base_url: str
    log: Path


def start_ui_gateway(tmp: Path, db_url: str, mock_upstream: str) -> UiGateway:
    """`faregate serve --config` on `db_url`, with a salt key (database models' credentials)."""
    cfg = write_config(tmp / "config.yaml", mock_upstream)
    env = {**os.environ, **env_for(db_url, tmp), "FAREGATE_SALT_KEY": SALT_KEY}
    port = free_port()
    log = tmp / f"gateway-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "faregate", "serve", "--host",
                                 "127.0.0.1", "--port", str(port), "--config", str(cfg)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout_s=60, proc=proc)   # a busy 2-core box starts it slowly
    except Exception:
        stop(proc)
        raise RuntimeError(f"gateway did not start:\n{log.read_text()}") from None
    return UiGateway(proc, f"http://127.0.0.1:{port}", log)


def login(page, key: str = MASTER_KEY) -> None:
    page.goto("/ui/login")
    page.get_by_label("Key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/ui/(overview|me)$"))


def shoot(page, name: str) -> None:
    """A 1280x800 screenshot of the page as it is, into SCREENSHOTS/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def admin(base_url: str) -> httpx.Client:
    """The admin API with the master key (to set up what a test does not click through)."""
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                        timeout=10)

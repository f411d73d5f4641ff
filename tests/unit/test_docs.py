"""Every setting the config loader reads is documented (a setting nobody can find is a bug)."""

from __future__ import annotations

import re
from pathlib import Path

from faregate import config

ROOT = Path(__file__).parents[2]


def settings_read_by_the_loader() -> set[str]:
    source = Path(config.__file__).read_text()
    names = set(re.findall(r'(?:general|params|info|router)\.get\("([a-z_]+)"', source))
    names |= set(re.findall(r'env\.get\("([A-Z_]+)"\)', source))
    names |= set(config.MASTER_KEY_ENV_NAMES)
    return names


def test_the_loader_reads_settings_at_all() -> None:
    assert {"master_key", "database_url", "timeout", "DATABASE_URL"} <= \
        settings_read_by_the_loader()


def test_every_setting_is_documented() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(n for n in settings_read_by_the_loader() if f"`{n}`" not in docs)
    assert not missing, f"document these in docs/configuration.md: {missing}"


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link

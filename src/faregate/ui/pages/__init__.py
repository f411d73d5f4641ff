"""The UI's pages: one module per page (or group of pages), each with a ROUTES list; a new
module is added to PAGES below (and its nav entry to site.NAV)."""

from __future__ import annotations

from faregate.ui.pages import (
    accounts,
    budgets,
    keys,
    logs,
    me,
    models,
    overview,
    signin,
    usage,
)
from faregate.ui.site import PageRoute

PAGES = (signin, overview, keys, models, usage, logs, me, accounts, budgets)


def all_routes() -> list[PageRoute]:
    return [route for page in PAGES for route in page.ROUTES]

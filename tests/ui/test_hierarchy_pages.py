"""The payers above keys in Chromium: teams, users, organizations, customers and budgets —
create, edit, members, block, a page each with its keys and spend, errors shown in the form,
stored markup shown as text. Screenshots land in docs/ui/.

The module has a gateway of its own: its calls would otherwise change the counts other UI
tests in the same process read from the shared one (the overview's requests today)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import openai
import pytest
from playwright.sync_api import expect
from support import in_thread, stop
from ui.browsing import admin, login, shoot, start_ui_gateway

from faregate.storage import migrate

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ui-hierarchy")
    url = f"sqlite:///{tmp / 'faregate.db'}"
    in_thread(migrate.upgrade, url)
    served = start_ui_gateway(tmp, url, mock_upstream)
    yield served.base_url
    stop(served.proc)


def test_a_budget_an_organization_a_team_and_its_members(page, gateway: str) -> None:
    login(page)
    # a named budget
    page.get_by_role("link", name="Budgets").click()
    page.get_by_role("link", name="New budget").click()
    page.get_by_label("Budget id").fill("h-budget")
    page.get_by_label("Max budget (USD)").fill("25")
    page.get_by_label("Resets every").fill("30d")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator("#budget-h-budget")).to_contain_text("$25")
    shoot(page, "budgets")

    # an organization that takes its terms from the budget
    page.get_by_role("link", name="Organizations").click()
    page.get_by_role("link", name="New organization").click()
    page.get_by_label("Organization id").fill("h-org")
    page.get_by_label("Name", exact=True).fill("Research")
    page.get_by_label("Named budget").fill("h-budget")
    page.get_by_role("button", name="Create organization").click()
    expect(page.get_by_role("heading", name=re.compile("Organization Research"))).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("$25")        # the named budget's

    # a team in it, with an alias that is markup: shown as text
    page.get_by_role("link", name="Teams").click()
    page.get_by_role("link", name="New team").click()
    page.get_by_label("Team id").fill("h-team")
    page.get_by_label("Name", exact=True).fill(XSS)
    page.get_by_label("Organization id").fill("h-org")
    page.get_by_label("Max budget (USD)").fill("10")
    page.get_by_role("button", name="Create team").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(XSS)

    # members: one added, a second time refused with the reason, one removed
    page.get_by_label("User id").fill("h-alice")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#members")).to_contain_text("h-alice")
    page.get_by_label("User id").fill("h-alice")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("alert")).to_contain_text("already a member")
    page.get_by_label("User id").fill("h-bob")
    page.get_by_label("Role").select_option("admin")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#members")).to_contain_text("h-bob")
    page.locator("#members tr", has_text="h-bob").get_by_role("button", name="Remove").click()
    expect(page.locator("#members")).not_to_contain_text("h-bob")

    # the team's key, its calls, and its spend on the team's page
    with admin(gateway) as api:
        made = api.post("/key/generate", json={"team_id": "h-team", "key_alias": "h-key"})
        assert made.status_code == 200, made.text
    client = openai.OpenAI(api_key=made.json()["key"], base_url=f"{gateway}/v1",
                           max_retries=0)
    client.chat.completions.create(model="qwen-local", max_tokens=8,
                                   messages=[{"role": "user", "content": "hi"}])
    for _ in range(40):                           # the ledger writes in batches
        page.goto("/ui/teams/h-team")
        if "No spend in this range" not in page.content():
            break
        page.wait_for_timeout(250)
    expect(page.locator("#payer-keys")).to_contain_text("h-key")
    expect(page.get_by_role("img", name="Daily spend, last 30 days")).to_be_visible()
    shoot(page, "team")

    # the list: spend against budget, members and keys counted, the alias as text
    page.get_by_role("link", name="Teams").click()
    row = page.locator("#payers tr", has_text="h-team")
    expect(row).to_contain_text(XSS)
    expect(row).to_contain_text("$10")
    shoot(page, "teams")

    # edit: the form is filled from the record; a bad value is shown with its reason
    page.goto("/ui/teams/h-team/edit")
    expect(page.get_by_label("Max budget (USD)")).to_have_value("10")
    page.get_by_label("Budget resets every").fill("fortnightly")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Budget resets every").fill("7d")
    page.get_by_label("Name", exact=True).fill("Search")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name=re.compile("Team Search"))).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("every 7d")

    # block: the team's key is refused at once
    page.get_by_role("button", name="Block").click()
    expect(page.get_by_role("heading", name=re.compile("blocked"))).to_be_visible()
    try:
        client.chat.completions.create(model="qwen-local", max_tokens=8,
                                       messages=[{"role": "user", "content": "again"}])
        raise AssertionError("a blocked team's key was admitted")
    except openai.APIStatusError as refused:
        assert refused.status_code in (401, 403)

    # the organization's page lists the team and its member list works the same way
    page.goto("/ui/organizations/h-org")
    expect(page.get_by_role("link", name="Search", exact=True)).to_be_visible()
    page.get_by_label("User id").fill("h-alice")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#members")).to_contain_text("h-alice")
    shoot(page, "organization")


def test_users_and_customers(page, gateway: str) -> None:
    login(page)
    page.get_by_role("link", name="Users").click()
    page.get_by_role("link", name="New user").click()
    page.get_by_label("User id").fill("h-carol")
    page.get_by_label("Email").fill("carol@example.com")
    page.get_by_label("Max budget (USD)").fill("3")
    page.get_by_role("button", name="Create user").click()
    expect(page.locator("dl.facts")).to_contain_text("carol@example.com")
    # the same id again: the form comes back with the reason, nothing made twice
    page.goto("/ui/users/new")
    page.get_by_label("User id").fill("h-carol")
    page.get_by_role("button", name="Create user").click()
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    page.get_by_role("link", name="Users").click()
    expect(page.locator("#payers")).to_contain_text("h-carol")
    shoot(page, "users")

    page.get_by_role("link", name="Customers").click()
    page.get_by_role("link", name="New customer").click()
    page.get_by_role("button", name="Create customer").click()         # no id
    expect(page.get_by_role("alert")).to_contain_text("customer's id")
    page.get_by_label("Customer id").fill("h-acme")
    page.get_by_label("Max budget (USD)").fill("not money")
    page.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("alert")).to_contain_text("must be a number")
    page.get_by_label("Max budget (USD)").fill("2")
    page.get_by_role("button", name="Create customer").click()
    expect(page.locator("dl.facts")).to_contain_text("$2")
    page.get_by_role("button", name="Block").click()
    expect(page.get_by_role("heading", name=re.compile("blocked"))).to_be_visible()
    page.get_by_role("link", name="Customers").click()
    expect(page.locator("#payers tr", has_text="h-acme")).to_contain_text("blocked")
    shoot(page, "customers")
    # an unknown payer is a 404 page, not an error
    response = page.goto("/ui/customers/nobody-here")
    assert response is not None and response.status == 404

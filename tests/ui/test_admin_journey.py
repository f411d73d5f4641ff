"""An admin's journey in Chromium: log in, a team (through the API: its page is not there yet)
and a key (through the UI), calls through the openai SDK, the spend on the overview and the
usage page, the request in the logs, then block the key and see the next call refused.
Each page's screenshot lands in docs/ui/."""

from __future__ import annotations

import re

import openai
import pytest
from playwright.sync_api import expect
from support import MASTER_KEY
from ui.browsing import admin, login, shoot

TEAM = "search-team"
ALIAS = "journey-key"


def reload_until(page, selector: str, text: str, tries: int = 40) -> None:
    """The ledger writes rows in batches (every 0.2 s here): reload until `text` shows."""
    for _ in range(tries):
        if text in page.locator(selector).inner_text():
            return
        page.wait_for_timeout(250)
        page.reload()
    raise AssertionError(f"{text!r} never appeared in {selector}: "
                         f"{page.locator(selector).inner_text()!r}")


def test_admin_journey(page, gateway: str) -> None:
    with admin(gateway) as api:
        assert api.post("/team/new", json={"team_id": TEAM, "team_alias": "Search",
                                           "max_budget": 50}).status_code == 200

    login(page)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    # A key, made in the UI: its secret is shown once, in a field with a copy button.
    page.get_by_role("link", name="Keys").click()
    page.get_by_role("link", name="New key").click()
    page.get_by_label("Alias").fill(ALIAS)
    page.get_by_label("Models").fill("qwen-local")
    page.get_by_label("Max budget (USD)").fill("0.001")
    page.get_by_label("Requests per minute").fill("100")
    page.get_by_label("Team id").fill(TEAM)
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key created")).to_be_visible()
    secret = page.get_by_label("Secret key").input_value()
    assert secret.startswith("sk-")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shoot(page, "key-created")
    page.get_by_role("link", name="Go to the key's page").click()
    key_url = page.url
    assert secret not in page.content()             # shown once, never again

    # Three calls through the real SDK.
    client = openai.OpenAI(api_key=secret, base_url=f"{gateway}/v1", max_retries=0)
    request_ids = []
    for n in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="qwen-local", messages=[{"role": "user", "content": f"hello {n}"}],
            max_tokens=8)
        request_ids.append(raw.headers["x-litellm-call-id"])
        raw.parse()

    # The overview counts them, and the top keys name the key.
    page.get_by_role("link", name="Overview").click()
    reload_until(page, ".cards .card >> nth=0", "3 requests")
    expect(page.locator(".tops")).to_contain_text(ALIAS)
    expect(page.locator(".tops")).to_contain_text(TEAM)
    expect(page.locator("figure.chart svg rect.s0").first).to_be_visible()
    shoot(page, "overview")

    # Keys: the table shows the key's team, spend against its budget, last use.
    page.get_by_role("link", name="Keys").click()
    row = page.locator("#keys tbody tr", has_text=ALIAS)
    expect(row).to_contain_text(f"team {TEAM}")
    expect(row).to_contain_text("/ $0.001")
    expect(row).to_contain_text("100 rpm")
    expect(row).not_to_contain_text("—\n")
    shoot(page, "keys")

    # Usage grouped by key: the chart and the totals name the key, with 3 requests.
    page.get_by_role("link", name="Usage").click()
    page.get_by_label("Group by").select_option("key")
    page.get_by_role("button", name="Show").click()
    totals = page.locator("#usage-totals tbody tr", has_text=ALIAS)
    expect(totals.locator("td").nth(2)).to_have_text("3")
    expect(page.locator("figure.chart").first).to_contain_text(ALIAS)
    shoot(page, "usage")
    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    csv_text = download.value.path().read_text()
    assert csv_text.splitlines()[0].startswith("day_start,key,name,spend_usd")
    assert any(ALIAS in line and ",3,0," in line for line in csv_text.splitlines())

    # Logs: filtered by the key's alias, each request is there; its detail has the numbers.
    page.get_by_role("link", name="Logs").click()
    page.get_by_label("Key").fill(ALIAS)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#logs tbody tr")).to_have_count(3)
    shoot(page, "logs")
    # The live tail: a new request appears without a reload (as text, via one poll query).
    page.get_by_role("button", name="Start live tail").click()
    tailed = client.chat.completions.with_raw_response.create(
        model="qwen-local", messages=[{"role": "user", "content": "tail me"}], max_tokens=4)
    request_ids.append(tailed.headers["x-litellm-call-id"])
    expect(page.locator("#logs tbody tr")).to_have_count(4, timeout=15_000)
    expect(page.locator("#logs tbody tr").first.locator("a")).to_have_attribute(
        "href", re.compile(request_ids[-1]))
    page.get_by_role("button", name="Stop live tail").click()
    page.locator(f'#logs a[href$="/logs/{request_ids[0]}"]').click()
    expect(page.get_by_role("heading", name=re.compile(request_ids[0]))).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("qwen-local")
    expect(page.locator("dl.facts")).to_contain_text(TEAM)
    shoot(page, "log-detail")

    # Block the key in the UI: the next call is refused.
    page.goto(key_url)
    page.get_by_role("button", name="Block").click()
    expect(page.get_by_role("status")).to_contain_text("Blocked")
    shoot(page, "key")
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="qwen-local",
                                       messages=[{"role": "user", "content": "again"}])
    assert "blocked" in str(refused.value)
    page.get_by_role("button", name="Unblock").click()
    assert client.chat.completions.create(
        model="qwen-local", messages=[{"role": "user", "content": "back"}],
        max_tokens=4).choices


def test_edit_regenerate_delete(page, gateway: str) -> None:
    with admin(gateway) as api:
        made = api.post("/key/generate", json={"key_alias": "to-edit"}).json()
    login(page)
    page.goto("/ui/keys?q=to-edit")
    page.get_by_role("link", name="to-edit").click()
    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Max budget (USD)").fill("not money")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("Max budget must be a number")
    page.get_by_label("Max budget (USD)").fill("2.5")
    page.get_by_label("Models").fill("no-such-model")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("Unknown model(s) ['no-such-model']")
    page.get_by_label("Models").fill("")
    page.get_by_label("Alias").fill("edited")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.locator("dl.facts")).to_contain_text("/ $2.5")

    # Regenerate: a new secret shown once; the old one stops working.
    page.get_by_role("button", name="Regenerate secret").click()
    new_secret = page.get_by_label("Secret key").input_value()
    assert new_secret.startswith("sk-") and new_secret != made["key"]
    old = openai.OpenAI(api_key=made["key"], base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        old.models.list()
    page.get_by_role("link", name="Go to the key's page").click()

    # Delete: a confirmation page first; Cancel keeps the key.
    page.get_by_role("link", name="Delete…").click()
    expect(page.get_by_role("heading", name="Delete key")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    expect(page.get_by_role("heading", name=re.compile("Key edited"))).to_be_visible()
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete the key").click()
    expect(page.get_by_role("status")).to_have_text("Deleted.")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key=new_secret, base_url=f"{gateway}/v1",
                      max_retries=0).models.list()
    with admin(gateway) as api:
        assert api.get("/key/info", params={"key": made["token"]}).status_code == 404


def test_models_page(page, gateway: str) -> None:
    login(page)
    page.get_by_role("link", name="Models").click()
    expect(page.locator("#models")).to_contain_text("qwen-local")
    expect(page.locator("#models")).to_contain_text("config.yaml")
    page.get_by_role("link", name="Add a model").click()
    page.get_by_label("Public model name").fill("ui-db-model")
    page.get_by_label("Upstream model").fill("openai/qwen-local")
    page.get_by_label("API base").fill("http://127.0.0.1:9/v1")
    page.get_by_label("API key").fill("sk-upstream-credential-42")
    page.get_by_label("Input price per token (USD)").fill("0.000002")
    page.get_by_label("Output price per token (USD)").fill("0.000004")
    page.get_by_role("button", name="Add model").click()
    expect(page.get_by_role("status")).to_contain_text("Model added")
    row = page.locator("#models tbody tr", has_text="ui-db-model")
    expect(row).to_contain_text("database")
    expect(row).to_contain_text("2.0000")          # $ per million input tokens
    assert "sk-upstream-credential-42" not in page.content()
    shoot(page, "models")
    row.get_by_role("link", name="Edit").click()
    assert page.get_by_label("API key").input_value() == ""     # write-only
    assert "sk-upstream-credential-42" not in page.content()
    page.get_by_label("Public model name").fill("ui-db-model-2")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#models")).to_contain_text("ui-db-model-2")
    with admin(gateway) as api:
        names = [m["model_name"] for m in api.get("/model/info").json()["data"]]
        assert "ui-db-model-2" in names
    page.locator("#models tbody tr", has_text="ui-db-model-2").get_by_role(
        "link", name="Delete…").click()
    page.get_by_role("button", name="Delete the model").click()
    expect(page.locator("#models")).not_to_contain_text("ui-db-model")


def test_times_in_the_viewers_zone(browser, gateway: str) -> None:
    """ui.js tells the server the browser's zone; pages count days and show times in it."""
    context = browser.new_context(viewport={"width": 1280, "height": 800},
                                  timezone_id="Asia/Tokyo", base_url=gateway)
    try:
        page = context.new_page()
        login(page)
        expect(page.locator("footer")).to_contain_text("Times in Asia/Tokyo")
        page.goto("/ui/logs")
        expect(page.locator("footer")).to_contain_text("Times in Asia/Tokyo")
    finally:
        context.close()


def test_a_failed_requests_detail(page, gateway: str) -> None:
    """The request's own attempts and error as its ledger row keeps them, what the status
    means, and the failing deployment's state and last error on this process now."""
    with admin(gateway) as api:
        made = api.post("/model/new", json={"model_name": "ui-broken", "litellm_params": {
            "model": "openai/qwen-local", "api_base": "http://127.0.0.1:9/v1",
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}})
        assert made.status_code == 200, made.text
    client = openai.OpenAI(api_key=MASTER_KEY, base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="ui-broken", max_tokens=8,
                                       messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502, failed.value.response.text
    request_id = failed.value.response.headers["x-request-id"]     # the ledger's id
    attempts = failed.value.response.headers["x-faregate-attempts"]
    login(page)
    for _ in range(40):             # the ledger writes rows in batches
        if page.goto(f"/ui/logs/{request_id}").status == 200:
            break
        page.wait_for_timeout(250)
    expect(page.get_by_role("heading", name=f"Request {request_id}")).to_be_visible()
    expect(page.locator("#status-means")).to_contain_text("nothing is charged")
    expect(page.locator("#attempts")).to_contain_text(attempts)
    expect(page.locator("#attempts")).not_to_contain_text("not recorded")
    error = page.locator("#upstream-error")
    # what the caller got: type/code, then the start of the message
    expect(error).to_contain_text("upstream_error/upstream_unreachable: Cannot reach the "
                                  "upstream for model 'ui-broken' at http://127.0.0.1:9/v1")
    expect(error).to_contain_text("this deployment now")
    expect(error).to_contain_text("last error")
    expect(page.locator("dl.facts")).to_contain_text("127.0.0.1:9")

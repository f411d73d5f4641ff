"""The UI's security and access in Chromium: a virtual key's self-service view and nothing else,
escaping (XSS), CSRF, the session cookie's flags, logout; keyboard use and a phone's width."""

from __future__ import annotations

import base64
import re

import httpx
import openai
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect
from support import MASTER_KEY
from ui.browsing import admin, login, shoot

from faregate.ui.render import dollars

XSS_ALIAS = "<script>alert(1)</script>"
XSS_ALIAS_2 = '"><img src=x onerror=alert(2)>'


def _call(gateway: str, key: str, n: int = 1) -> list[str]:
    client = openai.OpenAI(api_key=key, base_url=f"{gateway}/v1", max_retries=0)
    ids = []
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model="qwen-local", messages=[{"role": "user", "content": f"hi {i}"}],
            max_tokens=8)
        ids.append(raw.headers["x-litellm-call-id"])
    return ids


def _csrf(page) -> str:
    return page.locator('input[name="csrf"]').first.get_attribute("value")


def test_virtual_key_sees_its_own_usage_and_nothing_else(page, gateway: str) -> None:
    with admin(gateway) as api:
        mine = api.post("/key/generate", json={"key_alias": "self-service", "max_budget": 1,
                                               "rpm_limit": 60}).json()
        other = api.post("/key/generate", json={"key_alias": "someone-else"}).json()
    mine_ids = _call(gateway, mine["key"], 2)
    other_ids = _call(gateway, other["key"])

    login(page, mine["key"])
    expect(page).to_have_url(re.compile(r"/ui/me$"))
    expect(page.get_by_role("heading", name="My key: self-service")).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link")).to_have_text(["My key"])
    # Its requests reach the ledger in batches: reload until both show.
    for _ in range(40):
        if page.locator("#recent tbody tr").count() == 2 and "No requests" not in \
                page.locator("#recent").inner_text():
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(page.locator("#recent tbody tr")).to_have_count(2)
    with admin(gateway) as api:
        spent = api.get("/key/info", params={"key": mine["token"]}).json()["info"]["spend"]
    assert spent > 0
    expect(page.locator("#remaining")).to_have_text(dollars(10**9 - round(spent * 10**9)))
    expect(page.locator("dl.facts")).to_contain_text("60 requests/min")
    assert "someone-else" not in page.content()
    shoot(page, "my-key")

    # Every admin page, another key's page and another key's request: 403, nothing shown.
    for path in ["/ui/overview", "/ui/keys", f"/ui/keys/{other['token']}", "/ui/keys/new",
                 "/ui/models", "/ui/usage", "/ui/usage.csv", "/ui/logs",
                 f"/ui/logs/{other_ids[0]}", f"/ui/logs/{mine_ids[0]}",
                 "/ui/logs/tail?after=2020-01-01T00:00:00"]:
        response = page.goto(path)
        assert response is not None and response.status == 403, (path, response)
        assert "someone-else" not in page.content(), path
    # Nor may it change anything, even with its own session's valid CSRF token.
    page.goto("/ui/me")
    refused = page.request.post("/ui/keys/new", form={"csrf": _csrf(page),
                                                      "key_alias": "made-by-a-key"})
    assert refused.status == 403
    refused = page.request.post(f"/ui/keys/{other['token']}/block",
                                form={"csrf": _csrf(page), "blocked": "1"})
    assert refused.status == 403
    with admin(gateway) as api:
        assert api.get("/key/info", params={"key": other["token"]}).json()["info"][
            "blocked"] is False

    # Deleted by the admin: the session ends at its next page.
    with admin(gateway) as api:
        api.post("/key/delete", json={"keys": [mine["token"]]}).raise_for_status()
    page.goto("/ui/me")
    expect(page).to_have_url(re.compile(r"/ui/login"))


def test_stored_markup_shows_as_text(page, gateway: str) -> None:
    with admin(gateway) as api:
        made = api.post("/key/generate", json={"key_alias": XSS_ALIAS}).json()
        api.post("/key/generate", json={"key_alias": XSS_ALIAS_2}).raise_for_status()
    _call(gateway, made["key"])
    login(page)
    response = page.goto("/ui/keys")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    expect(page.get_by_role("link", name=XSS_ALIAS, exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=XSS_ALIAS_2, exact=True)).to_be_visible()
    assert page.locator("#keys img").count() == 0
    page.get_by_role("link", name=XSS_ALIAS, exact=True).click()
    expect(page.get_by_role("heading", name=f"Key {XSS_ALIAS}")).to_be_visible()
    page.goto("/ui/logs")
    expect(page.locator("#logs")).to_contain_text(XSS_ALIAS)
    # the search box echoes the query as a value, not as markup
    page.goto("/ui/keys?q=" + httpx.QueryParams({"q": XSS_ALIAS_2})["q"])
    expect(page.get_by_label("Search")).to_have_value(XSS_ALIAS_2)
    assert page.locator("img").count() == 0
    # (the page fixture fails the test if any alert() ran)


def test_csrf(page, gateway: str) -> None:
    login(page)
    page.goto("/ui/keys/new")
    token = _csrf(page)
    attempts = {
        "no token": page.request.post("/ui/keys/new", form={"key_alias": "csrf-none"}),
        "wrong token": page.request.post("/ui/keys/new", form={"csrf": "x" * 32,
                                                               "key_alias": "csrf-wrong"}),
        "another site": page.request.post("/ui/keys/new", form={"csrf": token,
                                                                "key_alias": "csrf-origin"},
                                          headers={"Origin": "http://evil.example"}),
        "not a form": page.request.post("/ui/keys/new", data='{"key_alias": "csrf-json"}',
                                        headers={"content-type": "application/json"}),
    }
    for name, response in attempts.items():
        assert response.status == 403, name
        assert "csrf-" not in response.text(), name
    ok = page.request.post("/ui/keys/new", form={"csrf": token, "key_alias": "csrf-right"})
    assert ok.status == 200 and "Key created" in ok.text()
    with admin(gateway) as api:
        listed = api.get("/key/list", params={"return_full_object": "true",
                                              "size": 1000}).json()["keys"]
    aliases = {k["key_alias"] for k in listed}
    assert "csrf-right" in aliases
    assert not aliases & {"csrf-none", "csrf-wrong", "csrf-origin", "csrf-json"}
    # Logging out needs the token too; without it the session stays.
    assert page.request.post("/ui/logout", form={}).status == 403
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def test_session_cookie_and_logout(page, gateway: str) -> None:
    page.goto("/ui/login")
    page.get_by_label("Key").fill("sk-not-a-real-key-0000")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Invalid API key")
    login(page)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "faregate_ui"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False and cookie["path"] == "/ui"          # plain http here
    body = cookie["value"].split(".")[0]
    decoded = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    assert MASTER_KEY not in cookie["value"] and MASTER_KEY not in decoded
    assert MASTER_KEY not in page.content() and MASTER_KEY not in page.url
    # Behind TLS (a proxy saying so): Secure.
    behind_tls = httpx.get(f"{gateway}/ui/login", headers={"X-Forwarded-Proto": "https"})
    assert "secure" in behind_tls.headers["set-cookie"].lower()
    assert "secure" not in httpx.get(f"{gateway}/ui/login").headers["set-cookie"].lower()
    # A cookie changed by hand is no session.
    page.context.add_cookies([{**cookie, "value": cookie["value"][:-4] + "AAAA"}])
    page.goto("/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    login(page)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    page.goto("/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fkeys"))
    # ... and logging in again goes back where it was going.
    page.get_by_label("Key").fill(MASTER_KEY)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/ui/keys$"))
    # `next` never leads off the UI.
    page.context.clear_cookies()
    page.goto("/ui/login?next=//evil.example/x")
    page.get_by_label("Key").fill(MASTER_KEY)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/ui/overview$"))


# Waits in the keyboard test: a loaded box can take seconds per page (login, two redirects,
# the overview), longer than expect()'s 5 s default; it waits for conditions, never sleeps.
SLOW_MS = 60_000
FOCUSED = """() => { const e = document.activeElement;
  if (!e || e === document.body) return "nothing (the body)";
  return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + " '" +
    (e.textContent || e.value || "").trim().slice(0, 40) + "'"; }"""
# The elements that stick out past the viewport's right edge, widest first.
OVERFLOWING = """() => [...document.querySelectorAll("body *")]
  .map(e => [e, e.getBoundingClientRect().right])
  .filter(([e, right]) => right > window.innerWidth + 0.5
          && !e.closest(".scroll"))
  .sort((a, b) => b[1] - a[1]).slice(0, 3)
  .map(([e, right]) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
       (typeof e.className === "string" && e.className ? "." + e.className : "") +
       " right=" + Math.round(right))"""


def _seen(page) -> str:
    """What the page showed, for a failure's message."""
    main = page.locator("main").inner_text(timeout=SLOW_MS) if page.locator("main").count() \
        else ""
    return f"at {page.url}, focus on {page.evaluate(FOCUSED)}, page says {main[:200]!r}"


def _wait_url(page, pattern: str) -> None:
    try:
        page.wait_for_url(re.compile(pattern), timeout=SLOW_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"never reached {pattern}: {_seen(page)}") from None


def _tab_to(page, text: str, presses: int) -> None:
    for _ in range(presses):
        page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == text, f"{presses} Tab(s) focused {page.evaluate(FOCUSED)}, not " \
                            f"{text!r}: {_seen(page)}"


def test_keyboard_and_phone_width(page, gateway: str) -> None:
    page.goto("/ui/login")
    # The key field has the focus (autofocus: applied at the page's first rendering, which a
    # loaded box may delay past the load event: wait for it rather than type into nothing).
    expect(page.get_by_label("Key")).to_be_focused(timeout=SLOW_MS)
    page.keyboard.type(MASTER_KEY)
    page.keyboard.press("Enter")
    _wait_url(page, r".*/ui/overview$")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=SLOW_MS)
    _tab_to(page, "Skip to content", 1)
    _tab_to(page, "Overview", 2)            # the brand link, then the first nav link
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    _wait_url(page, r".*/ui/keys$")
    # A phone's width: the page itself never scrolls sideways (wide tables scroll inside).
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ["/ui/overview", "/ui/keys", "/ui/models", "/ui/usage", "/ui/logs"]:
        page.goto(path, timeout=SLOW_MS)
        width = page.evaluate("document.documentElement.scrollWidth")
        viewport = page.evaluate("window.innerWidth")
        assert width <= 390, (f"{path} is {width} px wide at a {viewport} px viewport; "
                              f"sticking out: {page.evaluate(OVERFLOWING)}")

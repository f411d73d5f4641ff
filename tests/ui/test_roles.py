"""Role-aware sessions in Chromium: a virtual key acts in the UI with its user's `user_role`, as
the admin API decides (api/admin_auth.py ROUTES): proxy_admin gets the admin pages,
proxy_admin_viewer reads them with no way to change anything (a forged POST is 403),
internal_user keeps the self-service page; a demotion holds at the next page. And failed
logins from one address are refused (429) without refusing anyone else.

The module has a gateway of its own: the login flood leaves state in its process."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect
from support import MASTER_KEY, in_thread, stop
from ui.browsing import admin, login, start_ui_gateway

from faregate.storage import migrate
from faregate.ui.throttle import LIMIT

ADMIN_PAGES = ["/ui/overview", "/ui/keys", "/ui/keys/new", "/ui/models", "/ui/usage",
               "/ui/logs", "/ui/teams", "/ui/users", "/ui/organizations", "/ui/customers",
               "/ui/budgets"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("ui-roles")
    url = f"sqlite:///{tmp / 'faregate.db'}"
    in_thread(migrate.upgrade, url)
    served = start_ui_gateway(tmp, url, mock_upstream)
    yield served.base_url
    stop(served.proc)


def _user_key(gateway: str, user_id: str, role: str) -> dict:
    """A user with `role` and a key of theirs (the key's JSON: key, token)."""
    with admin(gateway) as api:
        api.post("/user/new", json={"user_id": user_id, "user_role": role}).raise_for_status()
        made = api.post("/key/generate", json={"user_id": user_id,
                                               "key_alias": f"{user_id}-key"})
        made.raise_for_status()
        return made.json()


def _csrf(page) -> str:
    return page.locator('input[name="csrf"]').first.get_attribute("value")


def _nav(page) -> list[str]:
    return page.get_by_role("navigation", name="Main").get_by_role("link").all_inner_texts()


def test_proxy_admin_key_gets_the_admin_ui(page, gateway: str) -> None:
    mine = _user_key(gateway, "r-admin", "proxy_admin")
    login(page, mine["key"])
    expect(page).to_have_url(re.compile(r"/ui/overview$"))
    assert "Keys" in _nav(page) and "Budgets" in _nav(page), _nav(page)
    expect(page.locator(".who")).to_contain_text("proxy_admin")
    # It may change things too: a key made through the form, as /key/generate would.
    page.get_by_role("link", name="Keys").click()
    page.get_by_role("link", name="New key").click()
    page.get_by_label("Alias").fill("made-by-admin-key")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key created")).to_be_visible()


def test_viewer_reads_everything_and_changes_nothing(page, gateway: str) -> None:
    viewer = _user_key(gateway, "r-viewer", "proxy_admin_viewer")
    with admin(gateway) as api:
        target = api.post("/key/generate", json={"key_alias": "viewed-key"}).json()
        api.post("/team/new", json={"team_id": "r-team"}).raise_for_status()
    login(page, viewer["key"])
    expect(page).to_have_url(re.compile(r"/ui/overview$"))
    for path in ["/ui/keys", "/ui/teams", "/ui/models", "/ui/budgets", "/ui/logs",
                 "/ui/usage", f"/ui/keys/{target['token']}", "/ui/teams/r-team"]:
        response = page.goto(path)
        assert response is not None and response.status == 200, (path, response)
        # No way to change anything is offered...
        for name in ["New key", "New team", "Add a model", "New budget", "Edit",
                     "Delete…"]:
            assert page.get_by_role("link", name=name, exact=True).count() == 0, (path, name)
        for name in ["Block", "Unblock", "Regenerate secret", "Add member"]:
            assert page.get_by_role("button", name=name, exact=True).count() == 0, (path, name)
    page.goto(f"/ui/keys/{target['token']}")
    expect(page.get_by_role("heading", name="Key viewed-key")).to_be_visible()
    # ... the forms' pages are refused...
    for path in ["/ui/keys/new", f"/ui/keys/{target['token']}/edit", "/ui/teams/new",
                 "/ui/models/new", "/ui/budgets/new"]:
        response = page.goto(path)
        assert response is not None and response.status == 403, (path, response)
    # ... and so is a forged POST, even with the session's own CSRF token.
    page.goto("/ui/keys")
    token = _csrf(page)
    forged = {
        "/ui/keys/new": {"key_alias": "made-by-viewer"},
        f"/ui/keys/{target['token']}/block": {"blocked": "1"},
        f"/ui/keys/{target['token']}/delete": {},
        "/ui/teams/new": {"team_id": "viewer-team"},
        "/ui/teams/r-team/members": {"user_id": "r-viewer", "role": "admin"},
    }
    for path, form in forged.items():
        refused = page.request.post(path, form={"csrf": token, **form})
        assert refused.status == 403, (path, refused.status)
        assert "Not allowed" in refused.text(), path
    with admin(gateway) as api:
        info = api.get("/key/info", params={"key": target["token"]}).json()["info"]
        assert info["blocked"] is False
        assert api.get("/team/info", params={"team_id": "viewer-team"}).status_code == 404
        aliases = {k["key_alias"] for k in api.get("/key/list", params={
            "return_full_object": "true", "size": 1000}).json()["keys"]}
        assert "made-by-viewer" not in aliases


def test_internal_user_keeps_the_self_service_view(page, gateway: str) -> None:
    mine = _user_key(gateway, "r-internal", "internal_user")
    with admin(gateway) as api:
        api.post("/key/generate", json={"user_id": "r-internal",
                                        "key_alias": "r-internal-second"}).raise_for_status()
        api.post("/key/generate", json={"key_alias": "not-r-internals"}).raise_for_status()
    login(page, mine["key"])
    expect(page).to_have_url(re.compile(r"/ui/me$"))
    assert _nav(page) == ["My key"]
    # Its user's keys, as /key/list lists them for it: its own, no one else's.
    own = page.locator("#own-keys tbody tr")
    expect(own).to_have_count(2)
    expect(page.locator("#own-keys")).to_contain_text("r-internal-key (this key)")
    expect(page.locator("#own-keys")).to_contain_text("r-internal-second")
    assert "not-r-internals" not in page.content()
    for path in ADMIN_PAGES:
        response = page.goto(path)
        assert response is not None and response.status == 403, (path, response)
    refused = page.request.post("/ui/keys/new", form={"csrf": _csrf(page),
                                                      "key_alias": "made-by-internal"})
    assert refused.status == 403


def test_a_demotion_holds_at_the_next_page(page, gateway: str) -> None:
    mine = _user_key(gateway, "r-demoted", "proxy_admin")
    login(page, mine["key"])
    assert page.goto("/ui/keys").status == 200
    with admin(gateway) as api:
        api.post("/user/update", json={"user_id": "r-demoted",
                                        "user_role": "internal_user"}).raise_for_status()
    response = page.goto("/ui/keys")
    assert response is not None and response.status == 403
    assert _nav(page) == ["My key"]
    # A key's session holds no role of its own: promoted again, the next page opens.
    with admin(gateway) as api:
        api.post("/user/update", json={"user_id": "r-demoted",
                                        "user_role": "proxy_admin_viewer"}).raise_for_status()
    response = page.goto("/ui/keys")
    assert response is not None and response.status == 200
    assert page.get_by_role("link", name="New key").count() == 0


def _failed_login(client: httpx.Client, key: str) -> httpx.Response:
    form = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None, form.text
    return client.post("/ui/login", data={"csrf": csrf.group(1), "key": key})


def test_a_login_flood_is_refused_for_its_address_only(page, gateway: str) -> None:
    # The flood comes from 127.0.0.2 (loopback too); the browser is on 127.0.0.1.
    flood = httpx.Client(base_url=gateway, timeout=10,
                         transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    with flood:
        for i in range(LIMIT):
            answered = _failed_login(flood, f"sk-guess-{i:04d}")
            assert answered.status_code == 401, (i, answered.status_code)
        refused = _failed_login(flood, MASTER_KEY)     # even the right key: not looked at
        assert refused.status_code == 429, refused.status_code
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "Too many failed logins" in refused.text
        assert flood.get("/ui/overview").status_code == 303        # not logged in
    # Anyone else logs in as usual.
    login(page)
    expect(page).to_have_url(re.compile(r"/ui/overview$"))
    page.goto("/ui/login")
    expect(page).to_have_url(re.compile(r"/ui/overview$"))

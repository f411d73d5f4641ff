"""/user/* in LiteLLM's shapes (SQLite and Postgres), and that a user's budget change reaches
admission at once."""

from __future__ import annotations

from typing import Any

from api.conftest import RunningGateway
from api.openai_shape import openai_error


async def ok(gw: RunningGateway, method: str, path: str, **kwargs: Any) -> Any:
    resp = await gw.admin(method, path, **kwargs)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def error(gw: RunningGateway, status: int, method: str, path: str,
                **kwargs: Any) -> dict[str, Any]:
    resp = await gw.admin(method, path, **kwargs)
    assert resp.status_code == status, resp.text
    return openai_error(resp.status_code, resp.json())


async def test_new_info_update_delete(gateway: RunningGateway) -> None:
    made = await ok(gateway, "POST", "/user/new", json={
        "user_id": "alice", "user_email": "alice@example.com", "user_role": "internal_user",
        "max_budget": 10, "budget_duration": "30d", "models": ["qwen-local"],
        "tpm_limit": 100, "rpm_limit": 5, "max_parallel_requests": 2,
        "metadata": {"dept": "search"}})
    assert made["user_id"] == "alice" and made["max_budget"] == 10 and made["key"] is None
    assert made["budget_reset_at"] and made["spend"] == 0 and made["models"] == ["qwen-local"]
    generated = await ok(gateway, "POST", "/user/new", json={})
    assert generated["user_id"] and generated["user_role"] == "internal_user"

    info = await ok(gateway, "GET", "/user/info", params={"user_id": "alice"})
    assert set(info) == {"user_id", "user_info", "keys", "teams"}
    assert info["user_info"]["user_email"] == "alice@example.com" and info["keys"] == []

    updated = await ok(gateway, "POST", "/user/update", json={
        "user_id": "alice", "max_budget": 20, "user_role": "proxy_admin_viewer"})
    assert updated["data"]["max_budget"] == 20
    assert updated["data"]["user_role"] == "proxy_admin_viewer"
    by_email = await ok(gateway, "POST", "/user/update", json={
        "user_email": "alice@example.com", "rpm_limit": 7})
    assert by_email["user_id"] == "alice" and by_email["data"]["rpm_limit"] == 7

    key = await gateway.new_key(user_id="alice")
    other = await gateway.new_key()
    gone = await ok(gateway, "POST", "/user/delete", json={"user_ids": ["alice", "nobody"]})
    assert gone == {"deleted_users": ["alice"]}
    await error(gateway, 404, "GET", "/user/info", params={"user_id": "alice"})
    # the user's keys go with it, as LiteLLM's /user/delete does; others stay
    await error(gateway, 404, "GET", "/key/info", params={"key": key})
    await ok(gateway, "GET", "/key/info", params={"key": other})


async def test_list_pages_and_filters(gateway: RunningGateway) -> None:
    for i in range(5):
        await ok(gateway, "POST", "/user/new", json={
            "user_id": f"u{i}", "user_role": "proxy_admin" if i == 0 else "internal_user",
            "user_email": f"u{i}@example.com"})
    first = await ok(gateway, "GET", "/user/list", params={"page": 1, "page_size": 2})
    assert (first["total"], first["page"], first["page_size"], first["total_pages"]) == (
        5, 1, 2, 3)
    third = await ok(gateway, "GET", "/user/list", params={"page": 3, "page_size": 2})
    assert [u["user_id"] for u in third["users"]] == ["u4"]
    admins = await ok(gateway, "GET", "/user/list", params={"role": "proxy_admin"})
    assert [u["user_id"] for u in admins["users"]] == ["u0"]
    some = await ok(gateway, "GET", "/user/list", params={"user_ids": "u1,u3,nobody"})
    assert [u["user_id"] for u in some["users"]] == ["u1", "u3"]
    email = await ok(gateway, "GET", "/user/list", params={"user_email": "u2@example.com"})
    assert [u["user_id"] for u in email["users"]] == ["u2"]
    await error(gateway, 400, "GET", "/user/list", params={"page_size": 101})
    await error(gateway, 400, "GET", "/user/list", params={"page": 0})


async def test_errors(gateway: RunningGateway) -> None:
    await ok(gateway, "POST", "/user/new", json={"user_id": "bob"})
    dup = await error(gateway, 400, "POST", "/user/new", json={"user_id": "bob"})
    assert dup["param"] == "user_id"
    role = await error(gateway, 400, "POST", "/user/new", json={"user_role": "king"})
    assert role["param"] == "user_role"
    period = await error(gateway, 400, "POST", "/user/new", json={"budget_duration": "1x"})
    assert period["param"] == "budget_duration"
    await error(gateway, 400, "POST", "/user/new", json={"max_budget": -1})
    await error(gateway, 400, "POST", "/user/new", json={"rpm_limit": -1})
    await error(gateway, 400, "POST", "/user/new", json={"no_such_field": 1})
    await error(gateway, 400, "POST", "/user/new", json={"budget_id": "no-such-budget"})
    key = await error(gateway, 400, "POST", "/user/new", json={"auto_create_key": True})
    assert key["code"] == "field_not_supported"
    await error(gateway, 404, "GET", "/user/info", params={"user_id": "nobody"})
    await error(gateway, 400, "GET", "/user/info")
    await error(gateway, 404, "POST", "/user/update", json={"user_id": "nobody",
                                                             "max_budget": 1})
    await error(gateway, 404, "POST", "/user/update", json={"user_email": "no@x.y"})
    await error(gateway, 400, "POST", "/user/update", json={"max_budget": 1})
    await error(gateway, 404, "POST", "/user/delete", json={"user_ids": ["nobody"]})
    await error(gateway, 400, "POST", "/user/delete", json={"user_ids": []})
    virtual = await gateway.new_key()
    resp = await gateway.http.get("/user/list", headers={"Authorization": f"Bearer {virtual}"})
    assert resp.status_code == 403, resp.text

"""The /key/* lifecycle in LiteLLM's shapes, and that every change takes effect at once."""

from __future__ import annotations

from api.conftest import RunningGateway
from support import MASTER_KEY, chat


async def call(gw: RunningGateway, key: str, model: str = "qwen-local") -> int:
    resp = await gw.http.post("/v1/chat/completions", json={**chat(), "model": model},
                              headers={"Authorization": f"Bearer {key}"})
    return resp.status_code


async def test_generate_returns_the_key_once_and_stores_only_its_hash(
        gateway: RunningGateway) -> None:
    resp = await gateway.admin("POST", "/key/generate", json={
        "models": ["qwen-local"], "max_budget": 5, "key_alias": "svc-a",
        "metadata": {"team": "search"}, "tpm_limit": 1000, "rpm_limit": 10,
        "max_parallel_requests": 2, "budget_duration": "30d", "duration": "7d"})
    assert resp.status_code == 200
    body = resp.json()
    key = body["key"]
    assert key.startswith("sk-") and len(key) > 20
    assert body["token"] != key and len(body["token"]) == 64
    assert (body["max_budget"], body["key_alias"], body["metadata"]) == (5, "svc-a",
                                                                        {"team": "search"})
    assert (body["tpm_limit"], body["rpm_limit"], body["max_parallel_requests"]) == (1000, 10, 2)
    assert body["expires"] and body["budget_reset_at"]
    info = (await gateway.admin("GET", "/key/info", params={"key": key})).json()
    assert "key" not in info["info"] and key not in str(info)
    listed = (await gateway.admin("GET", "/key/list")).json()
    assert listed["keys"] == [body["token"]] and listed["total_count"] == 1
    assert key not in str(listed)


async def test_update_takes_effect_on_the_next_request(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    assert await call(gateway, key, "other-model") == 401
    resp = await gateway.admin("POST", "/key/update", json={
        "key": key, "models": ["qwen-local", "other-model"], "max_budget": 2})
    assert resp.status_code == 200 and resp.json()["max_budget"] == 2
    assert await call(gateway, key, "other-model") == 200
    resp = await gateway.admin("POST", "/key/update", json={"key": key, "max_budget": 0})
    assert await call(gateway, key) == 429


async def test_regenerate_keeps_settings_and_spend_and_kills_the_old_key(
        gateway: RunningGateway) -> None:
    old = await gateway.new_key(max_budget=1, key_alias="rotate-me")
    assert await call(gateway, old) == 200
    await gateway.app.ledger.flush()
    resp = await gateway.admin("POST", "/key/regenerate", json={"key": old})
    assert resp.status_code == 200
    new = resp.json()["key"]
    assert new != old and resp.json()["key_alias"] == "rotate-me"
    assert await call(gateway, old) == 401
    assert await call(gateway, new) == 200
    await gateway.app.ledger.flush()
    info = (await gateway.admin("GET", "/key/info", params={"key": new})).json()["info"]
    assert info["spend"] > 0
    rows = (await gateway.admin("GET", "/spend/logs", params={"api_key": new})).json()
    assert len(rows) == 2
    path_style = await gateway.admin("POST", f"/key/{new}/regenerate")
    assert path_style.status_code == 200 and await call(gateway, new) == 401


async def test_list_paginates_and_can_return_objects(gateway: RunningGateway) -> None:
    for i in range(5):
        await gateway.new_key(key_alias=f"k{i}")
    page = (await gateway.admin("GET", "/key/list", params={"page": 2, "size": 2})).json()
    assert (page["total_count"], page["total_pages"], len(page["keys"])) == (5, 3, 2)
    full = (await gateway.admin("GET", "/key/list", params={
        "return_full_object": "true", "size": 10})).json()
    assert sorted(k["key_alias"] for k in full["keys"]) == [f"k{i}" for i in range(5)]


async def test_delete_by_alias(gateway: RunningGateway) -> None:
    key = await gateway.new_key(key_alias="gone")
    resp = await gateway.admin("POST", "/key/delete", json={"key_aliases": ["gone"]})
    assert resp.status_code == 200 and len(resp.json()["deleted_keys"]) == 1
    assert await call(gateway, key) == 401


async def test_custom_key_value(gateway: RunningGateway) -> None:
    resp = await gateway.admin("POST", "/key/generate", json={"key": "sk-my-own-key-1234"})
    assert resp.json()["key"] == "sk-my-own-key-1234"
    assert await call(gateway, "sk-my-own-key-1234") == 200
    again = await gateway.admin("POST", "/key/generate", json={"key": "sk-my-own-key-1234"})
    assert again.status_code == 400


async def test_spend_logs_filters(gateway: RunningGateway) -> None:
    a, b = await gateway.new_key(), await gateway.new_key()
    for key in (a, a, b):
        await call(gateway, key)
    await gateway.app.ledger.flush()
    all_rows = (await gateway.admin("GET", "/spend/logs")).json()
    assert len(all_rows) == 3
    assert len((await gateway.admin("GET", "/spend/logs", params={"api_key": a})).json()) == 2
    one = all_rows[0]["request_id"]
    by_id = (await gateway.admin("GET", "/spend/logs", params={"request_id": one})).json()
    assert [r["request_id"] for r in by_id] == [one]
    today = all_rows[0]["startTime"][:10]
    ranged = await gateway.admin("GET", "/spend/logs", params={"start_date": today,
                                                               "end_date": today})
    assert len(ranged.json()) == 3
    paged = await gateway.admin("GET", "/spend/logs", params={"page": 2, "page_size": 2})
    assert len(paged.json()) == 1
    total = (await gateway.admin("GET", "/global/spend")).json()["spend"]
    assert abs(total - sum(r["spend"] for r in all_rows)) < 1e-12


async def test_health_routes_need_no_auth(gateway: RunningGateway) -> None:
    assert (await gateway.http.get("/health/liveliness")).status_code == 200
    ready = await gateway.http.get("/health/readiness")
    assert ready.status_code == 200 and ready.json()["db"] == "connected"


async def test_the_master_key_is_never_a_virtual_key(gateway: RunningGateway) -> None:
    """A copy of the master key would share its hash, so the master key's calls (never
    refused) would be charged to the copy: /key/generate and both regenerates refuse it."""
    key = await gateway.new_key(max_budget=1)
    for path, body in [("/key/generate", {"key": MASTER_KEY}),
                       ("/key/regenerate", {"key": key, "new_key": MASTER_KEY}),
                       (f"/key/{key}/regenerate", {"new_key": MASTER_KEY})]:
        resp = await gateway.admin("POST", path, json=body)
        error = resp.json()["error"]
        assert resp.status_code == 400, (path, resp.text)
        assert error["code"] == "master_key_reused" and "master key" in error["message"]
        assert MASTER_KEY not in resp.text
    assert await call(gateway, key) == 200         # the key was not re-keyed
    assert await call(gateway, MASTER_KEY) == 200
    await gateway.app.ledger.flush()
    listed = (await gateway.admin("GET", "/key/list",
                                  params={"return_full_object": "true"})).json()
    assert listed["total_count"] == 1
    [only] = listed["keys"]
    assert only["key_name"] == f"sk-...{key[-4:]}"
    rows = (await gateway.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert len(rows) == 1, "the master key's call was charged to a virtual key"

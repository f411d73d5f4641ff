"""Roles against `faregate serve` as a process (issue 14 part 5): a proxy_admin user's key
runs the admin API as LiteLLM's UI does (teams, users, members, keys), an internal_user's key
calls models and manages only its own keys, and is refused everything else."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
from e2e.conftest import ServedGateway
from support import MASTER_KEY


def as_key(http: httpx.Client, key: str, method: str, path: str, status: int = 200,
           **kwargs: Any) -> Any:
    resp = http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)
    assert resp.status_code == status, (path, resp.text)
    return resp.json()


def own_rows(http: httpx.Client, key: str) -> list[dict[str, Any]]:
    """The caller's /spend/logs once its request's row reached the database (the ledger
    writes off the request path, in batches)."""
    deadline = time.monotonic() + 10
    while True:
        rows: list[dict[str, Any]] = as_key(http, key, "GET", "/spend/logs")
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_a_proxy_admin_key_manages_and_an_internal_user_is_refused(
        serve: ServedGateway) -> None:
    with httpx.Client(base_url=serve.base_url, timeout=30) as http:
        as_key(http, MASTER_KEY, "POST", "/user/new", json={"user_id": "ops",
                                                             "user_role": "proxy_admin"})
        ops = as_key(http, MASTER_KEY, "POST", "/key/generate",
                     json={"user_id": "ops"})["key"]

        # the proxy_admin's key, not the master key, builds the rest
        as_key(http, ops, "POST", "/team/new", json={"team_id": "search", "max_budget": 5,
                                                     "models": ["qwen-local"]})
        as_key(http, ops, "POST", "/user/new", json={"user_id": "dev",
                                                     "user_role": "internal_user"})
        as_key(http, ops, "POST", "/team/member_add", json={
            "team_id": "search", "member": {"user_id": "dev", "role": "user"}})
        dev = as_key(http, ops, "POST", "/key/generate", json={
            "user_id": "dev", "team_id": "search", "models": ["qwen-local"]})["key"]
        changed = as_key(http, ops, "POST", "/key/update", json={"key": dev, "rpm_limit": 50})
        assert changed["rpm_limit"] == 50
        team = as_key(http, ops, "GET", "/team/info", params={"team_id": "search"})
        assert [m["user_id"] for m in team["team_memberships"]] == ["dev"]
        assert as_key(http, ops, "GET", "/key/list")["total_count"] == 2

        # the internal_user's key calls the model (the real openai SDK) ...
        client = openai.OpenAI(api_key=dev, base_url=serve.base_url + "/v1", max_retries=0)
        try:
            answer = client.chat.completions.create(
                model="qwen-local", messages=[{"role": "user", "content": "hi"}],
                max_tokens=4)
            assert answer.choices[0].message.content
        finally:
            client.close()
        # ... makes, reads and deletes keys of its own ...
        mine = as_key(http, dev, "POST", "/key/generate", json={"key_alias": "laptop"})
        assert mine["user_id"] == "dev"
        listed = as_key(http, dev, "GET", "/key/list", params={"return_full_object": "true"})
        assert sorted(k["key_alias"] or "" for k in listed["keys"]) == ["", "laptop"]
        as_key(http, dev, "POST", "/key/delete", json={"keys": [mine["key"]]})
        rows = own_rows(http, dev)
        assert len(rows) == 1 and rows[0]["user"] == "dev" and rows[0]["team_id"] == "search"

        # ... and is refused the rest, in LiteLLM's error shape, naming role and route
        for method, path, kwargs in [
                ("POST", "/team/new", {"json": {"team_id": "mine"}}),
                ("POST", "/user/new", {"json": {"user_id": "friend"}}),
                ("POST", "/team/member_add", {"json": {"team_id": "search", "member": {
                    "user_id": "friend", "role": "admin"}}}),
                ("POST", "/key/generate", {"json": {"user_id": "ops"}}),
                ("GET", "/key/info", {"params": {"key": ops}}),
                ("POST", "/key/delete", {"json": {"keys": [ops]}}),
                ("POST", "/key/update", {"json": {"key": dev, "max_budget": 1000}}),
                ("GET", "/global/spend", {})]:
            error = as_key(http, dev, method, path, 403, **kwargs)["error"]
            assert error["type"] == "auth_error" and "internal_user" in error["message"]
            assert path in error["message"], error
        assert as_key(http, MASTER_KEY, "GET", "/user/info", 404,
                      params={"user_id": "friend"})["error"]["code"] == "user_not_found"

        # the proxy_admin's key deletes the internal_user's key: its next call is a 401
        as_key(http, ops, "POST", "/key/delete", json={"keys": [dev]})
        resp = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {dev}"},
                         json={"model": "qwen-local", "max_tokens": 4,
                               "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 401

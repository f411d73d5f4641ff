"""Every error path: OpenAI's error shape, the right status, and nothing charged."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api.conftest import Clock, RunningGateway
from support import MASTER_KEY, chat


def assert_error(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert {"message", "type", "code"} <= set(error)
    assert error["type"] == type_, error
    assert error["message"]
    return dict(error)


async def charged(gw: RunningGateway, key: str) -> float:
    await gw.app.ledger.flush()
    rows = (await gw.admin("GET", "/spend/logs", params={"api_key": key})).json()
    info = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
    assert sum(r["spend"] for r in rows) == pytest.approx(info["total_spend"])
    return float(info["total_spend"])


async def post_chat(gw: RunningGateway, key: str | None, body: Any = None, *,
                    content: bytes | None = None, headers: dict[str, str] | None = None
                    ) -> httpx.Response:
    hdrs = dict(headers or {})
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    if content is not None:
        return await gw.http.post("/v1/chat/completions", content=content, headers=hdrs)
    return await gw.http.post("/v1/chat/completions", json=body or chat(), headers=hdrs)


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "missing_api_key"),
    ({"Authorization": "Basic abc"}, "invalid_auth_header"),
    ({"Authorization": "Bearer"}, "invalid_auth_header"),
    ({"Authorization": "Bearer not-a-faregate-key"}, "invalid_api_key"),
    ({"Authorization": "Bearer sk-unknown-but-well-formed"}, "invalid_api_key"),
])
async def test_bad_credentials_are_401(gateway: RunningGateway, headers: dict[str, str],
                                       code: str) -> None:
    resp = await post_chat(gateway, None, headers=headers)
    assert assert_error(resp, 401, "auth_error")["code"] == code


async def test_blocked_key_is_refused_until_unblocked(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    assert (await gateway.admin("POST", "/key/block", json={"key": key})).status_code == 200
    assert "blocked" in assert_error(await post_chat(gateway, key), 401, "auth_error")["message"]
    assert (await gateway.admin("POST", "/key/unblock", json={"key": key})).status_code == 200
    assert (await post_chat(gateway, key)).status_code == 200


async def test_expired_key_is_refused(gateway: RunningGateway, clock: Clock) -> None:
    key = await gateway.new_key(duration="1h")
    assert (await post_chat(gateway, key)).status_code == 200
    clock.advance(hours=1, seconds=1)
    assert_error(await post_chat(gateway, key), 401, "expired_key")


async def test_deleted_key_is_refused(gateway: RunningGateway) -> None:
    key = await gateway.new_key()
    resp = await gateway.admin("POST", "/key/delete", json={"keys": [key]})
    assert resp.status_code == 200
    assert_error(await post_chat(gateway, key), 401, "auth_error")


async def test_model_outside_the_keys_list(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    resp = await post_chat(gateway, key, {**chat(), "model": "other-model"})
    assert_error(resp, 401, "key_model_access_denied")
    assert await charged(gateway, key) == 0


async def test_unknown_model(gateway: RunningGateway) -> None:
    key = await gateway.new_key(models=[])
    resp = await post_chat(gateway, key, {**chat(), "model": "gpt-nope"})
    assert assert_error(resp, 400, "invalid_request_error")["param"] == "model"


@pytest.mark.parametrize(("content", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"model": "qwen-local"}', "messages"),
    (b'{"model": "qwen-local", "messages": [{"content": "x"}]}', "messages[0]"),
    (b'{"model": "qwen-local", "messages": [{"role": "user", "content": 5}]}',
     "messages[0].content"),
    (b'{"model": "qwen-local", "messages": [{"role": "user", "content": "x"}], '
     b'"max_tokens": -1}', "max_tokens"),
    (b'{"model": "qwen-local", "messages": [{"role": "user", "content": "x"}], '
     b'"stream": "yes"}', "stream"),
    (b'{"model": 7, "messages": []}', "model"),
])
async def test_malformed_bodies_are_400(gateway: RunningGateway, content: bytes,
                                        param: str | None) -> None:
    key = await gateway.new_key(max_budget=1)
    error = assert_error(await post_chat(gateway, key, content=content), 400,
                         "invalid_request_error")
    assert error["param"] == param
    assert await charged(gateway, key) == 0


async def test_oversized_body_is_413(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    huge = chat(content="x" * (gateway.app.settings.max_request_body_bytes + 1))
    assert_error(await post_chat(gateway, key, huge), 413, "invalid_request_error")
    assert await charged(gateway, key) == 0


async def test_budget_exceeded_is_429_and_says_why(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=0.00001)
    error = assert_error(await post_chat(gateway, key), 429, "budget_exceeded")
    assert error["message"].startswith("Budget has been exceeded")
    for figure in ("Key=", "Current cost", "Max budget", "needs at least"):
        assert figure in error["message"]
    assert await charged(gateway, key) == 0


@pytest.mark.parametrize(("model", "status", "type_"), [
    ("broken-model", 502, "upstream_error"),
    ("limited-model", 429, "rate_limit_error"),
    ("unreachable-model", 502, "upstream_error"),
])
async def test_upstream_failures_cost_nothing(gateway: RunningGateway, model: str, status: int,
                                              type_: str) -> None:
    key = await gateway.new_key(models=[model], max_budget=1)
    for stream in (False, True):
        resp = await post_chat(gateway, key, {**chat(), "model": model, "stream": stream})
        assert_error(resp, status, type_)
    assert await charged(gateway, key) == 0
    rows = (await gateway.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert [r["status"] for r in rows] == ["failure", "failure"]


async def test_embeddings_cannot_stream(gateway: RunningGateway) -> None:
    key = await gateway.new_key()
    resp = await gateway.http.post("/v1/embeddings", headers={"Authorization": f"Bearer {key}"},
                                   json={"model": "qwen-local", "input": "x", "stream": True})
    assert assert_error(resp, 400, "invalid_request_error")["param"] == "stream"


async def test_admin_routes_refuse_virtual_keys(gateway: RunningGateway) -> None:
    key = await gateway.new_key()
    auth = {"Authorization": f"Bearer {key}"}
    for method, path, body in [("POST", "/key/generate", {}), ("GET", "/key/list", None),
                               ("POST", "/key/delete", {"keys": [key]}),
                               ("GET", "/global/spend", None)]:
        resp = await gateway.http.request(method, path, json=body, headers=auth)
        assert_error(resp, 403, "auth_error")


async def test_a_key_reads_its_own_info_but_not_anothers(gateway: RunningGateway) -> None:
    mine, theirs = await gateway.new_key(), await gateway.new_key()
    auth = {"Authorization": f"Bearer {mine}"}
    own = await gateway.http.get("/key/info", headers=auth)
    assert own.status_code == 200 and own.json()["info"]["key_name"].endswith(mine[-4:])
    assert_error(await gateway.http.get("/key/info", params={"key": theirs}, headers=auth),
                 403, "auth_error")
    logs = await gateway.http.get("/spend/logs", params={"api_key": theirs}, headers=auth)
    assert_error(logs, 403, "auth_error")


@pytest.mark.parametrize(("body", "param"), [
    ({"max_budget": "lots"}, None),
    ({"max_budget": -1}, None),
    ({"models": ["gpt-nope"]}, "models"),
    ({"budget_duration": "sometimes"}, "budget_duration"),
    ({"duration": "0d"}, "duration"),
    ({"no_such_field": 1}, None),
    ({"key": "not-sk"}, "key"),
])
async def test_bad_key_generate_requests_are_400(gateway: RunningGateway, body: dict[str, Any],
                                                 param: str | None) -> None:
    error = assert_error(await gateway.admin("POST", "/key/generate", json=body), 400,
                         "invalid_request_error")
    if param:
        assert error["param"] == param


async def test_duplicate_alias_is_400(gateway: RunningGateway) -> None:
    await gateway.new_key(key_alias="team-a")
    resp = await gateway.admin("POST", "/key/generate", json={"key_alias": "team-a"})
    assert assert_error(resp, 400, "invalid_request_error")["param"] == "key_alias"


async def test_missing_keys_are_404(gateway: RunningGateway) -> None:
    assert_error(await gateway.admin("GET", "/key/info", params={"key": "sk-nope-nope-nope"}),
                 404, "not_found_error")
    assert_error(await gateway.admin("POST", "/key/delete", json={"keys": ["sk-nope-nope"]}),
                 404, "not_found_error")
    assert_error(await gateway.admin("POST", "/key/update", json={"key": "sk-nope-nope",
                                                                  "max_budget": 1}),
                 404, "not_found_error")


async def test_unknown_route_and_bad_dates(gateway: RunningGateway) -> None:
    assert_error(await gateway.admin("GET", "/v2/nothing"), 404, "not_found_error")
    resp = await gateway.admin("GET", "/spend/logs", params={"start_date": "yesterday"})
    assert_error(resp, 400, "invalid_request_error")


async def test_master_key_may_call_models(gateway: RunningGateway) -> None:
    assert (await post_chat(gateway, MASTER_KEY)).status_code == 200

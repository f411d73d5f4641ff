"""Hostile input: every bad request gets a 4xx in OpenAI's shape that says how to fix it,
costs nothing, writes no ledger row, and never produces a 5xx.

Each test walks a table of inputs against one gateway (one start-up per table, not per row)
and fails listing every row that misbehaved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from api.conftest import RunningGateway
from api.openai_shape import openai_error, raw_http, spend_and_rows
from support import MASTER_KEY

from faregate.wire.json_limits import MAX_JSON_DEPTH

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "ping"}]


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "qwen-local", "messages": MESSAGES, "max_tokens": 8,
                         **fields})


def deep_bytes(depth: int) -> bytes:
    """A value nested `depth` levels deep, written by hand (orjson refuses to write it)."""
    return b"[" * depth + b"1" + b"]" * depth


# (what, body bytes, status, param or code that the error must carry)
BAD_BODIES: list[tuple[str, bytes, int, str | None]] = [
    ("empty body", b"", 400, None),
    ("not JSON", b"{not json", 400, None),
    ("invalid UTF-8", b'{"model": "qwen-local\xff", "messages": []}', 400, None),
    ("lone surrogate", b'{"model": "\\ud800", "messages": []}', 400, None),
    ("top-level array", b"[1, 2]", 400, None),
    ("top-level string", b'"hello"', 400, None),
    ("top-level null", b"null", 400, None),
    ("top-level number", b"42", 400, None),
    ("NaN literal", b'{"model": "qwen-local", "max_tokens": NaN}', 400, None),
    ("model missing", orjson.dumps({"messages": MESSAGES}), 400, "model"),
    ("model empty", body(model=""), 400, "model"),
    ("model null", body(model=None), 400, "model"),
    ("model a number", body(model=7), 400, "model"),
    ("model a list", body(model=["qwen-local"]), 400, "model"),
    ("model unknown", body(model="gpt-nope"), 400, "model"),
    ("model huge", body(model="m" * 100_000), 400, "model"),
    ("messages missing", orjson.dumps({"model": "qwen-local"}), 400, "messages"),
    ("messages empty", body(messages=[]), 400, "messages"),
    ("messages a string", body(messages="hi"), 400, "messages"),
    ("messages an object", body(messages={"role": "user"}), 400, "messages"),
    ("message a string", body(messages=["hi"]), 400, "messages[0]"),
    ("message without role", body(messages=[{"content": "x"}]), 400, "messages[0]"),
    ("role a number", body(messages=[{"role": 1, "content": "x"}]), 400, "messages[0]"),
    ("content a number", body(messages=[{"role": "user", "content": 5}]), 400,
     "messages[0].content"),
    ("content an object", body(messages=[{"role": "user", "content": {"a": 1}}]), 400,
     "messages[0].content"),
    ("content part a string", body(messages=[{"role": "user", "content": ["x"]}]), 400,
     "messages[0].content"),
    ("n zero", body(n=0), 400, "n"),
    ("n negative", body(n=-1), 400, "n"),
    ("n huge", body(n=10**6), 400, "n"),
    ("n float", body(n=1.5), 400, "n"),
    ("n bool", body(n=True), 400, "n"),
    ("n string", body(n="2"), 400, "n"),
    ("max_tokens negative", body(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens float", body(max_tokens=1.5), 400, "max_tokens"),
    ("max_tokens bool", body(max_tokens=True), 400, "max_tokens"),
    ("max_tokens string", body(max_tokens="8"), 400, "max_tokens"),
    ("max_tokens beyond int64", b'{"model": "qwen-local", "messages": [{"role": "user", '
     b'"content": "x"}], "max_tokens": 100000000000000000000000}', 400, "max_tokens"),
    ("max_completion_tokens negative", body(max_completion_tokens=-5), 400,
     "max_completion_tokens"),
    ("stream a string", body(stream="yes"), 400, "stream"),
    ("stream a number", body(stream=1), 400, "stream"),
    ("stream_options a string", body(stream=True, stream_options="usage"), 400,
     "stream_options"),
    ("stream_options a list", body(stream=True, stream_options=[]), 400, "stream_options"),
    (f"content nested past {MAX_JSON_DEPTH} levels", b'{"model": "qwen-local", "messages": '
     b'[{"role": "user", "content": [{"type": "x", "v": ' + deep_bytes(MAX_JSON_DEPTH)
     + b"}]}]}", 400, "json_too_deep"),
    ("tools nested 300 deep",
     body(stream=True)[:-1] + b', "tools": ' + deep_bytes(300) + b"}", 400, "json_too_deep"),
    ("response_format nested 300 deep", body()[:-1] + b', "response_format": '
     + deep_bytes(300) + b"}", 400, "json_too_deep"),
    ("a field the gateway does not read, nested 1000 deep",
     body()[:-1] + b', "x": ' + deep_bytes(1000) + b"}", 400, "json_too_deep"),
    ("nested past orjson's reader", body()[:-1] + b', "x": ' + deep_bytes(5000) + b"}",
     400, None),
]


@pytest.fixture
async def victim(gateway: RunningGateway) -> AsyncIterator[str]:
    """A key with a budget; after the test it must have paid nothing and have no ledger row."""
    key = await gateway.new_key(max_budget=1)
    yield key
    assert await spend_and_rows(gateway, key) == (0, 0, 0)


async def test_bad_bodies_are_400(gateway: RunningGateway, victim: str) -> None:
    wrong = []
    for what, content, status, where in BAD_BODIES:
        resp = await gateway.http.post(CHAT, content=content, headers={
            "Authorization": f"Bearer {victim}", "Content-Type": "application/json"})
        try:
            error = openai_error(resp.status_code, resp.json())
            assert resp.status_code == status
            assert error["type"] == "invalid_request_error"
            assert where in (None, error["param"], error["code"]), error
            assert len(error["message"]) < 1000, "the message echoes too much of the input"
        except (AssertionError, ValueError) as exc:
            wrong.append(f"{what}: {resp.status_code} {resp.text[:300]} ({exc})")
    assert not wrong, "\n".join(wrong)


async def test_the_nesting_limit_is_exactly_what_it_documents(gateway: RunningGateway
                                                             ) -> None:
    key = await gateway.new_key(max_budget=1)
    auth = {"Authorization": f"Bearer {key}"}
    # The body is one level; `tools` holds the rest. Streaming: the gateway re-writes it.
    limit = body(stream=True)[:-1] + b', "tools": ' + deep_bytes(MAX_JSON_DEPTH - 1) + b"}"
    resp = await gateway.http.post(CHAT, content=limit, headers=auth)
    assert resp.status_code == 200, resp.text
    past = body(stream=True)[:-1] + b', "tools": ' + deep_bytes(MAX_JSON_DEPTH) + b"}"
    resp = await gateway.http.post(CHAT, content=past, headers=auth)
    assert openai_error(resp.status_code, resp.json())["code"] == "json_too_deep"
    assert str(MAX_JSON_DEPTH) in resp.json()["error"]["message"]


async def test_oversized_bodies_are_413_however_they_arrive(gateway: RunningGateway,
                                                            victim: str) -> None:
    limit = gateway.app.settings.max_request_body_bytes
    auth = {"Authorization": f"Bearer {victim}"}

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"model": "qwen-local", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 1):
            yield b"x" * 65536
        yield b'"}]}'

    # No content-length: the body is counted as it arrives.
    resp = await gateway.http.post(CHAT, content=chunked(), headers=auth)
    assert "content-length" not in resp.request.headers
    assert openai_error(resp.status_code, resp.json())["code"] == "body_too_large"
    assert resp.status_code == 413
    # A content-length that announces too much is refused before the body is read.
    status, data = await raw_http(gateway.base_url, b"POST " + CHAT.encode() + b" HTTP/1.0\r\n"
                                  b"Host: x\r\nAuthorization: Bearer " + victim.encode()
                                  + b"\r\nContent-Length: " + str(limit + 1).encode(), b"{}")
    assert status == 413
    assert "max_request_body_bytes" in openai_error(status, orjson.loads(data))["message"]
    # One that announces too little: the gateway reads only what it announced.
    status, data = await raw_http(gateway.base_url, b"POST " + CHAT.encode() + b" HTTP/1.0\r\n"
                                  b"Host: x\r\nAuthorization: Bearer " + victim.encode()
                                  + b"\r\nContent-Length: 10", body())
    assert status == 400 and "not valid JSON" in openai_error(status, orjson.loads(data))[
        "message"]


@pytest.mark.parametrize("header", [
    None, b"", b"   ", b"Bearer", b"Bearer    ", b"Basic dXNlcjpwYXNz", b"Token sk-abc",
    b"sk-abc", b"Bearer not-a-faregate-key", b"Bearer sk-ant-api03-" + b"A" * 90,
    b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    b"Bearer sk-" + b"x" * 6000, b"Bearer sk-\xff\xfe\xe9t\xe9", b"Bearer \xc3\xa9\xc3\xa9",
    b"Bearer sk-unknown Bearer sk-other", b"Bearer " + MASTER_KEY.encode() + b"\xe9",
])
async def test_bad_credentials_are_401_on_every_surface(gateway: RunningGateway,
                                                        header: bytes | None) -> None:
    auth = b"" if header is None else b"\r\nAuthorization: " + header
    for method, path, content in [("POST", CHAT, body()), ("GET", "/v1/models", b""),
                                  ("POST", "/v1/embeddings", b'{"model": "qwen-local", '
                                   b'"input": "x"}'),
                                  ("GET", "/key/info", b""), ("GET", "/spend/logs", b""),
                                  ("POST", "/key/generate", b"{}")]:
        status, data = await raw_http(gateway.base_url, method.encode() + b" " + path.encode()
                                      + b" HTTP/1.0\r\nHost: x\r\nConnection: close"
                                      + b"\r\nContent-Type: application/json" + auth
                                      + b"\r\nContent-Length: " + str(len(content)).encode(),
                                      content)
        error = openai_error(status, orjson.loads(data))
        assert status == 401, (path, data)
        assert error["type"] == "auth_error"
        assert "Bearer" in error["message"] or "key" in error["message"], error


async def test_the_other_key_headers_are_checked_too(gateway: RunningGateway) -> None:
    for name in ("x-api-key", "api-key"):
        resp = await gateway.http.post(CHAT, content=body(), headers={name: "sk-ant-nope"})
        assert openai_error(resp.status_code, resp.json())["code"] == "invalid_api_key"


async def test_a_virtual_key_is_kept_off_admin_routes(gateway: RunningGateway,
                                                      victim: str) -> None:
    auth = {"Authorization": f"Bearer {victim}"}
    other = await gateway.new_key()
    for method, path, payload in [
            ("POST", "/key/generate", {}), ("POST", "/key/update", {"key": victim,
                                                                    "max_budget": 100}),
            ("POST", "/key/delete", {"keys": [other]}), ("GET", "/key/list", None),
            ("POST", "/key/regenerate", {"key": victim}),
            ("POST", f"/key/{victim}/regenerate", None),
            ("POST", "/key/block", {"key": other}), ("POST", "/key/unblock", {"key": victim}),
            ("GET", "/global/spend", None)]:
        resp = await gateway.http.request(method, path, json=payload, headers=auth)
        error = openai_error(resp.status_code, resp.json())
        assert resp.status_code == 403 and error["code"] == "admin_only", (path, error)
        assert "master key" in error["message"]
    # Nothing changed: the other key still works, this one's budget is still 1.
    assert (await gateway.http.post(CHAT, content=body(), headers={
        "Authorization": f"Bearer {other}"})).status_code == 200
    info = (await gateway.http.get("/key/info", headers=auth)).json()["info"]
    assert info["max_budget"] == 1


async def test_a_virtual_key_reads_only_its_own_info_and_logs(gateway: RunningGateway
                                                              ) -> None:
    mine, theirs = await gateway.new_key(), await gateway.new_key(key_alias="theirs")
    auth = {"Authorization": f"Bearer {mine}"}
    their_hash = (await gateway.admin("GET", "/key/info", params={"key": theirs})).json()["key"]
    for path, params in [("/key/info", {"key": theirs}), ("/key/info", {"key": their_hash}),
                         ("/spend/logs", {"api_key": theirs}),
                         ("/spend/logs", {"api_key": their_hash}),
                         ("/key/info", {"key": MASTER_KEY})]:
        resp = await gateway.http.get(path, params=params, headers=auth)
        error = openai_error(resp.status_code, resp.json())
        assert resp.status_code == 403, (path, params, error)
        assert "its own" in error["message"]
        assert "theirs" not in resp.text and their_hash not in resp.text
    own = await gateway.http.get("/key/info", params={"key": mine}, headers=auth)
    assert own.status_code == 200 and own.json()["info"]["key_name"].endswith(mine[-4:])


# (what, query string, status)
BAD_QUERIES: list[tuple[str, dict[str, Any], int]] = [
    ("start_date words", {"start_date": "yesterday"}, 400),
    ("start_date month 13", {"start_date": "2026-13-01"}, 400),
    ("end_date the last day", {"end_date": "9999-12-31"}, 400),
    ("start_date year 1 east of UTC", {"start_date": "0001-01-01T00:00:00+14:00"}, 400),
    ("end_date empty", {"end_date": ""}, 400),
    ("page zero", {"page": 0}, 400),
    ("page negative", {"page": -3}, 400),
    ("page huge", {"page": 10**17}, 400),
    ("page not a number", {"page": "two"}, 400),
    ("page_size huge", {"page_size": 10**9}, 400),
    ("page_size zero", {"page_size": 0}, 400),
    ("page_size float", {"page_size": 2.5}, 400),
]


async def test_spend_log_queries_are_checked(gateway: RunningGateway) -> None:
    wrong = []
    for what, params, status in BAD_QUERIES:
        resp = await gateway.admin("GET", "/spend/logs", params=params)
        try:
            error = openai_error(resp.status_code, resp.json())
            assert resp.status_code == status
            assert error["type"] == "invalid_request_error"
        except (AssertionError, ValueError) as exc:
            wrong.append(f"{what}: {resp.status_code} {resp.text[:300]} ({exc})")
    for page in (1, 10**6):     # a far page is empty, not an error
        resp = await gateway.admin("GET", "/spend/logs", params={"page": page})
        assert resp.status_code == 200 and resp.json() == []
    resp = await gateway.admin("GET", "/key/list", params={"page": 10**17})
    if resp.status_code != 400:
        wrong.append(f"/key/list page huge: {resp.status_code} {resp.text[:300]}")
    assert not wrong, "\n".join(wrong)


# (what, body bytes): each must be a 400 (or 404 for /key/update of a missing key)
BAD_KEY_BODIES: list[tuple[str, bytes]] = [
    ("not JSON", b"{"),
    ("invalid UTF-8", b'{"key_alias": "\xff"}'),
    ("a JSON array", b"[]"),
    ("a JSON string", b'"x"'),
    ("JSON null", b"null"),
    ("max_budget NaN", b'{"max_budget": NaN}'),
    ("max_budget Infinity", b'{"max_budget": Infinity}'),
    ("max_budget 1e300", b'{"max_budget": 1e300}'),
    ("tpm_limit past INTEGER", b'{"tpm_limit": 4294967296}'),
    ("duration huge", b'{"duration": "99999999999999999999d"}'),
    ("duration months huge", b'{"duration": "9999999999mo"}'),
    ("budget_duration huge", b'{"budget_duration": "999999999999w"}'),
    ("budget_duration past its VARCHAR(32)", b'{"budget_duration": "' + b"0" * 31 + b'1d"}'),
    ("metadata nested 300 deep", b'{"metadata": {"a": ' + deep_bytes(300) + b"}}"),
    ("metadata integer past 64 bits", b'{"metadata": {"a": 100000000000000000000000}}'),
    ("metadata nested 700 deep", b'{"metadata": {"a": ' + deep_bytes(700) + b"}}"),
    ("metadata nested 1000 deep", b'{"metadata": {"a": ' + deep_bytes(1000) + b"}}"),
    ("metadata nested 100000 deep", b'{"metadata": {"a": ' + deep_bytes(100_000) + b"}}"),
    ("models not a list", b'{"models": "qwen-local"}'),
    ("max_budget past a BIGINT of nano-dollars", b'{"max_budget": 1e10}'),
]


async def test_bad_admin_bodies_are_400(gateway: RunningGateway) -> None:
    wrong = []
    for path in ("/key/generate", "/key/update"):
        for what, content in BAD_KEY_BODIES:
            if path == "/key/update" and content.startswith(b"{") and content != b"{":
                content = b'{"key": "sk-nope-nope",' + content[1:]
            resp = await gateway.http.post(path, content=content, headers={
                "Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
            try:
                openai_error(resp.status_code, resp.json())
                assert resp.status_code in (400, 404), resp.status_code
            except (AssertionError, ValueError) as exc:
                wrong.append(f"{path} {what}: {resp.status_code} {resp.text[:300]} ({exc})")
    assert not wrong, "\n".join(wrong)
    deepest = await gateway.http.post(
        "/key/generate", content=dict(BAD_KEY_BODIES)["metadata nested 100000 deep"],
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
    assert "nested too deep" in deepest.json()["error"]["message"]
    listed = (await gateway.admin("GET", "/key/list")).json()
    assert listed["total_count"] == 0, "a refused /key/generate made a key"


async def test_wrong_methods_are_405_and_unknown_paths_404(gateway: RunningGateway) -> None:
    for method, path in [("GET", CHAT), ("PUT", CHAT), ("DELETE", "/v1/embeddings"),
                         ("POST", "/v1/models"), ("GET", "/key/generate"),
                         ("DELETE", "/spend/logs"), ("POST", "/key/info")]:
        resp = await gateway.admin(method, path)
        error = openai_error(resp.status_code, resp.json())
        assert resp.status_code == 405, (method, path, resp.text)
        assert "allow" in resp.headers, (method, path)
        assert method in error["message"] and resp.headers["allow"] in error["message"]
    for path in ("/v2/chat/completions", "/v1/chat/completion", "/%ff",
                 "/key/" + "x" * 5000):
        resp = await gateway.admin("GET", path)
        assert resp.status_code == 404, (path, resp.text)
        assert openai_error(404, resp.json())["type"] == "not_found_error"


async def test_a_wrong_content_type_does_not_fail_a_valid_body(gateway: RunningGateway
                                                              ) -> None:
    """The gateway reads JSON whatever the content-type says, as OpenAI's API does."""
    key = await gateway.new_key(max_budget=1)
    resp = await gateway.http.post(CHAT, content=body(), headers={
        "Authorization": f"Bearer {key}", "Content-Type": "text/plain"})
    assert resp.status_code == 200, resp.text
    spend, ledger, rows = await spend_and_rows(gateway, key)
    assert spend == ledger > 0 and rows == 1


async def test_huge_but_well_typed_max_tokens_is_not_a_5xx(gateway: RunningGateway) -> None:
    key = await gateway.new_key(max_budget=1)
    for value in (2**31, 2**63 - 1):
        resp = await gateway.http.post(CHAT, content=body(max_tokens=value, n=128),
                                       headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code < 500, resp.text
        if resp.status_code >= 400:
            openai_error(resp.status_code, resp.json())
    spend, ledger, _ = await spend_and_rows(gateway, key)
    assert spend == ledger


def test_the_shape_check_can_fail() -> None:
    """The shape check itself refuses what is not OpenAI's shape."""
    with pytest.raises(AssertionError):
        openai_error(400, {"detail": "Not Found"})
    with pytest.raises(AssertionError):
        openai_error(500, {"error": {"message": "x", "type": "t", "param": None, "code": "c"}})
    with pytest.raises(AssertionError):
        openai_error(400, {"error": {"message": "", "type": "t", "param": None, "code": "c"}})


async def test_keys_longer_than_any_key_of_ours_are_refused_before_hashing(
        gateway: RunningGateway) -> None:
    resp = await gateway.http.post(CHAT, content=body(),
                                   headers={"Authorization": "Bearer sk-" + "x" * 2_000_000})
    error = openai_error(resp.status_code, resp.json())
    assert resp.status_code == 401 and "longer than 256" in error["message"]
    made = await gateway.admin("POST", "/key/generate", json={"key": "sk-" + "y" * 254})
    error = openai_error(made.status_code, made.json())
    assert made.status_code == 400 and error["param"] == "key"

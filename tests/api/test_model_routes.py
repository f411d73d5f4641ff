"""/model/new, /model/update, /model/delete, /model/info: stored models with sealed credentials.

The upstream here is the project's mock started with `--api-key`, so a chat through a stored
model succeeds only if the gateway opened the sealed credential and sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import yaml
from api.conftest import RunningGateway, serve
from sqlalchemy import select
from support import (
    MASTER_KEY,
    env_for,
    mock_upstream_process,
    write_config,
)

from faregate import config
from faregate.app import Faregate
from faregate.catalog.sealing import key_id
from faregate.secret import Secret
from faregate.storage.schema import keys, models

UPSTREAM_KEY = "upstream-key-for-stored-model-7f3a"
SALT_KEY = "salt-key-for-tests-0123456789abcdef"

Start = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture(scope="module")
def keyed_upstream() -> Iterator[str]:
    """The mock upstream that answers only `Authorization: Bearer UPSTREAM_KEY`."""
    with mock_upstream_process("--api-key", UPSTREAM_KEY) as url:
        yield url


@pytest.fixture
async def start(db_url: str, mock_upstream: str, tmp_path: Path) -> AsyncIterator[Start]:
    """Start gateways on one database (replicas), each with its own environment."""
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    async with contextlib.AsyncExitStack() as stack:
        async def _start(poll_interval_s: float | None = None, **env: str) -> RunningGateway:
            path = cfg
            if poll_interval_s is not None:
                raw = yaml.safe_load(cfg.read_text())
                raw["general_settings"]["stored_models_poll_interval_s"] = poll_interval_s
                path = tmp_path / "polling.yaml"
                path.write_text(yaml.safe_dump(raw))
            settings = config.load({**os.environ, **env_for(db_url, tmp_path), **env}, path)
            return await stack.enter_async_context(serve(Faregate.from_settings(settings)))
        yield _start


@pytest.fixture
async def gw(start: Start) -> RunningGateway:
    return await start(FAREGATE_SALT_KEY=SALT_KEY)


def stored_model(upstream: str, api_key: str | None = UPSTREAM_KEY, name: str = "stored-model",
                 **info: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"model": "openai/stored-upstream", "api_base": upstream,
                              "input_cost_per_token": 0.000001,
                              "output_cost_per_token": 0.000002}
    if api_key is not None:
        params["api_key"] = api_key
    return {"model_name": name, "litellm_params": params, "model_info": info}


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def ask(gw: RunningGateway, key: str, model: str = "stored-model") -> str:
    reply = await gw.sdk(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=4)
    return str(reply.choices[0].message.content)


async def rows(gw: RunningGateway) -> list[Any]:
    async with gw.app.storage.engine.connect() as conn:
        return list(await conn.execute(select(models)))


async def test_stored_credential_is_sealed_and_used_for_the_upstream(
        gw: RunningGateway, keyed_upstream: str) -> None:
    resp = await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert UPSTREAM_KEY not in resp.text and "api_key" not in body["litellm_params"]
    assert body["model_name"] == "stored-model" and body["model_info"]["db_model"] is True

    [row] = await rows(gw)
    assert UPSTREAM_KEY not in row.litellm_params
    assert f'"api_key":"fg1:{key_id(Secret(SALT_KEY))}:' in row.litellm_params

    key = await gw.new_key(models=[])
    assert await ask(gw, key) == "mock mock mock mock"


async def test_update_replaces_the_credential_and_keeps_it_when_not_given(
        gw: RunningGateway, keyed_upstream: str) -> None:
    created = (await gw.admin("POST", "/model/new", json=stored_model(
        keyed_upstream, api_key="wrong-upstream-key"))).json()
    key = await gw.new_key(models=[])
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(gw, key)
    assert refused.value.status_code >= 400 and "wrong-upstream-key" not in str(refused.value)

    resp = await gw.admin("POST", "/model/update", json={
        "model_info": {"id": created["model_id"]}, "litellm_params": {"api_key": UPSTREAM_KEY}})
    assert resp.status_code == 200, resp.text
    assert UPSTREAM_KEY not in resp.text
    assert await ask(gw, key) == "mock mock mock mock"

    # a change that does not name the credential keeps the sealed one
    resp = await gw.admin("POST", "/model/update", json={
        "id": created["model_id"], "model_info": {"max_output_tokens": 64},
        "litellm_params": {"timeout": 30}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["litellm_params"]["timeout"] == 30
    assert await ask(gw, key) == "mock mock mock mock"


async def test_model_info_lists_config_and_stored_models_without_secrets(
        gw: RunningGateway, keyed_upstream: str) -> None:
    created = (await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream))).json()
    resp = await gw.admin("GET", "/model/info")
    assert resp.status_code == 200
    data = resp.json()["data"]
    names = {(m["model_name"], m["model_info"]["db_model"]) for m in data}
    assert {("qwen-local", False), ("other-model", False), ("stored-model", True)} <= names
    for m in data:
        assert "api_key" not in m["litellm_params"]
    for secret in (UPSTREAM_KEY, "upstream-secret", "fg1:", SALT_KEY, MASTER_KEY):
        assert secret not in resp.text          # upstream-secret: the config model's api_key

    one = (await gw.admin("GET", "/model/info",
                          params={"litellm_model_id": created["model_id"]})).json()["data"]
    assert [m["model_info"]["id"] for m in one] == [created["model_id"]]


async def test_delete_stops_serving_the_model(gw: RunningGateway, keyed_upstream: str) -> None:
    created = (await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream))).json()
    key = await gw.new_key(models=[])
    assert await ask(gw, key) == "mock mock mock mock"
    resp = await gw.admin("POST", "/model/delete", json={"id": created["model_id"]})
    assert resp.status_code == 200 and created["model_id"] in resp.json()["message"]
    assert await rows(gw) == []
    with pytest.raises(openai.APIStatusError) as gone:
        await ask(gw, key)
    assert 400 <= gone.value.status_code < 500
    assert_error(await gw.admin("POST", "/model/delete", json={"id": created["model_id"]}),
                 404, "model_not_found")


async def test_a_stored_model_with_a_config_models_name_is_another_deployment(
        gw: RunningGateway, keyed_upstream: str) -> None:
    assert len(gw.app.router.deployments("other-model")) == 1
    resp = await gw.admin("POST", "/model/new",
                          json=stored_model(keyed_upstream, name="other-model"))
    assert resp.status_code == 200, resp.text
    deployments = gw.app.router.deployments("other-model")
    assert len(deployments) == 2
    stored = [d for d in deployments if d.deployment_id.endswith(resp.json()["model_id"])]
    assert stored and stored[0].api_key == Secret(UPSTREAM_KEY)


async def test_another_replica_picks_up_changes_by_polling(
        start: Start, keyed_upstream: str) -> None:
    first = await start(FAREGATE_SALT_KEY=SALT_KEY)
    second = await start(poll_interval_s=0.05, FAREGATE_SALT_KEY=SALT_KEY)

    created = (await first.admin("POST", "/model/new", json=stored_model(keyed_upstream))).json()
    await until(lambda: bool(second.app.router.deployments("stored-model")))
    key = await second.new_key(models=[])
    assert await ask(second, key) == "mock mock mock mock"

    await first.admin("POST", "/model/delete", json={"id": created["model_id"]})
    await until(lambda: not second.app.router.deployments("stored-model"))


async def until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_without_a_salt_key_credentials_are_refused_not_stored(
        start: Start, keyed_upstream: str) -> None:
    gw = await start()
    error = assert_error(await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream)),
                         400, "salt_key_missing")
    assert "FAREGATE_SALT_KEY" in error["message"] and error["param"] == "litellm_params.api_key"
    assert await rows(gw) == []
    # a model without a credential needs no salt key
    resp = await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream, api_key=None))
    assert resp.status_code == 200, resp.text
    assert len(await rows(gw)) == 1


async def test_a_virtual_key_may_not_change_the_models(
        gw: RunningGateway, keyed_upstream: str) -> None:
    key = await gw.new_key()
    hdrs = {"Authorization": f"Bearer {key}"}
    for method, path, body in [("POST", "/model/new", stored_model(keyed_upstream)),
                               ("POST", "/model/update", {"id": "x"}),
                               ("POST", "/model/delete", {"id": "x"})]:
        resp = await gw.http.request(method, path, json=body, headers=hdrs)
        assert_error(resp, 403, "admin_only")
    assert_error(await gw.http.get("/model/info"), 401)
    assert_error(await gw.http.get("/model/info", headers={
        "Authorization": "Bearer sk-nobody-knows-this-key"}), 401)
    assert await rows(gw) == []


@pytest.mark.parametrize(("body", "needle"), [
    ({"litellm_params": {}}, "model_name"),
    ({"model_name": "x"}, "litellm_params"),
    ({"model_name": "x", "litellm_params": {}, "surprise": 1}, "surprise"),
    ({"model_name": "x", "litellm_params": "openai/x"}, "litellm_params"),
])
async def test_malformed_bodies_are_400(gw: RunningGateway, body: dict[str, Any],
                                        needle: str) -> None:
    error = assert_error(await gw.admin("POST", "/model/new", json=body), 400)
    assert needle in error["message"]


@pytest.mark.parametrize(("change", "needle"), [
    ({"input_cost_per_token": None}, "input_cost_per_token"),
    ({"api_base": "ftp://nope"}, "api_base must be an http(s) URL"),
    ({"model": "gemini/flash"}, "provider 'gemini' is not supported"),
    ({"api_key": "os.environ/SOME_KEY"}, "os.environ/ reference"),
    ({"api_key": 12345}, "must be a string"),
])
async def test_invalid_models_get_the_config_rules_as_400(
        gw: RunningGateway, keyed_upstream: str, change: dict[str, Any], needle: str) -> None:
    body = stored_model(keyed_upstream)
    body["litellm_params"] = {k: v for k, v in {**body["litellm_params"], **change}.items()
                              if v is not None}
    error = assert_error(await gw.admin("POST", "/model/new", json=body), 400)
    assert needle in error["message"]
    assert await rows(gw) == []


async def test_update_errors(gw: RunningGateway, keyed_upstream: str) -> None:
    assert_error(await gw.admin("POST", "/model/update", json={"id": "no-such-model"}),
                 404, "model_not_found")
    assert_error(await gw.admin("POST", "/model/update", json={"litellm_params": {}}), 400)
    assert_error(await gw.admin("POST", "/model/update", json={"id": "qwen-local#0"}),
                 400, "config_model")
    assert_error(await gw.admin("POST", "/model/delete", json={"id": "qwen-local#0"}),
                 400, "config_model")
    created = (await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream))).json()
    error = assert_error(await gw.admin("POST", "/model/update", json={
        "id": created["model_id"], "litellm_params": {"api_base": "not-a-url"}}), 400)
    assert "api_base" in error["message"]
    again = await gw.admin("POST", "/model/new", json=stored_model(
        keyed_upstream, id=created["model_id"]))
    assert_error(again, 400, "duplicate_model_id")


async def test_no_secret_reaches_a_log_line_or_a_response(
        gw: RunningGateway, keyed_upstream: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for body in (stored_model(keyed_upstream), stored_model(keyed_upstream, api_key="bad-key-1",
                                                            name="bad-model")):
        resp = await gw.admin("POST", "/model/new", json=body)
        texts.append(resp.text)
    key = await gw.new_key(models=[])
    assert await ask(gw, key) == "mock mock mock mock"
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(gw, key, "bad-model")
    texts.append(str(refused.value.body))
    texts.append((await gw.admin("GET", "/model/info")).text)
    texts.append((await gw.admin("POST", "/model/update", json={
        "id": "missing", "litellm_params": {"api_key": UPSTREAM_KEY}})).text)
    texts.append((await gw.http.post("/model/new", json=stored_model(keyed_upstream),
                                     headers={"Authorization": f"Bearer {key}"})).text)
    # a row nobody can open any more is logged by id, without its ciphertext or any key (it
    # was opened before, so the process keeps serving that credential and says so)
    async with gw.app.storage.engine.begin() as conn:
        await conn.execute(models.update().where(models.c.model_name == "bad-model").values(
            litellm_params='{"api_key":"fg1:deadbeef:AAAA","model":"openai/x"}'))
    await gw.app.models.refresh()
    assert "cannot be opened any more" in caplog.text
    everything = "\n".join(texts) + caplog.text
    for secret in (UPSTREAM_KEY, "bad-key-1", SALT_KEY, MASTER_KEY, key, "upstream-secret"):
        assert secret not in everything


async def test_postgres_holds_no_plaintext(gw: RunningGateway, keyed_upstream: str,
                                           db_url: str) -> None:
    """The bytes at rest, read with the database's own driver, not through faregate."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the SQLite file is checked through SQLAlchemy in the tests above")
    await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream))
    conn = await asyncpg.connect(db_url)
    try:
        dump = await conn.fetchval("SELECT string_agg(t::text, '|') FROM faregate_models t")
    finally:
        await conn.close()
    assert "stored-model" in dump and UPSTREAM_KEY not in dump


async def test_virtual_keys_are_stored_only_as_hashes(gw: RunningGateway) -> None:
    key = await gw.new_key(key_alias="audited")
    async with gw.app.storage.engine.connect() as conn:
        dump = " ".join(str(v) for row in await conn.execute(select(keys)) for v in row)
    assert hashlib.sha256(key.encode()).hexdigest() in dump
    assert key not in dump and key[3:] not in dump


async def test_keys_may_name_stored_models_once_they_exist(
        gw: RunningGateway, keyed_upstream: str) -> None:
    before = await gw.admin("POST", "/key/generate", json={"models": ["stored-model"]})
    assert_error(before, 400)
    assert "stored-model" in before.json()["error"]["message"]
    await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream))
    resp = await gw.admin("POST", "/key/generate", json={
        "models": ["stored-model"], "model_rpm_limit": {"stored-model": 5}})
    assert resp.status_code == 200, resp.text
    assert await ask(gw, resp.json()["key"]) == "mock mock mock mock"


async def shown(gw: RunningGateway, key: str, path: str = "/model/info",
                **params: str) -> list[str]:
    """The model_names /model/info shows `key` (no credential in the answer)."""
    resp = await gw.http.get(path, params=params, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    for secret in (UPSTREAM_KEY, "upstream-secret", "fg1:", SALT_KEY, MASTER_KEY):
        assert secret not in resp.text
    return sorted(m["model_name"] for m in resp.json()["data"])


async def test_model_info_shows_a_key_the_models_it_may_call(
        gw: RunningGateway, keyed_upstream: str) -> None:
    """Issue 14 part 2: a key sees on /model/info (and /v1/models) what its key and team
    allow: a team's models, an access group's, a wildcard's; an admin or viewer sees all."""
    await gw.admin("POST", "/model/new", json=stored_model(keyed_upstream, name="beta-model",
                                                            access_groups=["beta"]))
    wild = stored_model(keyed_upstream, name="openai/*")
    wild["litellm_params"]["model"] = "openai/*"
    resp = await gw.admin("POST", "/model/new", json=wild)
    assert resp.status_code == 200, resp.text
    everything = ["beta-model", "openai/*", "other-model", "qwen-local"]
    assert await shown(gw, MASTER_KEY) == everything

    # a team key: the team's models bound it
    team = await gw.admin("POST", "/team/new", json={"team_id": "t", "models": ["qwen-local"]})
    assert team.status_code == 200, team.text
    team_key = await gw.new_key(team_id="t", models=[])
    assert await shown(gw, team_key) == ["qwen-local"]
    assert await shown(gw, team_key, "/v1/model/info") == ["qwen-local"]
    assert [m.id async for m in gw.sdk(team_key).models.list()] == ["qwen-local"]
    # and a key in a team lists fewer than its team: the key's
    await gw.admin("POST", "/team/new", json={"team_id": "t2",
                                              "models": ["qwen-local", "other-model"]})
    assert await shown(gw, await gw.new_key(team_id="t2", models=["other-model"])) == [
        "other-model"]

    # an access group: the models in it
    group_key = await gw.new_key(models=["beta"])
    assert await shown(gw, group_key) == ["beta-model"]
    assert [m.id async for m in gw.sdk(group_key).models.list()] == ["beta-model"]

    # a wildcard: the pattern itself, or a name it serves, shows the wildcard's entry
    for listed in (["openai/*"], ["openai/gpt-4o"]):
        assert await shown(gw, await gw.new_key(models=listed)) == ["openai/*"]
    # a key without a list may call everything; a stored model's id only if it may call it
    assert await shown(gw, await gw.new_key(models=[])) == everything
    data = (await gw.admin("GET", "/model/info")).json()["data"]
    beta_id = next(m["model_info"]["id"] for m in data if m["model_name"] == "beta-model")
    assert await shown(gw, group_key, litellm_model_id=beta_id) == ["beta-model"]
    assert await shown(gw, team_key, litellm_model_id=beta_id) == []

    # a user's key with the user's role: an internal_user its key's models, a viewer all
    for user, role in (("ivy", "internal_user"), ("val", "proxy_admin_viewer")):
        made = await gw.admin("POST", "/user/new", json={"user_id": user, "user_role": role})
        assert made.status_code == 200, made.text
    assert await shown(gw, await gw.new_key(user_id="ivy", models=["other-model"])) == [
        "other-model"]
    assert await shown(gw, await gw.new_key(user_id="val", models=["other-model"])) == \
        everything

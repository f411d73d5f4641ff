"""Routing through the real openai SDK: a deployment whose own rpm is full passes requests to
another, per-deployment health (/health/deployments), model aliases on keys, and embeddings and
completions taking the same retry/fallback path with one ledger row each."""

from __future__ import annotations

import uuid

import openai
import pytest
from api.test_upstream_faults import (  # fixtures, imported to be shared
    Start,
    ask,
    closed_port_url,
    deployment,
    ledger_rows,
    start,
)
from support import MASTER_KEY

__all__ = ["start"]


@pytest.mark.parametrize("admission", ["local", "redis"])
async def test_a_deployment_whose_rpm_is_full_passes_requests_to_one_with_room(
        start: Start, mock_upstream: str, admission: str) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"     # deployment windows in the shared Redis are per id
    gw = await start([deployment(model, "qwen-local", mock_upstream, rpm=1),
                      deployment(model, "qwen-local-b", mock_upstream, rpm=1)],
                     admission=admission)
    key = await gw.new_key(models=[model], max_budget=1)
    sdk = gw.sdk(key)
    for stream in (False, True):
        text, _ = await ask(sdk, model, stream)
        assert text == "mock mock mock mock"
    with pytest.raises(openai.RateLimitError) as caught:      # both full: the caller's 429
        await ask(sdk, model, False)
    assert caught.value.body["code"] == "rpm"  # type: ignore[index]
    assert all(h.latency_s is not None for h in gw.app.router.health())   # each answered once
    rows = await ledger_rows(gw, key)
    assert [r["status"] for r in rows] == ["success", "success"]


async def test_a_retry_skips_a_full_deployment_and_is_admitted_anew_on_the_next(
        start: Start, mock_upstream: str) -> None:
    """The failing deployment is picked first (weights), its retry lands on the full one, which
    is skipped without an upstream call; the one after it needs an admission of its own."""
    gw = await start([deployment("m", "fault-503", mock_upstream, weight=1e6),
                      deployment("m", "qwen-local", mock_upstream, rpm=1, weight=1e3),
                      deployment("m", "qwen-local", mock_upstream, weight=1)],
                     {"num_retries": 2})
    key = await gw.new_key(models=["m"], max_budget=1)
    sdk = gw.sdk(key)
    _, first = await ask(sdk, "m", False)        # fault-503, then the rpm=1 deployment
    assert first["x-faregate-attempts"] == "2"
    text, second = await ask(sdk, "m", False)    # fault-503, rpm=1 full (skipped), the last
    assert text == "mock mock mock mock" and second["x-faregate-attempts"] == "2"
    rows = await ledger_rows(gw, key)            # and the key's spend is their sum
    assert [r["status"] for r in rows] == ["success", "success"]


async def test_health_deployments_shows_each_deployment_to_the_master_key_only(
        start: Start, mock_upstream: str) -> None:
    gw = await start([deployment("m", "qwen-local", mock_upstream),
                      deployment("m", "x", "http://user:secret@127.0.0.1:9/v1?api-key=secret")],
                     {"num_retries": 1, "allowed_fails": 0})
    key = await gw.new_key(models=["m"], max_budget=1)
    for stream in (False, True, False):
        text, _ = await ask(gw.sdk(key), "m", stream)          # one may have been retried
        assert text == "mock mock mock mock"
    assert (await gw.http.get("/health/deployments")).status_code == 401
    denied = await gw.http.get("/health/deployments",
                               headers={"Authorization": f"Bearer {key}"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_only"
    resp = await gw.http.get("/health/deployments",
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 200
    good, bad = resp.json()
    assert "secret" not in resp.text
    assert (good["model_name"], good["api_base"], good["state"], good["in_flight"]) == \
        ("m", mock_upstream, "healthy", 0)          # the stream's attempt ended with its relay
    assert good["latency_s"] > 0 and good["fails_last_minute"] == 0
    assert bad["api_base"] == "http://127.0.0.1:9/v1"
    if bad["fails_last_minute"]:                    # picked (weights 1:1) and refused at once
        assert bad["state"] == "cooling_down" and bad["cooldown_left_s"] > 0
        assert "127.0.0.1:9" in bad["last_error"] and bad["latency_s"] is None
    assert {d["deployment_id"] for d in (good, bad)} == \
        {d.deployment_id for d in gw.app.router.deployments("m")}


async def test_a_keys_alias_routes_to_its_target_and_is_metered_as_the_target(
        start: Start, mock_upstream: str) -> None:
    gw = await start([deployment("qwen-local", "qwen-local", mock_upstream),
                      deployment("other", "qwen-local", mock_upstream)])
    key = await gw.new_key(models=["qwen-local"], max_budget=1,
                           aliases={"my-gpt": "qwen-local", "sneaky": "other"})
    sdk = gw.sdk(key)
    for stream in (False, True):
        text, _ = await ask(sdk, "my-gpt", stream)
        assert text == "mock mock mock mock"
    listed = [m.id async for m in sdk.models.list()]
    assert listed == ["qwen-local", "my-gpt"]       # "sneaky" points at a model it may not use
    with pytest.raises(openai.AuthenticationError) as caught:
        await ask(sdk, "sneaky", False)             # an alias never widens what a key may use
    assert caught.value.body["code"] == "model_access_denied"  # type: ignore[index]
    rows = await ledger_rows(gw, key)
    assert [r["model"] for r in rows] == ["qwen-local", "qwen-local"]
    info = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
    assert info["aliases"] == {"my-gpt": "qwen-local", "sneaky": "other"}
    # /key/update replaces them; the next request sees the change
    resp = await gw.admin("POST", "/key/update", json={"key": key, "aliases": {}})
    assert resp.status_code == 200 and resp.json()["aliases"] == {}
    with pytest.raises(openai.BadRequestError) as gone:
        await ask(sdk, "my-gpt", False)
    assert gone.value.body["code"] == "model_not_found"  # type: ignore[index]


@pytest.mark.parametrize(("aliases", "status", "says"), [
    ({"my-gpt": "nope"}, 400, "unknown model(s) ['nope']"),
    ({"": "qwen-local"}, 400, "empty name"),
    ({"my-gpt": 3}, 400, "aliases.my-gpt: Input should be a valid string"),
    (["my-gpt"], 400, "aliases: Input should be a valid dictionary"),
])
async def test_bad_aliases_are_refused_clearly(start: Start, mock_upstream: str,
                                               aliases: object, status: int, says: str) -> None:
    gw = await start([deployment("qwen-local", "qwen-local", mock_upstream)])
    resp = await gw.admin("POST", "/key/generate", json={"aliases": aliases})
    assert resp.status_code == status, resp.text
    assert says in resp.json()["error"]["message"]


async def test_embeddings_and_completions_are_retried_and_fall_back_with_one_row_each(
        start: Start, mock_upstream: str) -> None:
    gw = await start([deployment("primary", "fault-503", mock_upstream),
                      deployment("primary", "x", closed_port_url()),
                      deployment("backup", "qwen-local", mock_upstream)],
                     {"num_retries": 1, "fallbacks": [{"primary": ["backup"]}]})
    key = await gw.new_key(models=["primary", "backup"], max_budget=1)
    sdk = gw.sdk(key)
    raw = await sdk.embeddings.with_raw_response.create(model="primary", input=["a b c"])
    assert len(raw.parse().data[0].embedding) == 8
    assert raw.headers["x-faregate-model-group"] == "backup"
    assert raw.headers["x-faregate-attempts"] == "3"       # both primaries, then the fallback
    done = await sdk.completions.with_raw_response.create(model="primary", prompt="hi",
                                                          max_tokens=4)
    assert done.parse().choices[0].text
    assert done.headers["x-faregate-model-group"] == "backup"
    rows = await ledger_rows(gw, key)
    assert sorted((r["call_type"], r["model"], r["status"]) for r in rows) == [
        ("embedding", "backup", "success"), ("text_completion", "backup", "success")]
    assert all(r["spend"] > 0 for r in rows)


async def test_master_key_health_route_is_not_a_model_route(start: Start,
                                                            mock_upstream: str) -> None:
    """POST is not served there (the admin app answers 405 or 404, never a model call)."""
    gw = await start([deployment("qwen-local", "qwen-local", mock_upstream)])
    resp = await gw.http.post("/health/deployments",
                              headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code in (404, 405)

"""Model access as LiteLLM configures it, through the real openai SDK against the mock:
wildcard entries ("*", "openai/*") and the name they pass on, keys naming wildcard-served
models, access groups, all-team-models, text-completion-openai/ models, and GET /health."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from api.test_upstream_faults import (  # fixtures, imported to be shared
    MESSAGES,
    Start,
    closed_port_url,
    ledger_rows,
    start,
)
from support import MASTER_KEY, PRICE_IN, PRICE_OUT

__all__ = ["start"]
PROMPT_TOKENS = 1 + 4 + 3           # the mock's rule for MESSAGES


def entry(name: str, model: str, api_base: str, price: float = 1, **info: Any
          ) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": model, "api_base": api_base, "input_cost_per_token": PRICE_IN * price,
        "output_cost_per_token": PRICE_OUT * price}, "model_info": info}


async def listed(sdk: openai.AsyncOpenAI) -> list[str]:
    return [m.id async for m in sdk.models.list()]


async def test_wildcards_route_any_name_pass_it_on_and_charge_the_entrys_price(
        start: Start, mock_upstream: str) -> None:
    gw = await start([entry("qwen-local", "openai/qwen-local", mock_upstream),
                      entry("openai/*", "openai/*", mock_upstream, price=2),
                      entry("*", "*", mock_upstream, price=3)])
    key = await gw.new_key(models=["*"], max_budget=1)
    sdk = gw.sdk(key)
    served = {}
    for asked in ("qwen-local", "openai/gpt-4o", "llama-3", "hosted_vllm/qwen"):
        reply = await sdk.chat.completions.create(model=asked, messages=MESSAGES,  # type: ignore[arg-type]
                                                  max_tokens=4)
        served[asked] = reply.model                     # the mock echoes the model it was sent
    assert served == {"qwen-local": "qwen-local", "openai/gpt-4o": "gpt-4o",
                      "llama-3": "llama-3", "hosted_vllm/qwen": "qwen"}
    stream = await sdk.chat.completions.create(model="openai/o3", messages=MESSAGES,  # type: ignore[arg-type]
                                               max_tokens=4, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream
                    if c.choices]) == "mock mock mock mock"
    rows = await ledger_rows(gw, key)
    charged = {r["model"]: (r["spend_nanos"], r["status"]) for r in rows}
    one = round((PROMPT_TOKENS * PRICE_IN + 4 * PRICE_OUT) * 1e9)
    assert charged == {"qwen-local": (one, "success"), "openai/gpt-4o": (2 * one, "success"),
                       "llama-3": (3 * one, "success"), "hosted_vllm/qwen": (3 * one, "success"),
                       "openai/o3": (2 * one, "success")}
    # A key may name a model only a wildcard serves; it is listed and usable, nothing else.
    narrow = await gw.new_key(models=["openai/gpt-4o-mini"], max_budget=1)
    sdk = gw.sdk(narrow)
    assert await listed(sdk) == ["openai/gpt-4o-mini"]
    reply = await sdk.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES,  # type: ignore[arg-type]
                                              max_tokens=4)
    assert reply.model == "gpt-4o-mini"
    with pytest.raises(openai.AuthenticationError) as denied:
        await sdk.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert denied.value.body["code"] == "model_access_denied"  # type: ignore[index]
    # The patterns themselves only when asked for, as LiteLLM's return_wildcard_routes.
    assert await listed(gw.sdk(key)) == ["qwen-local"]
    resp = await gw.http.get("/v1/models", params={"return_wildcard_routes": "true"},
                             headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in resp.json()["data"]] == ["qwen-local", "openai/*", "*"]


async def test_access_groups_wildcard_keys_and_all_team_models(
        start: Start, mock_upstream: str) -> None:
    gw = await start([entry("gpt-a", "openai/qwen-local", mock_upstream, access_groups=["beta"]),
                      entry("gpt-b", "openai/qwen-local", mock_upstream),
                      entry("openai/*", "openai/*", mock_upstream, access_groups=["beta"])])
    beta = gw.sdk(await gw.new_key(models=["beta"], max_budget=1))
    for model in ("gpt-a", "openai/anything"):
        await beta.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        await beta.chat.completions.create(model="gpt-b", messages=MESSAGES)  # type: ignore[arg-type]
    assert await listed(beta) == ["gpt-a"]
    patterned = gw.sdk(await gw.new_key(models=["openai/*"], max_budget=1))
    await patterned.chat.completions.create(model="openai/x", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        await patterned.chat.completions.create(model="gpt-a", messages=MESSAGES)  # type: ignore[arg-type]
    # all-team-models is accepted; without a team it grants nothing (LiteLLM's auth check).
    team = gw.sdk(await gw.new_key(models=["all-team-models"], max_budget=1))
    with pytest.raises(openai.AuthenticationError):
        await team.chat.completions.create(model="gpt-a", messages=MESSAGES)  # type: ignore[arg-type]
    assert await listed(team) == []
    # Names nothing serves are refused when the key is made.
    resp = await gw.admin("POST", "/key/generate", json={"models": ["gpt-c", "beta"]})
    assert resp.status_code == 400 and "gpt-c" in resp.json()["error"]["message"]


async def test_a_text_completion_model_answers_completions_metered_and_refuses_chat(
        start: Start, mock_upstream: str) -> None:
    gw = await start([entry("base", "text-completion-openai/completions-only-base",
                            mock_upstream)])
    key = await gw.new_key(models=["base"], max_budget=1)
    sdk = gw.sdk(key)
    reply = await sdk.completions.create(model="base", prompt="one two three", max_tokens=3)
    assert reply.choices[0].text == "mock mock mock" and reply.model == "completions-only-base"
    stream = await sdk.completions.create(model="base", prompt="one two", max_tokens=5,
                                          stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == \
        "mock mock mock mock mock"
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model="base", messages=MESSAGES)  # type: ignore[arg-type]
    assert refused.value.body["code"] == "text_completion_only"  # type: ignore[index]
    assert "/v1/completions" in refused.value.body["message"]  # type: ignore[index]
    anthropic_client = await gw.http.post(
        "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": "base", "max_tokens": 8, "messages": MESSAGES})
    assert anthropic_client.status_code == 400
    assert anthropic_client.json()["type"] == "error"          # in Anthropic's shape
    assert "/v1/completions" in anthropic_client.json()["error"]["message"]
    rows = await ledger_rows(gw, key)             # the refused chats reserved and charged nothing
    assert sorted((r["call_type"], r["prompt_tokens"], r["completion_tokens"],
                   r["spend_nanos"], r["status"]) for r in rows) == [
        ("text_completion", 2, 5, round((2 * PRICE_IN + 5 * PRICE_OUT) * 1e9), "success"),
        ("text_completion", 3, 3, round((3 * PRICE_IN + 3 * PRICE_OUT) * 1e9), "success")]


async def test_health_probes_every_deployment_for_the_master_key_and_charges_nothing(
        start: Start, mock_upstream: str) -> None:
    secret_base = mock_upstream.replace("http://", "http://user:hunter2@")
    gw = await start([
        entry("good", "openai/qwen-local", secret_base),
        entry("down", "openai/x", closed_port_url()),
        entry("failing", "openai/fault-500", mock_upstream),
        entry("base", "text-completion-openai/completions-only-base", mock_upstream),
        entry("openai/*", "openai/*", mock_upstream, health_check_model="openai/probe"),
        entry("*", "*", mock_upstream)])
    key = await gw.new_key(models=["good"], max_budget=1)
    assert (await gw.http.get("/health")).status_code == 401
    resp = await gw.http.get("/health", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_only"
    resp = await gw.http.get("/health", headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert resp.status_code == 200 and "hunter2" not in resp.text
    body = resp.json()
    assert [e["model_name"] for e in body["healthy_endpoints"]] == ["good", "base", "openai/*"]
    assert [e["model_name"] for e in body["unhealthy_endpoints"]] == ["down", "failing"]
    assert (body["healthy_count"], body["unhealthy_count"]) == (3, 2)
    assert [e["model_name"] for e in body["skipped_endpoints"]] == ["*"]
    down, failing = body["unhealthy_endpoints"]
    assert "Cannot reach" in down["error"] and "500" in failing["error"]
    assert body["healthy_endpoints"][0]["api_base"] == mock_upstream
    # Not traffic: nothing charged or recorded, no deployment cooled down.
    assert gw.recorded == []  # type: ignore[attr-defined]
    assert not any(h.cooling_down for h in gw.app.router.health())
    # The other health routes still answer.
    assert (await gw.http.get("/health/liveliness")).status_code == 200
    assert (await gw.http.get("/health/readiness")).status_code == 200

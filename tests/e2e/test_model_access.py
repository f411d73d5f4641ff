"""`faregate serve` as a process, with a LiteLLM config that uses `model_name: "*"`,
`"openai/*"` and a `text-completion-openai/` model (which used to stop the gateway from
starting), driven with the openai SDK and httpx over real HTTP."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from e2e.conftest import ServedGateway, start_gateway
from support import MASTER_KEY, PRICE_IN, PRICE_OUT, env_for, stop

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
MESSAGES = [{"role": "user", "content": "ping"}]


def params(model: str, api_base: str, price: float = 1) -> dict[str, Any]:
    return {"model": model, "api_base": api_base, "input_cost_per_token": PRICE_IN * price,
            "output_cost_per_token": PRICE_OUT * price}


@pytest.fixture
def gateway(db_url: str, mock_upstream: str, tmp_path: Path) -> Iterator[ServedGateway]:
    config = {
        "model_list": [
            {"model_name": "qwen-local", "litellm_params": params("openai/qwen-local",
                                                                  mock_upstream)},
            {"model_name": "openai/*", "litellm_params": params("openai/*", mock_upstream, 2),
             "model_info": {"access_groups": ["paid"],
                            "health_check_model": "openai/gpt-4o-mini"}},
            {"model_name": "*", "litellm_params": params("*", mock_upstream, 3)},
            {"model_name": "base", "litellm_params": params(
                "text-completion-openai/completions-only-base", mock_upstream)},
        ],
        "general_settings": {"master_key": "os.environ/FAREGATE_MASTER_KEY"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **env_for(db_url, tmp_path)}
    served = start_gateway(tmp_path, env, ["--config", str(path)])
    yield served
    stop(served.proc)


def spend_rows(http: httpx.Client, key: str, count: int) -> list[dict[str, Any]]:
    for _ in range(100):            # the ledger writes in the background
        rows: list[dict[str, Any]] = http.get("/spend/logs", params={"api_key": key},
                                              headers=ADMIN).json()
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} spend rows, got {rows}")


def test_wildcards_text_completions_and_health_with_faregate_serve(
        gateway: ServedGateway) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=30) as http:
        made = http.post("/key/generate", headers=ADMIN,
                         json={"models": ["paid", "llama-3", "base"], "max_budget": 1})
        assert made.status_code == 200, made.text
        key = made.json()["key"]
        sdk = openai.OpenAI(api_key=key, base_url=gateway.base_url + "/v1", max_retries=0)
        try:
            served = {asked: sdk.chat.completions.create(
                model=asked, messages=MESSAGES, max_tokens=2).model  # type: ignore[arg-type]
                for asked in ("openai/gpt-4o", "llama-3")}
            assert served == {"openai/gpt-4o": "gpt-4o", "llama-3": "llama-3"}
            with pytest.raises(openai.AuthenticationError):      # "*" serves it; key may not
                sdk.chat.completions.create(model="mistral", messages=MESSAGES)  # type: ignore[arg-type]
            text = sdk.completions.create(model="base", prompt="a b c", max_tokens=3)
            assert text.choices[0].text == "mock mock mock"
            with pytest.raises(openai.BadRequestError) as chat:
                sdk.chat.completions.create(model="base", messages=MESSAGES)  # type: ignore[arg-type]
            assert chat.value.body["code"] == "text_completion_only"  # type: ignore[index]
            assert [m.id for m in sdk.models.list()] == ["base", "llama-3"]
        finally:
            sdk.close()
        rows = spend_rows(http, key, 3)
        assert sorted((r["model"], r["spend_nanos"]) for r in rows) == [
            ("base", round((3 * PRICE_IN + 3 * PRICE_OUT) * 1e9)),
            ("llama-3", round((8 * PRICE_IN + 2 * PRICE_OUT) * 3e9)),
            ("openai/gpt-4o", round((8 * PRICE_IN + 2 * PRICE_OUT) * 2e9))]
        health = http.get("/health", headers=ADMIN)
        assert health.status_code == 200, health.text
        body = health.json()
        assert [e["model_name"] for e in body["healthy_endpoints"]] == \
            ["qwen-local", "base", "openai/*"]
        assert body["unhealthy_count"] == 0
        assert [e["model_name"] for e in body["skipped_endpoints"]] == ["*"]
        assert len(spend_rows(http, key, 3)) == 3           # the probes charged nobody

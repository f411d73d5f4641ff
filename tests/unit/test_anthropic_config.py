"""Anthropic deployments in config.yaml, and prompt-cache token pricing (spend.pricing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from faregate.config import load
from faregate.errors import ConfigError
from faregate.money import price_to_femtos
from faregate.spend.pricing import bound_cost, cost

ENV = {"FAREGATE_MASTER_KEY": "sk-master-0123456789", "ANTHROPIC_API_KEY": "ak-secret"}


def deployment(tmp_path: Path, **params: Any) -> Any:
    litellm_params = {"model": "anthropic/claude-3-5-haiku-20241022",
                      "api_key": "os.environ/ANTHROPIC_API_KEY",
                      "input_cost_per_token": 0.0000008, "output_cost_per_token": 0.000004,
                      **params}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model_list": [
        {"model_name": "claude-haiku", "litellm_params": litellm_params,
         "model_info": {"max_output_tokens": 8192}}]}))
    return load({**ENV, "FAREGATE_DATA_DIR": str(tmp_path)}, path).deployments[0]


def test_an_anthropic_model_defaults_its_base_and_prices_cache_tokens_at_input(
        tmp_path: Path) -> None:
    d = deployment(tmp_path)
    assert (d.provider, d.upstream_model, d.api_base) == (
        "anthropic", "claude-3-5-haiku-20241022", "https://api.anthropic.com")
    assert d.api_key is not None and d.api_key.reveal() == "ak-secret"
    assert d.max_output_tokens == 8192
    assert (d.cache_read_femtos, d.cache_write_femtos) == (None, None)
    # unset cache prices: cache tokens cost what input tokens cost
    assert cost(d, 1000, 0, cache_read_tokens=400, cache_write_tokens=100) == cost(d, 1000, 0)


@pytest.mark.parametrize("base", ["http://127.0.0.1:9/v1/messages", "http://127.0.0.1:9/v1/",
                                  "http://127.0.0.1:9"])
def test_api_base_with_or_without_the_messages_path(tmp_path: Path, base: str) -> None:
    assert deployment(tmp_path, api_base=base).api_base == "http://127.0.0.1:9"


def test_an_anthropic_model_needs_an_api_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api_key is required for Anthropic"):
        deployment(tmp_path, api_key=None)


def test_cache_reads_and_writes_cost_their_own_prices_and_bound_the_dearest(
        tmp_path: Path) -> None:
    d = deployment(tmp_path, cache_read_input_token_cost=0.00000008,
                   cache_creation_input_token_cost=0.000001)
    assert d.cache_read_femtos == price_to_femtos("0.00000008")
    # 100 fresh, 1000 read, 200 written, 10 out -- in nano-dollars
    assert cost(d, 1300, 10, cache_read_tokens=1000, cache_write_tokens=200) == \
        100 * 800 + 1000 * 80 + 200 * 1000 + 10 * 4000
    # a reservation prices every prompt token as a (dearer) cache write
    assert bound_cost(d, 1300, 10) == 1300 * 1000 + 10 * 4000
    # counts larger than the prompt never make a negative charge
    assert cost(d, 10, 0, cache_read_tokens=50) == 10 * 80

"""config.yaml's router_settings and the per-deployment weight / stream_timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from faregate import config
from faregate.config import RouterSettings
from faregate.errors import ConfigError


def model(name: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": "openai/x", "api_base": "http://127.0.0.1:1/v1", "input_cost_per_token": 0,
        "output_cost_per_token": 0, **params}}


def load(tmp_path: Path, router_settings: Any = None, models: list[Any] | None = None
         ) -> config.Settings:
    raw: dict[str, Any] = {"model_list": models or [model("a"), model("b"), model("a")],
                           "general_settings": {"master_key": "sk-test-master"}}
    if router_settings is not None:
        raw["router_settings"] = router_settings
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load({"FAREGATE_DATA_DIR": str(tmp_path)}, path)


def test_defaults_are_litellm_like(tmp_path: Path) -> None:
    settings = load(tmp_path).router_settings
    assert settings == RouterSettings()
    assert (settings.num_retries, settings.allowed_fails, settings.cooldown_time_s) == (2, 3, 5.0)
    assert settings.routing_strategy == "simple-shuffle"


def test_every_setting_is_read(tmp_path: Path) -> None:
    settings = load(tmp_path, {
        "num_retries": 0, "retry_backoff": 0.5, "retry_backoff_max": 4, "allowed_fails": 1,
        "cooldown_time": 30, "routing_strategy": "simple-shuffle",
        "fallbacks": [{"a": ["b"]}, {"b": "a"}]}).router_settings
    assert settings == RouterSettings(num_retries=0, retry_backoff_s=0.5,
                                      retry_backoff_max_s=4.0, allowed_fails=1,
                                      cooldown_time_s=30.0, fallbacks={"a": ("b",), "b": ("a",)})


@pytest.mark.parametrize(("given", "meant"), [
    ("simple-shuffle", "simple-shuffle"), ("least-busy", "least-busy"),
    ("latency-based-routing", "latency-based"), ("latency-based", "latency-based")])
def test_routing_strategies_take_litellms_names(tmp_path: Path, given: str, meant: str) -> None:
    assert load(tmp_path, {"routing_strategy": given}).router_settings.routing_strategy == meant


def test_weight_and_stream_timeout_per_deployment(tmp_path: Path) -> None:
    ds = load(tmp_path, models=[model("a", weight=3, stream_timeout=2.5), model("a")]).deployments
    assert (ds[0].weight, ds[0].stream_timeout_s) == (3.0, 2.5)
    assert (ds[1].weight, ds[1].stream_timeout_s) == (1.0, None)


@pytest.mark.parametrize(("router_settings", "models", "names"), [
    ({"routing_strategy": "usage-based-routing"}, None, "usage-based-routing is not built"),
    ({"routing_strategy": ["least-busy"]}, None, "router_settings.routing_strategy"),
    ({"fallbacks": [{"a": ["nope"]}]}, None, "router_settings.fallbacks names model 'nope'"),
    ({"fallbacks": [{"nope": ["a"]}]}, None, "router_settings.fallbacks names model 'nope'"),
    ({"fallbacks": {"a": ["b"]}}, None, "router_settings.fallbacks must be a list"),
    ({"fallbacks": [{"a": [1]}]}, None, "router_settings.fallbacks must be a list"),
    ({"num_retries": -1}, None, "router_settings.num_retries"),
    ({"allowed_fails": "3"}, None, "router_settings.allowed_fails"),
    ({"cooldown_time": 0}, None, "router_settings.cooldown_time"),
    ({"retry_backoff": -1}, None, "router_settings.retry_backoff"),
    ("shuffle", None, "router_settings must be a mapping"),
    (None, [model("a", weight=0)], "litellm_params.weight"),
    (None, [model("a", stream_timeout="soon")], "litellm_params.stream_timeout"),
])
def test_bad_settings_are_refused_naming_the_setting(tmp_path: Path, router_settings: Any,
                                                     models: list[Any] | None, names: str
                                                     ) -> None:
    with pytest.raises(ConfigError, match=names.replace("(", r"\(").replace(")", r"\)")):
        load(tmp_path, router_settings, models)

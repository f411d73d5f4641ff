"""Model access as LiteLLM configures it, in the router and the key: wildcard entries and their
precedence, the name passed upstream, access groups, and what a key's `models` allows."""

from __future__ import annotations

from typing import Any

import pytest

from faregate.catalog.routing import MAX_SERVED_NAMES, MAX_WILDCARD_NAME_CHARS, Router
from faregate.config import (
    ConfigError,
    Deployment,
    RouterSettings,
    deployment_from_entry,
    wildcard_match,
)
from faregate.keys.auth import Caller
from faregate.records import KeyRecord

BASE = "http://127.0.0.1:1/v1"


def entry(name: str, model: str, **info: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": model, "api_base": BASE, "input_cost_per_token": 1e-6,
        "output_cost_per_token": 2e-6}, "model_info": info}


def deployments(*entries: dict[str, Any]) -> list[Deployment]:
    return [deployment_from_entry(e, f"model_list[{i}]", str(i)) for i, e in enumerate(entries)]


def routed(r: Router, name: str) -> tuple[str, str, str]:
    """(entry the name reached, its provider, the model name sent upstream)."""
    d = r.pick(name)
    assert d is not None, name
    return d.group, d.provider, d.upstream_model


def test_exact_names_win_then_the_most_specific_pattern_then_config_order() -> None:
    r = Router(deployments(
        entry("*", "openai/*"),                         # first in config, least specific
        entry("openai/*", "openai/*"),
        entry("openai/gpt-4*", "hosted_vllm/big-*"),
        entry("openai/gpt-4o", "openai/exact-gpt-4o"),
        entry("bedrock/*", "openai/*"),
        entry("b*", "openai/also-b")))                  # as specific as... nothing else
    assert routed(r, "openai/gpt-4o") == ("openai/gpt-4o", "openai", "exact-gpt-4o")
    assert routed(r, "openai/gpt-4o-mini") == ("openai/gpt-4*", "openai", "big-o-mini")
    assert routed(r, "openai/o3") == ("openai/*", "openai", "o3")
    assert routed(r, "bedrock/claude-v2") == ("bedrock/*", "openai", "claude-v2")
    assert routed(r, "bx") == ("b*", "openai", "also-b")         # no '*' upstream: fixed model
    assert routed(r, "llama-3") == ("*", "openai", "llama-3")
    assert r.names() == ["openai/gpt-4o"]
    assert r.patterns() == ["openai/gpt-4*", "bedrock/*", "openai/*", "b*", "*"]


def test_without_a_catch_all_an_unmatched_name_has_no_deployment() -> None:
    r = Router(deployments(entry("openai/*", "openai/*"), entry("m", "openai/m")))
    assert r.pick("anthropic/claude") is None and r.deployments("gpt-4o") == ()
    assert r.serves("openai/x") and r.serves("openai/*") and r.serves("m")
    assert not r.serves("x")


@pytest.mark.parametrize(("name", "model", "asked", "upstream"), [
    ("*", "*", "gpt-4o", "gpt-4o"),
    ("*", "*", "openai/gpt-4o", "gpt-4o"),                  # the provider's prefix is dropped
    ("*", "*", "hosted_vllm/qwen", "qwen"),
    ("*", "*", "meta/llama", "meta/llama"),                 # not a provider: passed whole
    ("*", "openai/*", "gpt-4o", "gpt-4o"),
    ("fo::*:static::*", "openai/fo::*:static::*", "fo::hi:static::there", "fo::hi:static::there"),
    ("llmengine/*", "openai/*", "llmengine/foo", "foo"),
    ("a-*-b-*", "openai/*", "a-1-b-2", "a-1-b-2"),          # more '*' matched than upstream has
    ("anthropic/*", "anthropic/*", "anthropic/claude-x", "claude-x"),
])
def test_the_name_asked_for_is_passed_on_as_litellm_does(
        name: str, model: str, asked: str, upstream: str) -> None:
    params: dict[str, Any] = {"api_key": "k"} if model.startswith("anthropic") else {}
    e = entry(name, model)
    e["litellm_params"].update(params)
    (d,) = deployments(e)
    served = d.serving(asked)
    assert served is not None
    assert (served.model_name, served.upstream_model, served.group) == (asked, upstream, name)
    assert served.deployment_id == d.deployment_id          # cooldowns and rpm are the entry's
    assert (served.input_femtos, served.output_femtos) == (d.input_femtos, d.output_femtos)


def test_a_wildcard_matches_the_whole_name_and_only_literally() -> None:
    assert wildcard_match("openai/*", "openai/gpt-4o") == ("gpt-4o",)
    assert wildcard_match("openai/*", "xopenai/gpt") is None
    assert wildcard_match("gpt-4.*", "gpt-4x1") is None           # '.' is not a regex here
    assert wildcard_match("a*b", "a-b-c") is None                 # LiteLLM matches prefixes
    assert wildcard_match("*", "") == ("",)


def test_a_name_served_through_a_wildcard_is_made_once_and_kept_bounded() -> None:
    r = Router(deployments(entry("*", "openai/*")))
    first = r.pick("gpt-4o")
    assert first is not None and r.pick("gpt-4o") is first       # same object: prepared once
    for i in range(MAX_SERVED_NAMES + 1):
        r.pick(f"name-{i}")
    assert len(r._served) <= MAX_SERVED_NAMES                    # clients invent names
    assert r.pick("gpt-4o") is not None
    # Longer than the ledger's model column: no wildcard serves it (a 400 model_not_found).
    assert r.pick("x" * MAX_WILDCARD_NAME_CHARS) is not None
    assert r.pick("x" * (MAX_WILDCARD_NAME_CHARS + 1)) is None


def test_config_refuses_a_wildcard_without_prices_or_a_star_model_under_an_exact_name() -> None:
    e = entry("openai/*", "openai/*")
    del e["litellm_params"]["input_cost_per_token"]
    with pytest.raises(ConfigError, match="applies to every model the wildcard serves"):
        deployments(e)
    with pytest.raises(ConfigError, match="has a '\\*' but model_name has none"):
        deployments(entry("gpt", "openai/*"))
    with pytest.raises(ConfigError, match="access_groups must be a list"):
        deployments(entry("m", "openai/m", access_groups="beta"))


def key(*models: str, **fields: Any) -> Caller:
    return Caller(KeyRecord(token="t", key_name="sk-...t", models=models, **fields),
                  is_master=False)


def test_access_groups_grant_their_models_and_wildcards_theirs() -> None:
    r = Router(deployments(
        entry("gpt-4o", "openai/gpt-4o", access_groups=["beta", "paid"]),
        entry("gpt-4o", "openai/gpt-4o-b", access_groups=["eu"]),     # groups of every entry
        entry("small", "openai/small"),
        entry("openai/*", "openai/*", access_groups=["beta"])))
    assert r.access_groups() == {"beta": ["gpt-4o", "openai/*"], "eu": ["gpt-4o"],
                                 "paid": ["gpt-4o"]}
    beta = key("beta")
    for name, allowed in [("gpt-4o", True), ("small", False), ("openai/o3", True)]:
        assert beta.may_use(name, r.groups(name)) is allowed, name
    assert key("eu").may_use("gpt-4o", r.groups("gpt-4o"))
    assert not key("paid").may_use("openai/o3", r.groups("openai/o3"))


@pytest.mark.parametrize(("models", "model", "allowed"), [
    ((), "anything", True),
    (("*",), "anything", True),
    (("all-proxy-models",), "anything", True),
    (("openai/*",), "openai/gpt-4o", True),
    (("openai/*",), "gpt-4o", False),
    (("openai/gpt-4*",), "openai/gpt-4o-mini", True),
    (("openai/gpt-4*",), "openai/o3", False),
    (("gpt-4o",), "gpt-4o", True),
    (("gpt-4o",), "gpt-4o-mini", False),
    (("all-team-models",), "gpt-4o", False),           # no team: it grants nothing
    (("all-team-models", "small"), "small", True),     # the rest of the list still counts
])
def test_what_a_keys_models_allow(models: tuple[str, ...], model: str, allowed: bool) -> None:
    assert key(*models).may_use(model) is allowed


def test_all_team_models_means_the_teams_models_once_teams_exist() -> None:
    record = KeyRecord(token="t", key_name="k", models=("all-team-models",))
    assert Caller(record, False, team_models=("gpt-4o",)).may_use("gpt-4o")
    assert not Caller(record, False, team_models=("gpt-4o",)).may_use("small")
    assert Caller(record, False, team_models=()).may_use("small")      # a team's [] = all


def test_a_name_served_through_a_wildcard_falls_back_as_its_pattern_says() -> None:
    r = Router(deployments(entry("openai/*", "openai/*"), entry("local", "openai/local"),
                           entry("*", "openai/*")),
               RouterSettings(fallbacks={"openai/*": ("local",), "openai/o3": ()}))
    assert r.fallbacks("openai/gpt-4o") == ("local",)
    assert r.fallbacks("openai/o3") == ()                   # its own entry wins
    assert r.fallbacks("other") == () and r.fallbacks("local") == ()

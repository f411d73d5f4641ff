"""faregate.config.load: a LiteLLM-style config.yaml plus the environment, checked at start-up."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path

import pytest

from faregate.config import DEMO_MODEL, Settings, load
from faregate.errors import ConfigError

MASTER = "sk-master-0123456789"
VLLM_KEY = "vllm-secret-abcdef"

ISSUE_CONFIG = """\
model_list:
  - model_name: qwen-local
    litellm_params:
      model: openai/qwen-local
      api_base: http://vllm.internal:8000/v1/
      api_key: os.environ/VLLM_API_KEY
      input_cost_per_token: 0.0000002
      output_cost_per_token: 0.0000008
    model_info:
      max_output_tokens: 2048

general_settings:
  master_key: os.environ/FAREGATE_MASTER_KEY
  database_url: os.environ/DATABASE_URL
"""

PG_URL = "postgresql://gw:pw@db.internal:5432/faregate"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    """An environment whose data dir is the test's own (the default is ./.faregate)."""
    return {"FAREGATE_DATA_DIR": str(tmp_path / "data"), **values}


def model_config(params: str = "", info: str = "", general: str = "") -> str:
    """One model with prices; `params`/`info`/`general` add or override YAML lines."""
    text = "model_list:\n  - model_name: m\n    litellm_params:\n"
    base = {"model": "openai/up-model", "api_base": "http://up:8000/v1",
            "input_cost_per_token": "0.000001", "output_cost_per_token": "0.000002"}
    overrides = dict(line.split(": ", 1) for line in params.splitlines() if line.strip())
    removed = {k for k, v in overrides.items() if v == "<absent>"}
    for k, v in {**base, **overrides}.items():
        if k not in removed:
            text += f"      {k}: {v}\n"
    if info:
        text += "    model_info:\n" + "".join(f"      {line}\n" for line in info.splitlines())
    if general:
        text += "general_settings:\n" + "".join(f"  {line}\n" for line in general.splitlines())
    return text


def load_model(tmp_path: Path, params: str = "", info: str = "", general: str = "",
               **environ: str) -> Settings:
    return load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER, **environ),
                write(tmp_path, model_config(params, info, general)))


# the issue's example


def test_issue_example_config(tmp_path: Path) -> None:
    settings = load(env(tmp_path, VLLM_API_KEY=VLLM_KEY, FAREGATE_MASTER_KEY=MASTER,
                        DATABASE_URL=PG_URL), write(tmp_path, ISSUE_CONFIG))
    assert settings.models() == ["qwen-local"]
    (dep,) = settings.deployments
    assert dep.model_name == "qwen-local"
    assert dep.provider == "openai"
    assert dep.upstream_model == "qwen-local"
    assert dep.api_base == "http://vllm.internal:8000/v1"          # trailing slash dropped
    assert dep.api_key is not None and dep.api_key.reveal() == VLLM_KEY
    assert dep.input_femtos == 200_000_000                          # $0.0000002
    assert dep.output_femtos == 800_000_000
    assert dep.max_output_tokens == 2048
    assert settings.master_key.reveal() == MASTER
    assert settings.master_key_source == "environment variable FAREGATE_MASTER_KEY"
    assert settings.database_url == PG_URL
    assert settings.demo_mock is False
    assert settings.disable_schema_update is False
    assert settings.redis_url is None


def test_upstream_model_keeps_its_slashes(tmp_path: Path) -> None:
    settings = load_model(tmp_path, "model: openai/Qwen/Qwen2.5-7B-Instruct")
    assert settings.deployments[0].upstream_model == "Qwen/Qwen2.5-7B-Instruct"


def test_hosted_vllm_prefix_is_openai_compatible(tmp_path: Path) -> None:
    settings = load_model(tmp_path, "model: hosted_vllm/m")
    assert settings.deployments[0].provider == "openai"


def test_environment_variables_section_fills_references(tmp_path: Path) -> None:
    text = model_config("api_key: os.environ/UP_KEY") + \
        "environment_variables:\n  UP_KEY: from-config\n"
    settings = load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, text))
    assert settings.deployments[0].api_key is not None
    assert settings.deployments[0].api_key.reveal() == "from-config"
    # the real environment wins over the file
    settings = load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER, UP_KEY="from-env"),
                    write(tmp_path, text))
    assert settings.deployments[0].api_key.reveal() == "from-env"  # type: ignore[union-attr]


def test_prices_may_come_from_model_info(tmp_path: Path) -> None:
    settings = load_model(tmp_path, "input_cost_per_token: <absent>",
                          "input_cost_per_token: 0.000003")
    assert settings.deployments[0].input_femtos == 3_000_000_000


def test_load_does_not_write_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    monkeypatch.delenv("UP_KEY", raising=False)
    text = model_config("api_key: os.environ/UP_KEY") + \
        "environment_variables:\n  UP_KEY: from-config\n"
    load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, text))
    assert "UP_KEY" not in os.environ


# prices


@pytest.mark.parametrize("missing", ["input_cost_per_token", "output_cost_per_token"])
def test_missing_price_is_an_error_that_explains_free_models(tmp_path: Path,
                                                             missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path, f"{missing}: <absent>")
    message = str(info.value)
    assert f"has no {missing}" in message
    assert "model_list[0] (m)" in message
    assert "input_cost_per_token" in message
    assert "use 0 to declare a free model" in message


def test_explicit_zero_prices_are_a_free_model(tmp_path: Path) -> None:
    settings = load_model(tmp_path, "input_cost_per_token: 0\noutput_cost_per_token: 0.0")
    assert settings.deployments[0].input_femtos == 0
    assert settings.deployments[0].output_femtos == 0


@pytest.mark.parametrize("price", ["-0.000001", "cheap", "true", ".nan"])
def test_bad_price_names_the_setting(tmp_path: Path, price: str) -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\] \(m\)\.input_cost_per_token"):
        load_model(tmp_path, f"input_cost_per_token: {price}")


def test_price_from_environment(tmp_path: Path) -> None:
    settings = load_model(tmp_path, "input_cost_per_token: os.environ/IN_PRICE",
                          IN_PRICE="0.0000000375")
    assert settings.deployments[0].input_femtos == 37_500_000


# other model settings


def test_missing_env_var_names_setting_and_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path, "api_key: os.environ/NOPE_NOT_SET")
    assert "model_list[0] (m).litellm_params.api_key" in str(info.value)
    assert "NOPE_NOT_SET" in str(info.value)
    assert "not set" in str(info.value)


@pytest.mark.parametrize("model", ["gemini/gemini-pro", "bedrock/x"])
def test_unsupported_provider(tmp_path: Path, model: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path, f"model: {model}")
    assert "model_list[0] (m).litellm_params.model" in str(info.value)
    assert repr(model.split("/")[0]) in str(info.value)


def test_model_without_provider_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"litellm_params\.model must look like 'openai/"):
        load_model(tmp_path, "model: gpt-4o")


@pytest.mark.parametrize("api_base", ["ftp://up/v1", "up:8000/v1", "<absent>", "42"])
def test_bad_api_base(tmp_path: Path, api_base: str) -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\] \(m\)\.litellm_params\.api_base"):
        load_model(tmp_path, f"api_base: {api_base}")


def test_api_base_from_environment(tmp_path: Path) -> None:
    settings = load_model(tmp_path, "api_base: os.environ/UP_BASE", UP_BASE="https://up/v1")
    assert settings.deployments[0].api_base == "https://up/v1"


@pytest.mark.parametrize("value", ["0", "-5", "many", "true", "1.5"])
def test_bad_max_output_tokens(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\] \(m\)\.model_info\.max_output_tokens"):
        load_model(tmp_path, info=f"max_output_tokens: {value}")


def test_max_tokens_alias_and_default(tmp_path: Path) -> None:
    assert load_model(tmp_path, info="max_tokens: 77").deployments[0].max_output_tokens == 77
    assert load_model(tmp_path).deployments[0].max_output_tokens == 4096


def test_model_entry_errors(tmp_path: Path) -> None:
    cases = {
        "model_list: []\n": "model_list must be a non-empty list",
        "model_list: {a: 1}\n": "model_list must be a non-empty list",
        "model_list:\n  - just-a-string\n": r"model_list\[0\] must be a mapping",
        "model_list:\n  - litellm_params: {}\n": r"model_list\[0\]\.model_name",
        "model_list:\n  - model_name: m\n    litellm_params: [1]\n":
            r"model_list\[0\] \(m\)\.litellm_params must be a mapping",
    }
    for text, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, text))


def test_model_names_are_held_to_the_storable_rule(tmp_path: Path) -> None:
    """A model_name is stored (every ledger row's model, VARCHAR(256)): one the database
    could not store is a start-up error naming the entry, never a failed ledger write."""
    def named(name: str) -> str:
        return model_config().replace("model_name: m\n", f"model_name: {name}\n")

    cases = {
        '"qwen\\0local"': r"model_list\[0\]\.model_name contains a NUL character",
        '"qwen\\ud800"': r"model_list\[0\]\.model_name contains a lone surrogate \(U\+D800\)",
        "x" * 257: r"model_list\[0\]\.model_name is 257 characters long; at most 256",
    }
    for name, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern) as info:
            load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, named(name)))
        assert "x" * 257 not in str(info.value)     # the name is not echoed whole
    longest = load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, named("y" * 256)))
    assert longest.deployments[0].model_name == "y" * 256


def test_upstream_text_is_held_to_the_storable_rule(tmp_path: Path) -> None:
    """litellm_params.model and api_base are stored with every call (the ledger's upstream,
    "<api_base>#<model>", VARCHAR(512)): a NUL, a lone surrogate or a pair too long to store is
    a start-up error naming the field; before, each call's row went to the dead letters."""
    cases = {
        'model: "openai/x\\0y"': r"litellm_params\.model contains a NUL character",
        'model: "openai/x\\udc80"': r"litellm_params\.model contains a lone surrogate",
        'api_base: "http://up:8000/v1\\0"': r"litellm_params\.api_base contains a NUL",
        f"api_base: http://up/{'p' * 494}":
            r"litellm_params\.api_base is 504 characters long; at most 503",
    }
    for params, pattern in cases.items():
        with pytest.raises(ConfigError, match=pattern):
            load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, model_config(params)))
    longest = f"api_base: http://up/{'p' * 493}"        # 503 characters: 512 with '#up-model'
    config = load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, model_config(longest)))
    assert len(config.deployments[0].api_base) == 503


def test_second_model_is_named_in_errors(tmp_path: Path) -> None:
    text = model_config() + (
        "  - model_name: second\n"
        "    litellm_params: {model: openai/x, api_base: 'http://x/v1'}\n")
    with pytest.raises(ConfigError, match=r"model_list\[1\] \(second\) has no input_cost_per"):
        load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, text))


# the file itself


def test_bad_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "model_list: [unclosed\n  general: {\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_config_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, text))


def test_unreadable_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), missing)
    assert str(missing) in str(info.value)


def test_general_settings_must_be_a_mapping(tmp_path: Path) -> None:
    text = model_config() + "general_settings: [1, 2]\n"
    with pytest.raises(ConfigError, match="general_settings must be a mapping"):
        load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), write(tmp_path, text))


# master key


def test_master_key_not_starting_with_sk(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path, general="master_key: not-a-key-1234")
    assert "general_settings.master_key" in str(info.value)
    assert "'sk-'" in str(info.value)
    assert "not-a-key-1234" not in str(info.value)       # never echo the secret


@pytest.mark.parametrize("name", ["FAREGATE_MASTER_KEY", "LITELLM_MASTER_KEY",
                                  "PROXY_MASTER_KEY"])
def test_master_key_from_env_must_start_with_sk(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=f"environment variable {name}"):
        load({"FAREGATE_DATA_DIR": str(tmp_path / "data"), name: "password123"},
             write(tmp_path, model_config()))


def test_master_key_env_reference_in_general_settings_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"general_settings\.master_key.*MY_KEY"):
        load(env(tmp_path), write(tmp_path, model_config(general="master_key: os.environ/MY_KEY")))
    with pytest.raises(ConfigError, match="environment variable MY_KEY"):
        load(env(tmp_path, MY_KEY="nope-12345"),
             write(tmp_path, model_config(general="master_key: os.environ/MY_KEY")))


@pytest.mark.parametrize(("value", "rule"), [
    ("12345678", "must be a string"),                 # YAML reads it as an int
    ("password123", "must start with 'sk-'"),
    ("sk-", "only the 'sk-' prefix"),
    ("'sk-12 34'", "space or a control character"),
    ('"sk-12\\t34"', "space or a control character"),
])
def test_master_key_refusal_names_the_rule_broken(tmp_path: Path, value: str,
                                                  rule: str) -> None:
    with pytest.raises(ConfigError, match=rule) as info:
        load_model(tmp_path, general=f"master_key: {value}")
    assert "general_settings.master_key" in str(info.value)
    assert "sk-12" not in str(info.value) and "password123" not in str(info.value)


def test_litellm_docs_master_key_is_accepted_with_a_warning(tmp_path: Path) -> None:
    """LiteLLM's quick starts use sk-1234: a drop-in starts from their config, loudly (the
    warning is logged by `faregate serve` once its log format is set)."""
    settings = load_model(tmp_path, general="master_key: sk-1234")
    assert settings.master_key.reveal() == "sk-1234"
    warning = settings.master_key_warning()
    assert warning is not None and "7 characters long" in warning
    assert "general_settings.master_key" in warning
    assert "sk-1234" not in warning                      # never echo the secret


def test_strong_master_key_starts_quietly(tmp_path: Path) -> None:
    settings = load_model(tmp_path, general="master_key: sk-" + "a" * 29)
    assert settings.master_key_warning() is None


MASTER_ENVS = {"FAREGATE_MASTER_KEY": "sk-faregate-111", "LITELLM_MASTER_KEY": "sk-litellm-222",
               "PROXY_MASTER_KEY": "sk-proxy-333"}


def test_master_key_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, model_config(general="master_key: sk-general-000"))
    plain = write(tmp_path, model_config(), "plain.yaml")
    data = {"FAREGATE_DATA_DIR": str(tmp_path / "data")}

    settings = load({**data, **MASTER_ENVS}, path)
    assert settings.master_key.reveal() == "sk-general-000"
    assert settings.master_key_source == "general_settings.master_key"

    order = list(MASTER_ENVS)
    for i, name in enumerate(order):
        environ = {**data, **{n: MASTER_ENVS[n] for n in order[i:]}}
        settings = load(environ, plain)
        assert settings.master_key.reveal() == MASTER_ENVS[name]
        assert settings.master_key_source == f"environment variable {name}"
    assert not (tmp_path / "data" / "master_key").exists()     # never minted while configured


def test_empty_env_master_key_falls_through(tmp_path: Path) -> None:
    settings = load(env(tmp_path, FAREGATE_MASTER_KEY="", LITELLM_MASTER_KEY="sk-litellm-222"),
                    write(tmp_path, model_config()))
    assert settings.master_key.reveal() == "sk-litellm-222"


def test_minted_master_key_is_stable_and_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    environ = {"FAREGATE_DATA_DIR": str(data_dir)}
    first = load(environ, None)
    key_file = data_dir / "master_key"
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.master_key.reveal().startswith("sk-")
    assert len(first.master_key.reveal()) >= 32
    assert str(key_file) in first.master_key_source

    second = load(environ, None)                                  # a restart
    assert second.master_key.reveal() == first.master_key.reveal()
    assert second.master_key == first.master_key

    other = load({"FAREGATE_DATA_DIR": str(tmp_path / "other")}, None)
    assert other.master_key.reveal() != first.master_key.reveal()  # really random


def test_minted_key_file_is_reused_not_overwritten(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / "master_key").write_text("sk-chosen-by-operator\n")
    settings = load({"FAREGATE_DATA_DIR": str(data_dir)}, None)
    assert settings.master_key.reveal() == "sk-chosen-by-operator"


def test_corrupt_master_key_file_is_an_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / "master_key").write_text("garbage\n")
    with pytest.raises(ConfigError, match="master key from file"):
        load({"FAREGATE_DATA_DIR": str(data_dir)}, None)


# demo mode


def test_no_config_path_is_the_demo(tmp_path: Path) -> None:
    settings = load(env(tmp_path, FAREGATE_MASTER_KEY=MASTER), None)
    assert settings.demo_mock is True
    assert settings.models() == [DEMO_MODEL] == ["demo"]
    dep = settings.deployments[0]
    assert dep.input_femtos > 0 and dep.output_femtos > 0        # the demo has real prices
    assert settings.database_url == \
        f"sqlite:///{(tmp_path / 'data' / 'faregate.db').resolve()}"


def test_config_with_models_is_not_the_demo(tmp_path: Path) -> None:
    assert load_model(tmp_path).demo_mock is False


# database url


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "http://db", "faregate.db"])
def test_bad_database_url_scheme(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        load_model(tmp_path, DATABASE_URL=url)
    with pytest.raises(ConfigError, match="database_url"):
        load_model(tmp_path, general=f"database_url: {url}")


@pytest.mark.parametrize("url", ["sqlite:////tmp/x.db", "postgresql://u@h/db",
                                 "postgres://u@h/db", "postgresql+asyncpg://u@h/db"])
def test_good_database_urls(tmp_path: Path, url: str) -> None:
    assert load_model(tmp_path, DATABASE_URL=url).database_url == url


def test_general_database_url_beats_env(tmp_path: Path) -> None:
    settings = load_model(tmp_path, general="database_url: postgresql://general@h/db",
                          DATABASE_URL="postgresql://env@h/db")
    assert settings.database_url == "postgresql://general@h/db"


def test_database_url_reference_to_unset_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"general_settings\.database_url.*DATABASE_URL"):
        load_model(tmp_path, general="database_url: os.environ/DATABASE_URL")


# flags and other settings


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True), ("TRUE", True),
    ("false", False), ("0", False), ("no", False), ("", False), (None, False),
])
def test_disable_schema_update(tmp_path: Path, value: str | None, expected: bool) -> None:
    environ = env(tmp_path, FAREGATE_MASTER_KEY=MASTER)
    if value is not None:
        environ["DISABLE_SCHEMA_UPDATE"] = value
    assert load(environ, None).disable_schema_update is expected


def test_redis_url(tmp_path: Path) -> None:
    assert load_model(tmp_path, REDIS_URL="redis://r:6379").redis_url == "redis://r:6379"
    assert load_model(tmp_path, general="redis_url: redis://g:6379",
                      REDIS_URL="redis://r:6379").redis_url == "redis://g:6379"


def test_bad_max_request_body_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"general_settings\.max_request_body_bytes"):
        load_model(tmp_path, general="max_request_body_bytes: -1")


def test_bad_timeout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"litellm_params\.timeout"):
        load_model(tmp_path, "timeout: 0")
    assert load_model(tmp_path, "timeout: 2.5").deployments[0].timeout_s == 2.5


# secrets stay secret


def test_repr_never_shows_secrets(tmp_path: Path) -> None:
    settings = load(env(tmp_path, VLLM_API_KEY=VLLM_KEY, FAREGATE_MASTER_KEY=MASTER,
                        DATABASE_URL=PG_URL), write(tmp_path, ISSUE_CONFIG))
    for text in (repr(settings), str(settings), repr(settings.deployments),
                 repr(settings.master_key), str(settings.master_key)):
        assert MASTER not in text
        assert VLLM_KEY not in text
    assert "********" in repr(settings)      # the secrets are there, only masked


def test_repr_never_shows_minted_master_key(tmp_path: Path) -> None:
    settings = load({"FAREGATE_DATA_DIR": str(tmp_path / "data")}, None)
    assert settings.master_key.reveal() not in repr(settings)


# /metrics

def test_metrics_need_auth_by_default_and_may_be_opened(tmp_path: Path) -> None:
    assert load_model(tmp_path).metrics_require_auth is True
    assert load_model(tmp_path).metrics_token is None
    opened = load_model(tmp_path, general="require_auth_for_metrics_endpoint: false")
    assert opened.metrics_require_auth is False


def test_metrics_token_from_the_environment_or_a_reference(tmp_path: Path) -> None:
    token = "scrape-token-0123456789abcdef"
    settings = load_model(tmp_path, FAREGATE_METRICS_TOKEN=token)
    assert settings.metrics_token is not None and settings.metrics_token.matches(token)
    assert token not in repr(settings)
    referenced = load_model(tmp_path, general="metrics_token: os.environ/SCRAPE",
                            SCRAPE=token)
    assert referenced.metrics_token is not None and referenced.metrics_token.matches(token)


@pytest.mark.parametrize("token", ["short", "has a space 0123456789", "tab\t0123456789abcdef"])
def test_a_weak_or_garbled_metrics_token_names_the_setting(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError, match="metrics_token"):
        load_model(tmp_path, FAREGATE_METRICS_TOKEN=token)

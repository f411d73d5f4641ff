"""Salt-key settings: FAREGATE_SALT_KEY (or LITELLM_SALT_KEY), FAREGATE_SALT_KEY_PREVIOUS."""

from __future__ import annotations

from pathlib import Path

import pytest

from faregate import config
from faregate.errors import ConfigError

KEY = "k" * 32
OTHER = "o" * 32


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"FAREGATE_MASTER_KEY": "sk-master-0123", "FAREGATE_DATA_DIR": str(tmp_path),
            **values}


def test_no_salt_key_by_default(tmp_path: Path) -> None:
    settings = config.load(env(tmp_path), None)
    assert settings.salt_key is None and settings.previous_salt_keys == ()
    assert settings.stored_models_poll_interval_s == 10.0


def test_faregate_name_wins_over_litellm_name(tmp_path: Path) -> None:
    settings = config.load(env(tmp_path, FAREGATE_SALT_KEY=KEY, LITELLM_SALT_KEY=OTHER), None)
    assert settings.salt_key is not None and settings.salt_key.reveal() == KEY
    only_litellm = config.load(env(tmp_path, LITELLM_SALT_KEY=OTHER), None)
    assert only_litellm.salt_key is not None and only_litellm.salt_key.reveal() == OTHER


def test_previous_keys_are_comma_separated(tmp_path: Path) -> None:
    settings = config.load(env(tmp_path, FAREGATE_SALT_KEY=KEY,
                               FAREGATE_SALT_KEY_PREVIOUS=f" {OTHER} ,, {'p' * 20}"), None)
    assert [k.reveal() for k in settings.previous_salt_keys] == [OTHER, "p" * 20]
    assert KEY not in repr(settings) and OTHER not in repr(settings)


@pytest.mark.parametrize("name", ["FAREGATE_SALT_KEY", "FAREGATE_SALT_KEY_PREVIOUS"])
def test_short_salt_keys_are_refused_naming_the_setting(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env(tmp_path, **{name: "short-key"}), None)
    assert name in str(info.value) and "short-key" not in str(info.value)


def test_new_salt_key_comes_only_from_the_named_variable() -> None:
    assert config.new_salt_key({"NEW": KEY}, "NEW").reveal() == KEY
    with pytest.raises(ConfigError, match="environment variable NEW"):
        config.new_salt_key({}, "NEW")
    with pytest.raises(ConfigError, match="at least 16"):
        config.new_salt_key({"NEW": "tiny"}, "NEW")


def test_poll_interval_must_be_positive(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("general_settings:\n  stored_models_poll_interval_s: 0\n")
    with pytest.raises(ConfigError, match="stored_models_poll_interval_s"):
        config.load(env(tmp_path), cfg)

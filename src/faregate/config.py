"""Settings: parsed once at start-up from a LiteLLM-style config.yaml and the environment.

`load(environ, path)` is the only entry point. Every problem raises ConfigError with a message
that names the setting, so a bad deployment fails at start, not on the first request.
Nothing here writes os.environ.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from faregate.errors import ConfigError
from faregate.money import price_to_femtos
from faregate.secret import Secret

ENV_PREFIX = "os.environ/"
MASTER_KEY_ENV_NAMES = ("FAREGATE_MASTER_KEY", "LITELLM_MASTER_KEY", "PROXY_MASTER_KEY")
MASTER_KEY_PREFIX = "sk-"
# Shorter master keys are accepted (LiteLLM's docs use sk-1234) with a warning at every start.
STRONG_MASTER_KEY_CHARS = 32
DEMO_MODEL = "demo"
TRUE_WORDS = {"1", "true", "yes", "on"}

# Chat templates add tokens the client never sent (role markers, default system prompts).
# The budget's prompt bound adds these; the gateway raises them when an upstream reports more.
DEFAULT_PROMPT_OVERHEAD_TOKENS = 64
DEFAULT_PER_MESSAGE_OVERHEAD_TOKENS = 8
DEFAULT_MAX_OUTPUT_TOKENS = 4096
ANTHROPIC_API_BASE = "https://api.anthropic.com"
# The width of every stored model name: the ledger's `model`, the models table's `model_name`.
MODEL_NAME_CHARS = 256
UPSTREAM_CHARS = 511        # faregate_spend_logs.upstream is 512 with the '#' between
MIN_SALT_KEY_CHARS = 16


@dataclass(frozen=True)
class Deployment:
    """One entry of model_list: a public model name served by one upstream."""

    model_name: str
    provider: str                 # "openai" = any OpenAI-compatible server (vLLM, gateway, OpenAI)
    upstream_model: str
    api_base: str
    api_key: Secret | None
    input_femtos: int             # price per prompt token, femto-dollars
    output_femtos: int            # price per completion token, femto-dollars
    max_output_tokens: int
    prompt_overhead_tokens: int
    per_message_overhead_tokens: int
    timeout_s: float
    deployment_id: str = ""       # unique per model_list entry: "<model_name>#<index>"
    rpm: int | None = None        # limits on the upstream as a whole, across all keys
    tpm: int | None = None
    weight: float = 1.0           # share of the model's traffic (routing_strategy simple-shuffle)
    stream_timeout_s: float | None = None   # longest wait for a stream's next bytes
    # Prompt tokens read from / written to a provider's prompt cache; None: the input price.
    cache_read_femtos: int | None = None
    cache_write_femtos: int | None = None
    access_groups: tuple[str, ...] = ()     # model_info.access_groups: names a key may list
    # A deployment made for one name a wildcard entry serves: that entry's model_name ("" for
    # an entry of model_list itself). Metrics label it by this, so that clients cannot invent
    # label values.
    wildcard: str = ""
    health_check_model: str | None = None   # model_info.health_check_model: what /health asks

    @functools.cached_property
    def shown_base(self) -> str:
        """api_base as errors, logs, health and the ledger show it: no credentials, no query."""
        return without_credentials(self.api_base)

    @property
    def is_wildcard(self) -> bool:
        """A model_list entry whose model_name is a pattern ("*", "openai/*", ...)."""
        return WILDCARD in self.model_name

    @property
    def group(self) -> str:
        """The model_list name this deployment was configured under (the pattern, for a
        name served through a wildcard)."""
        return self.wildcard or self.model_name

    def serving(self, name: str) -> Deployment | None:
        """This wildcard entry made into the deployment of `name`, or None if its pattern does
        not match `name`. As LiteLLM: each `*` of litellm_params.model takes the text the
        pattern's `*` matched, in order (the whole name if there are more of those). When the
        whole name reaches an OpenAI-compatible upstream (litellm_params.model "*" or
        "openai/*"), a leading openai/, hosted_vllm/ or vllm/ is the provider's prefix and is
        dropped. Prices, limits and credentials are the entry's."""
        segments = wildcard_match(self.model_name, name)
        if segments is None:
            return None
        upstream = self.upstream_model
        if WILDCARD in upstream:
            if len(segments) > upstream.count(WILDCARD):
                upstream = name
            else:
                for segment in segments:
                    upstream = upstream.replace(WILDCARD, segment, 1)
        if self.provider == "openai" and self.upstream_model == WILDCARD:
            prefix, _, rest = upstream.partition("/")
            if rest and prefix in OPENAI_COMPATIBLE_PREFIXES:
                upstream = rest
        return dataclasses.replace(self, model_name=name, upstream_model=upstream,
                                   wildcard=self.model_name)


WILDCARD = "*"
OPENAI_COMPATIBLE_PREFIXES = frozenset({"openai", "hosted_vllm", "vllm"})
TEXT_COMPLETION_PROVIDER = "text-completion-openai"


def is_wildcard(name: str) -> bool:
    return WILDCARD in name


def wildcard_match(pattern: str, name: str) -> tuple[str, ...] | None:
    """The texts each `*` of `pattern` matched in `name` (greedy, as LiteLLM's regex), or None
    if `pattern` does not match the whole of `name`. Other characters match only themselves."""
    if WILDCARD not in pattern:
        return () if pattern == name else None
    if pattern.endswith(WILDCARD) and pattern.count(WILDCARD) == 1:     # "openai/*": common
        prefix = pattern[:-1]
        return (name[len(prefix):],) if name.startswith(prefix) else None
    regex = "".join("(.*)" if part == WILDCARD else re.escape(part)
                    for part in re.split(r"(\*)", pattern) if part)
    found = re.fullmatch(regex, name, re.DOTALL)
    return None if found is None else found.groups()


def wildcard_specificity(pattern: str) -> tuple[int, int]:
    """How specific a pattern is: more literal characters first, then longer. The most
    specific pattern that matches a name serves it ("openai/gpt-4*" before "openai/*" before
    "*")."""
    return len(pattern) - pattern.count(WILDCARD), len(pattern)


# router_settings.routing_strategy: LiteLLM's names (and our short ones) -> the Router's names.
ROUTING_STRATEGIES = {"simple-shuffle": "simple-shuffle", "least-busy": "least-busy",
                      "latency-based-routing": "latency-based", "latency-based": "latency-based"}


@dataclass(frozen=True)
class RouterSettings:
    """LiteLLM's router_settings: retries, fallbacks and cooldowns of failing deployments.

    Defaults follow LiteLLM's proxy: 2 retries, a deployment cools down for 5 s after more than
    3 failures in a minute."""

    num_retries: int = 2
    retry_backoff_s: float = 0.1        # first backoff; doubles per retry, with jitter
    retry_backoff_max_s: float = 2.0
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allowed_fails: int = 3              # failures per minute a deployment may have
    cooldown_time_s: float = 5.0
    routing_strategy: str = "simple-shuffle"


@dataclass(frozen=True)
class Settings:
    deployments: tuple[Deployment, ...]
    master_key: Secret
    master_key_source: str
    database_url: str = field(repr=False)       # may hold a password
    disable_schema_update: bool
    redis_url: str | None = field(repr=False)
    data_dir: Path
    max_request_body_bytes: int = 8 * 1024 * 1024
    redis_failure_mode: str = "fail_closed"     # or "local": per-process limits / replicas
    replicas: int = 1                           # how many replicas share the limits
    spend_flush_interval_s: float = 0.2
    key_cache_ttl_s: float = 60.0
    demo_mock: bool = False       # serve a built-in mock upstream for the demo model
    # Database outage: serve known keys from memory, keep spend on disk (LiteLLM's setting).
    allow_requests_on_db_unavailable: bool = False
    spend_buffer_dir: Path = Path(".faregate/spend-buffer")   # the on-disk spend journal
    graceful_shutdown_timeout_s: float = 30.0   # SIGTERM: how long in-flight requests may finish
    router_settings: RouterSettings = field(default_factory=RouterSettings)
    salt_key: Secret | None = None                  # seals credentials stored in the database
    previous_salt_keys: tuple[Secret, ...] = ()     # still accepted for opening (rotation)
    stored_models_poll_interval_s: float = 10.0     # how often replicas re-read stored models
    log_format: str = "json"                    # or "text" (FAREGATE_LOG_FORMAT)
    log_requests: bool = False                  # one access line per OpenAI-route request
    # /metrics shows key aliases and their spend: it asks for the master key or metrics_token.
    metrics_require_auth: bool = True
    metrics_token: Secret | None = None         # a scraper's bearer token for /metrics only
    prometheus_multiproc_dir: str | None = None  # --workers: where workers share metrics
    # The budget_id an end user gets when its first request creates it (LiteLLM's name).
    max_end_user_budget_id: str | None = None
    # "http1": plain-http upstreams through the lean HTTP/1.1 client; "aiohttp": all via aiohttp
    upstream_http_client: str = "http1"
    extra: dict[str, Any] = field(default_factory=dict)

    def models(self) -> list[str]:
        return list(dict.fromkeys(d.model_name for d in self.deployments))

    def master_key_warning(self) -> str | None:
        """What to say at start about a master key short enough to guess (None: long enough)."""
        length = len(self.master_key.reveal())
        if length >= STRONG_MASTER_KEY_CHARS:
            return None
        return (f"the master key from {self.master_key_source} is {length} characters long: "
                "anyone who guesses it administers every key and spends every budget. Use at "
                f"least {STRONG_MASTER_KEY_CHARS} random characters (sk- followed by `openssl "
                "rand -hex 24`) anywhere but a laptop")


def without_credentials(url: str) -> str:
    """`url` less any user:password@ and query string (some upstreams take keys there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "(unparseable)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def load(environ: Mapping[str, str], path: str | Path | None) -> Settings:
    """Build Settings from a config file (optional) and the environment."""
    raw, env, general, data_dir = _sources(environ, path)

    model_list = raw.get("model_list")
    demo = path is None or model_list is None
    if demo:
        model_list = [{"model_name": DEMO_MODEL, "litellm_params": {
            "model": "openai/mock-model", "api_base": "http://127.0.0.1:0/v1",
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}]
    deployments = _deployments(model_list, env)

    master_key, source = _master_key(general, env, data_dir)
    salt_key, previous_salt_keys = _salt_keys(env)
    database_url = _database_url(general, env, data_dir)
    redis_url = env.resolve(general.get("redis_url"), "general_settings.redis_url") \
        or env.get("REDIS_URL")
    return Settings(
        deployments=deployments,
        master_key=master_key,
        master_key_source=source,
        database_url=database_url,
        disable_schema_update=(env.get("DISABLE_SCHEMA_UPDATE") or "").lower() in TRUE_WORDS,
        redis_url=redis_url or None,
        data_dir=data_dir,
        max_request_body_bytes=_positive_int(
            general.get("max_request_body_bytes", 8 * 1024 * 1024),
            "general_settings.max_request_body_bytes"),
        redis_failure_mode=_choice(general.get("redis_failure_mode", "fail_closed"),
                                   ("fail_closed", "local"),
                                   "general_settings.redis_failure_mode"),
        replicas=_positive_int(general.get("replicas", 1), "general_settings.replicas"),
        demo_mock=demo,
        # LiteLLM's name for the seconds between spend batch writes (its default is 10 s).
        spend_flush_interval_s=_positive_number(general.get("proxy_batch_write_at", 0.2),
                                                "general_settings.proxy_batch_write_at"),
        allow_requests_on_db_unavailable=_bool(
            general.get("allow_requests_on_db_unavailable", False),
            "general_settings.allow_requests_on_db_unavailable"),
        spend_buffer_dir=Path(env.resolve(general.get("spend_buffer_dir"),
                                          "general_settings.spend_buffer_dir")
                              or env.get("FAREGATE_SPEND_BUFFER_DIR")
                              or data_dir / "spend-buffer"),
        graceful_shutdown_timeout_s=_positive_number(
            general.get("graceful_shutdown_timeout_s", 30),
            "general_settings.graceful_shutdown_timeout_s"),
        router_settings=_router_settings(raw.get("router_settings"), deployments),
        salt_key=salt_key,
        previous_salt_keys=previous_salt_keys,
        stored_models_poll_interval_s=_positive_number(
            general.get("stored_models_poll_interval_s", 10.0),
            "general_settings.stored_models_poll_interval_s"),
        log_format=_choice(env.get("FAREGATE_LOG_FORMAT") or general.get("log_format", "json"),
                           ("json", "text"), "FAREGATE_LOG_FORMAT / general_settings.log_format"),
        log_requests=_bool(general.get("log_requests", False), "general_settings.log_requests"),
        metrics_require_auth=_bool(
            general.get("require_auth_for_metrics_endpoint",
                        _mapping(raw.get("litellm_settings"), "litellm_settings")
                        .get("require_auth_for_metrics_endpoint", True)),
            "general_settings.require_auth_for_metrics_endpoint"),
        metrics_token=_metrics_token(general, env),
        prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        max_end_user_budget_id=_optional_text(general.get("max_end_user_budget_id"),
                                              "general_settings.max_end_user_budget_id"),
        upstream_http_client=_choice(
            env.get("FAREGATE_UPSTREAM_HTTP_CLIENT")
            or general.get("upstream_http_client", "http1"), ("http1", "aiohttp"),
            "FAREGATE_UPSTREAM_HTTP_CLIENT / general_settings.upstream_http_client"),
    )


def _optional_text(value: Any, setting: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise ConfigError(f"{setting} must be a budget_id (text of at most 256 characters)")
    return value


def load_database_url(environ: Mapping[str, str], path: str | Path | None) -> str:
    """Only the database URL: what `faregate migrate` (the migration job) needs, no more."""
    _, env, general, data_dir = _sources(environ, path)
    return _database_url(general, env, data_dir)


def load_salt_keys(environ: Mapping[str, str], path: str | Path | None
                   ) -> tuple[Secret | None, tuple[Secret, ...]]:
    """The current salt key and the previous ones: what `faregate rotate-salt-key` needs."""
    _, env, _, _ = _sources(environ, path)
    return _salt_keys(env)


def new_salt_key(environ: Mapping[str, str], name: str) -> Secret:
    """The key a rotation moves to, read from the environment variable `name`: a secret never
    travels on a command line, where `ps` and shell histories would show it."""
    value = environ.get(name)
    if not value:
        raise ConfigError(f"set the new salt key in the environment variable {name} "
                          "(e.g. from `openssl rand -hex 32`)")
    if len(value) < MIN_SALT_KEY_CHARS:
        raise ConfigError(f"{name}: a salt key must be at least {MIN_SALT_KEY_CHARS} "
                          "characters; make one with `openssl rand -hex 32`")
    return Secret(value)


def _salt_keys(env: _Env) -> tuple[Secret | None, tuple[Secret, ...]]:
    """FAREGATE_SALT_KEY (or LiteLLM's name) seals; FAREGATE_SALT_KEY_PREVIOUS, comma-separated,
    are still accepted for opening while a rotation is under way."""
    current = env.get("FAREGATE_SALT_KEY") or env.get("LITELLM_SALT_KEY")
    previous = [p.strip() for p in (env.get("FAREGATE_SALT_KEY_PREVIOUS") or "").split(",")]
    for value, setting in [(current, "FAREGATE_SALT_KEY"),
                           *((p, "FAREGATE_SALT_KEY_PREVIOUS") for p in previous if p)]:
        if value is not None and len(value) < MIN_SALT_KEY_CHARS:
            raise ConfigError(f"{setting}: a salt key must be at least {MIN_SALT_KEY_CHARS} "
                              "characters; make one with `openssl rand -hex 32`")
    return (Secret(current) if current else None,
            tuple(Secret(p) for p in previous if p))


def _sources(environ: Mapping[str, str], path: str | Path | None
             ) -> tuple[dict[str, Any], _Env, dict[str, Any], Path]:
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    extra_env = raw.get("environment_variables") or {}
    if not isinstance(extra_env, dict):
        raise ConfigError("environment_variables must be a mapping of NAME: value")
    env = _Env({**{str(k): str(v) for k, v in extra_env.items()}, **environ})
    general = _mapping(raw.get("general_settings"), "general_settings")
    return raw, env, general, Path(env.get("FAREGATE_DATA_DIR") or ".faregate")


class _Env:
    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def resolve(self, value: Any, setting: str) -> Any:
        """Replace an `os.environ/NAME` reference by the variable's value."""
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):]
            if name not in self._values:
                raise ConfigError(
                    f"{setting} refers to the environment variable {name}, which is not set")
            return self._values[name]
        return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping with model_list, general_settings")
    return raw


def _mapping(value: Any, setting: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{setting} must be a mapping")
    return value


def _positive_int(value: Any, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{setting} must be a positive integer, got {value!r}")
    return value


def _bool(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS | {"0", "false", "no", "off"}:
        return value.lower() in TRUE_WORDS
    raise ConfigError(f"{setting} must be true or false, got {value!r}")


def _choice(value: Any, choices: tuple[str, ...], setting: str) -> str:
    if value not in choices:
        raise ConfigError(f"{setting} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _positive_number(value: Any, setting: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{setting} must be a positive number, got {value!r}")
    return float(value)


def _deployments(model_list: Any, env: _Env) -> tuple[Deployment, ...]:
    if not isinstance(model_list, list) or not model_list:
        raise ConfigError("model_list must be a non-empty list of models")
    return tuple(_deployment(entry, i, env) for i, entry in enumerate(model_list))


def _deployment(entry: Any, index: int, env: _Env) -> Deployment:
    where = f"model_list[{index}]"
    deployment = _parse_deployment(entry, where, str(index), env)
    # Every call's ledger row names the upstream "<api_base>#<model>" (the rule /model/new
    # applies in catalog/stored_models.py): both must be storable text of bounded width.
    where = f"{where} ({deployment.model_name})"
    _check_stored_text(deployment.upstream_model, f"{where}.litellm_params.model",
                       UPSTREAM_CHARS)
    _check_stored_text(deployment.shown_base, f"{where}.litellm_params.api_base",
                       UPSTREAM_CHARS - len(deployment.upstream_model))
    return deployment


def deployment_from_entry(entry: Any, where: str, id_suffix: str,
                          environ: Mapping[str, str] | None = None) -> Deployment:
    """One model entry ({model_name, litellm_params, model_info}) -> Deployment, with the same
    rules as config.yaml's model_list (models stored through /model/new use this too).
    `where` names the entry in errors; the deployment id is `<model_name>#<id_suffix>`."""
    return _parse_deployment(entry, where, id_suffix, _Env(environ or {}))


def _parse_deployment(entry: Any, where: str, id_suffix: str, env: _Env) -> Deployment:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping with model_name and litellm_params")
    name = entry.get("model_name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.model_name must be a non-empty string")
    _check_stored_text(name, f"{where}.model_name", MODEL_NAME_CHARS)
    where = f"{where} ({name})"
    params = _mapping(entry.get("litellm_params"), f"{where}.litellm_params")
    info = _mapping(entry.get("model_info"), f"{where}.model_info")

    model = params.get("model")
    if model == WILDCARD:       # LiteLLM's "any model": the name asked for is passed on
        model = f"openai/{WILDCARD}"
    if not isinstance(model, str) or "/" not in model:
        raise ConfigError(f"{where}.litellm_params.model must look like 'openai/<upstream model>'")
    provider, upstream_model = model.split("/", 1)
    if provider not in {"openai", "hosted_vllm", "vllm", "anthropic", TEXT_COMPLETION_PROVIDER}:
        raise ConfigError(f"{where}.litellm_params.model: provider {provider!r} is not supported; "
                          "use openai/<model> for any OpenAI-compatible server, "
                          f"{TEXT_COMPLETION_PROVIDER}/<model> for one that serves only "
                          "/v1/completions, or anthropic/<model> for Anthropic's Messages API")
    if is_wildcard(upstream_model) and not is_wildcard(name):
        raise ConfigError(f"{where}.litellm_params.model {model!r} has a '*' but model_name "
                          "has none: only a wildcard model_name (e.g. \"openai/*\") can say "
                          "what the '*' stands for")
    api_base = env.resolve(params.get("api_base"), f"{where}.litellm_params.api_base")
    api_key = env.resolve(params.get("api_key"), f"{where}.litellm_params.api_key")
    if provider == "anthropic":
        api_base = _anthropic_base(api_base or ANTHROPIC_API_BASE)
        if not api_key:
            raise ConfigError(f"{where}.litellm_params.api_key is required for Anthropic "
                              "models (e.g. os.environ/ANTHROPIC_API_KEY)")
    if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.litellm_params.api_base must be an http(s) URL")

    prices = {}
    for setting in ("input_cost_per_token", "output_cost_per_token"):
        value = params.get(setting, info.get(setting))
        if value is None:
            served = " (its price applies to every model the wildcard serves)" \
                if is_wildcard(name) else ""
            raise ConfigError(
                f"{where} has no {setting}: a model without a price makes every call cost 0 "
                "and budgets never bind. Set input_cost_per_token and output_cost_per_token "
                f"in litellm_params{served} (use 0 to declare a free model on purpose)")
        try:
            prices[setting] = price_to_femtos(env.resolve(value, setting), f"{where}.{setting}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    for setting in ("cache_read_input_token_cost", "cache_creation_input_token_cost"):
        value = params.get(setting, info.get(setting))
        if value is not None:
            try:
                prices[setting] = price_to_femtos(env.resolve(value, setting),
                                                  f"{where}.{setting}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc

    max_out = info.get("max_output_tokens", info.get("max_tokens", DEFAULT_MAX_OUTPUT_TOKENS))
    return Deployment(
        model_name=name,
        provider=provider if provider in {"anthropic", TEXT_COMPLETION_PROVIDER} else "openai",
        upstream_model=upstream_model,
        api_base=api_base.rstrip("/"),
        api_key=Secret(str(api_key)) if api_key else None,
        input_femtos=prices["input_cost_per_token"],
        output_femtos=prices["output_cost_per_token"],
        max_output_tokens=_positive_int(max_out, f"{where}.model_info.max_output_tokens"),
        prompt_overhead_tokens=_non_negative_int(
            info.get("prompt_overhead_tokens", DEFAULT_PROMPT_OVERHEAD_TOKENS),
            f"{where}.model_info.prompt_overhead_tokens"),
        per_message_overhead_tokens=_non_negative_int(
            info.get("per_message_overhead_tokens", DEFAULT_PER_MESSAGE_OVERHEAD_TOKENS),
            f"{where}.model_info.per_message_overhead_tokens"),
        timeout_s=_positive_number(params.get("timeout", 600), f"{where}.litellm_params.timeout"),
        deployment_id=f"{name}#{id_suffix}",
        rpm=_optional_positive_int(params.get("rpm"), f"{where}.litellm_params.rpm"),
        tpm=_optional_positive_int(params.get("tpm"), f"{where}.litellm_params.tpm"),
        weight=_positive_number(params.get("weight", 1), f"{where}.litellm_params.weight"),
        stream_timeout_s=None if params.get("stream_timeout") is None else _positive_number(
            params.get("stream_timeout"), f"{where}.litellm_params.stream_timeout"),
        cache_read_femtos=prices.get("cache_read_input_token_cost"),
        cache_write_femtos=prices.get("cache_creation_input_token_cost"),
        access_groups=_access_groups(info.get("access_groups"), f"{where}.model_info"),
        health_check_model=_health_check_model(info.get("health_check_model"),
                                               f"{where}.model_info"),
    )


def _check_stored_text(text: str, field: str, max_chars: int) -> None:
    """A config value that every ledger row stores (model_name as `model`, api_base and
    litellm_params.model as `upstream`): the rule the admin API applies to what it stores
    (wire/storable.py), here at start-up, so that no call can write a row the database refuses.
    The value is not echoed: it is what is wrong."""
    if len(text) > max_chars:
        raise ConfigError(f"{field} is {len(text)} characters long; at most {max_chars} are "
                          "stored with every request: shorten it")
    if "\x00" in text:
        raise ConfigError(f"{field} contains a NUL character (U+0000), which the database "
                          "cannot store; remove it")
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{field} contains a lone surrogate (U+{ord(text[exc.start]):04X}), "
                          "which is not valid Unicode text; write it as UTF-8 text") from None


def _access_groups(value: Any, where: str) -> tuple[str, ...]:
    """model_info.access_groups: names a key's `models` may list to use this model."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
        raise ConfigError(f"{where}.access_groups must be a list of non-empty names, e.g. "
                          "[\"beta-models\"]")
    clash = [g for g in value if is_wildcard(g)]
    if clash:
        raise ConfigError(f"{where}.access_groups: {clash[0]!r} has a '*'; a group's name "
                          "must not look like a wildcard pattern")
    return tuple(dict.fromkeys(value))


def _health_check_model(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or is_wildcard(value):
        raise ConfigError(f"{where}.health_check_model must be a model name without '*' "
                          "(what GET /health asks a wildcard deployment for)")
    return value


def _anthropic_base(api_base: Any) -> Any:
    """Anthropic's base URL without the path the client adds: LiteLLM configs give it with or
    without `/v1` or `/v1/messages`."""
    if not isinstance(api_base, str):
        return api_base
    base = api_base.rstrip("/")
    for suffix in ("/v1/messages", "/v1"):
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return base


def _router_settings(value: Any, deployments: tuple[Deployment, ...]) -> RouterSettings:
    router = _mapping(value, "router_settings")
    strategy = router.get("routing_strategy", "simple-shuffle")
    if not isinstance(strategy, str) or strategy not in ROUTING_STRATEGIES:
        raise ConfigError(f"router_settings.routing_strategy {strategy!r} is not supported; "
                          f"use one of: {', '.join(ROUTING_STRATEGIES)} (usage-based-routing "
                          "is not built: give deployments rpm/tpm, which routing respects)")
    backoff = router.get("retry_backoff", 0.1)
    return RouterSettings(
        num_retries=_non_negative_int(router.get("num_retries", 2), "router_settings.num_retries"),
        retry_backoff_s=0.0 if backoff == 0 else _positive_number(
            backoff, "router_settings.retry_backoff"),
        retry_backoff_max_s=_positive_number(router.get("retry_backoff_max", 2.0),
                                             "router_settings.retry_backoff_max"),
        fallbacks=_fallbacks(router.get("fallbacks"), {d.model_name for d in deployments}),
        allowed_fails=_non_negative_int(router.get("allowed_fails", 3),
                                        "router_settings.allowed_fails"),
        cooldown_time_s=_positive_number(router.get("cooldown_time", 5),
                                         "router_settings.cooldown_time"),
        routing_strategy=ROUTING_STRATEGIES[strategy],
    )


def _fallbacks(value: Any, models: set[str]) -> dict[str, tuple[str, ...]]:
    """LiteLLM's shape: a list of one-entry mappings, [{"model-a": ["model-b", ...]}, ...]."""
    if value is None:
        return {}
    shape = ("router_settings.fallbacks must be a list like "
             "[{\"model-a\": [\"model-b\", \"model-c\"]}]")
    if not isinstance(value, list):
        raise ConfigError(shape)
    out: dict[str, tuple[str, ...]] = {}
    for entry in value:
        if not isinstance(entry, dict):
            raise ConfigError(shape)
        for model, targets in entry.items():
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ConfigError(shape)
            for name in (model, *targets):
                if name not in models:
                    raise ConfigError(f"router_settings.fallbacks names model {name!r}, which "
                                      f"is not in model_list (models: {', '.join(sorted(models))})")
            out[model] = tuple(t for t in targets if t != model)
    return out


def _optional_positive_int(value: Any, setting: str) -> int | None:
    return None if value is None else _positive_int(value, setting)


def _non_negative_int(value: Any, setting: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{setting} must be an integer >= 0, got {value!r}")
    return value


def _master_key(general: dict[str, Any], env: _Env, data_dir: Path) -> tuple[Secret, str]:
    """Find the master key; mint one only once, ever, for the embedded default.

    A key minted on every start would orphan every virtual key issued before it
    (the runbook's gotcha), so the minted key is written to the data directory and reused.
    """
    configured = general.get("master_key")
    if configured is not None:
        value = env.resolve(configured, "general_settings.master_key")
        source = (f"environment variable {configured[len(ENV_PREFIX):]}"
                  if str(configured).startswith(ENV_PREFIX) else "general_settings.master_key")
        return _checked_master(value, source), source
    for name in MASTER_KEY_ENV_NAMES:
        if env.get(name):
            return _checked_master(env.get(name), f"environment variable {name}"), \
                f"environment variable {name}"
    key_file = data_dir / "master_key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: a process starting at the
        # same moment either wins the link or reads the winner's complete key.
        draft = data_dir / f".master_key.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("sk-" + secrets.token_urlsafe(32) + "\n")
        try:
            os.link(draft, key_file)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    value = key_file.read_text().strip()
    source = f"file {key_file} (minted once; set FAREGATE_MASTER_KEY to choose your own)"
    return _checked_master(value, source), source


def _metrics_token(general: dict[str, Any], env: _Env) -> Secret | None:
    """general_settings.metrics_token (an os.environ/NAME reference) or FAREGATE_METRICS_TOKEN:
    what Prometheus sends as its bearer token, so that it need not hold the master key."""
    setting = "general_settings.metrics_token (or FAREGATE_METRICS_TOKEN)"
    value = env.resolve(general.get("metrics_token"), "general_settings.metrics_token") \
        or env.get("FAREGATE_METRICS_TOKEN")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) < 16 or value != value.strip() \
            or any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"{setting} must be at least 16 printable characters without "
                          "spaces (e.g. `openssl rand -hex 24`)")
    return Secret(value)


def _checked_master(value: Any, source: str) -> Secret:
    """The master key, or a ConfigError naming the one rule it breaks (never its value).

    A short key is accepted, loudly (Settings.master_key_warning, logged by `faregate serve`
    once its log format is set): LiteLLM's docs and quick starts use `sk-1234`, and a drop-in
    must start from their config.
    """
    where = f"the master key from {source}"
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string (got a {type(value).__name__}); quote it "
                          "in YAML")
    if not value.startswith(MASTER_KEY_PREFIX):
        raise ConfigError(f"{where} must start with '{MASTER_KEY_PREFIX}' (as LiteLLM's "
                          f"does), e.g. sk- followed by `openssl rand -hex 24`")
    if len(value) == len(MASTER_KEY_PREFIX):
        raise ConfigError(f"{where} is only the '{MASTER_KEY_PREFIX}' prefix; add at least "
                          "one character after it (32 random ones: `openssl rand -hex 24`)")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"{where} contains a space or a control character, which an "
                          "'Authorization: Bearer' header cannot carry; remove it")
    return Secret(value)


def _database_url(general: dict[str, Any], env: _Env, data_dir: Path) -> str:
    url = env.resolve(general.get("database_url"), "general_settings.database_url") \
        or env.get("DATABASE_URL")
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(data_dir / 'faregate.db').resolve()}"
    if not isinstance(url, str) or not url.startswith(("sqlite://", "postgresql://",
                                                        "postgres://", "postgresql+")):
        raise ConfigError("database_url (or DATABASE_URL) must be sqlite:///path or "
                          "postgresql://user:password@host:port/db")
    return url

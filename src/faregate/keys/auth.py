"""Who is calling: the master key, a valid virtual key, or nobody (AuthError)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from faregate.config import is_wildcard, wildcard_match
from faregate.errors import AuthError, ExpiredKey
from faregate.keys.directory import KeyDirectory
from faregate.keys.tokens import MAX_KEY_CHARS, PREFIX, display_name, hash_key
from faregate.records import KeyPayers, KeyRecord
from faregate.secret import Secret

ALL_MODELS = "all-proxy-models"
ANY_MODEL = "*"                     # LiteLLM's other spelling of every model
ALL_TEAM_MODELS = "all-team-models"
# Names in a key's `models` that are no model of the gateway's.
SPECIAL_MODEL_NAMES = frozenset({ALL_MODELS, ANY_MODEL, ALL_TEAM_MODELS})


@dataclass(frozen=True, slots=True)
class Caller:
    key: KeyRecord
    is_master: bool
    version: str = "0"
    # The models of the key's team, which `all-team-models` stands for; None: no team (then
    # it grants nothing, as LiteLLM decides for a key without a team).
    team_models: tuple[str, ...] | None = None
    # What pays above the key (its user, team, member, organization), as loaded with it, and
    # (Redis mode) the version of each, by scope, read before its row.
    payers: KeyPayers | None = None
    payer_versions: Mapping[str, str] = field(default_factory=dict)

    def may_use(self, model: str, groups: Collection[str] = ()) -> bool:
        """Whether the key may call `model` (the name served, after its aliases), as LiteLLM
        decides: no list = every model; else the name itself, `all-proxy-models` or `*`, a
        wildcard pattern matching it (`openai/*`), or an access group in `groups` (the
        groups of the entry that serves `model`); `all-team-models` stands for its team's.
        A key in a team may use only what the team may use too (a team's [] = all)."""
        models = self.key.models
        team = self.team_models
        if team is not None and team and not _allows(team, model, groups):
            return False
        if not models or model in models:
            return True
        if ALL_TEAM_MODELS in models and team is not None:
            return True             # the team's list was checked above
        return _allows(models, model, groups)


def _allows(models: tuple[str, ...], model: str, groups: Collection[str]) -> bool:
    """`model` is in `models` by name, `all-proxy-models`/`*`, an access group or a pattern."""
    if model in models or ALL_MODELS in models or ANY_MODEL in models:
        return True
    if any(g in models for g in groups):
        return True
    return any(is_wildcard(m) and wildcard_match(m, model) is not None for m in models)


def bearer(authorization: str | None, api_key: str | None) -> str:
    """The key from `Authorization: Bearer sk-...` (or `x-api-key`/`api-key`)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("Malformed Authorization header: expected 'Authorization: Bearer "
                            "sk-...'", code="invalid_auth_header")
        return value.strip()
    if api_key:
        return api_key.strip()
    raise AuthError("No API key provided. Send your virtual key as 'Authorization: Bearer "
                    "sk-...'", code="missing_api_key")


class Authenticator:
    def __init__(self, master_key: Secret, directory: KeyDirectory,
                 now: Callable[[], datetime]) -> None:
        self._master_key = master_key
        self._directory = directory
        self._now = now
        master = master_key.reveal()
        self._master = Caller(KeyRecord(token=hash_key(master), key_name=display_name(master),
                                        key_alias="master"), is_master=True)

    def forget(self, token: str) -> None:
        self._directory.forget(token)

    async def caller(self, authorization: str | None, api_key: str | None) -> Caller:
        presented = bearer(authorization, api_key)
        if self._master_key.matches(presented):
            return self._master
        if len(presented) > MAX_KEY_CHARS:
            raise AuthError(f"Invalid API key: longer than {MAX_KEY_CHARS} characters, so not "
                            "a faregate key", code="invalid_api_key")
        if not presented.startswith(PREFIX):
            raise AuthError("Invalid API key format: faregate keys start with 'sk-'",
                            code="invalid_api_key")
        return await self._resolve(hash_key(presented))

    async def reload(self, caller: Caller) -> Caller:
        """`caller` decided again from its key's stored row (after another replica changed
        it): it may now be blocked, deleted or expired, or have other limits."""
        self._directory.forget(caller.key.token)
        return await self._resolve(caller.key.token)

    async def _resolve(self, token: str) -> Caller:
        """The caller holding the key whose hash is `token`, or AuthError/ExpiredKey."""
        key, version, above, versions = await self._directory.lookup_payers(token)
        if key is not None and self._directory.shared and (
                key.blocked or (key.expires is not None and key.expires <= self._now())
                or _blocked_above(above) is not None):
            # A refusal read from a cached copy must not outlive an unblock or an extension
            # made on another replica: look again before refusing.
            self._directory.forget(token)
            key, version, above, versions = await self._directory.lookup_payers(token)
        if key is None:
            raise AuthError("Invalid API key: it is unknown or was deleted. Ask your admin "
                            "for a key from /key/generate", code="invalid_api_key")
        if key.blocked:
            raise AuthError(f"Key {key.key_name} is blocked. An admin can lift it with "
                            "/key/unblock", code="key_blocked")
        if key.expires is not None and key.expires <= self._now():
            raise ExpiredKey(f"Key {key.key_name} expired at {key.expires.isoformat()}. "
                             "Ask your admin for a new key", code="expired_key")
        refusal = _blocked_above(above)
        if refusal is not None:
            raise refusal
        team = above.team if above is not None else None
        return Caller(key, is_master=False, version=version,
                      team_models=team.models if team is not None else None, payers=above,
                      payer_versions=versions)


def _blocked_above(above: KeyPayers | None) -> AuthError | None:
    """A blocked team or organization refuses its keys, as LiteLLM does (401, its wording)."""
    if above is None:
        return None
    if above.team is not None and above.team.blocked:
        return AuthError(f"Team={above.team.team_id} is blocked. Update via /team/unblock if "
                         "you are an admin", code="team_blocked")
    org = above.organization
    if org is not None and org.blocked and (above.team is not None
                                             or above.key.team_id is None):
        return AuthError(f"Organization={org.organization_id} is blocked. Ask your admin to "
                         "unblock it", code="organization_blocked")
    return None

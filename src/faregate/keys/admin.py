"""Key administration: the business of /key/* (the handlers only parse and render).

Every change lands in the database first, then replaces the directory's entry, so the next
request on this process sees it at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from faregate.accounts.key_owners import KeyOwners
from faregate.accounts.terms import Terms, record_terms
from faregate.admission import periods
from faregate.admission.demand import Admission, key_scope
from faregate.errors import InvalidRequest, NotFound
from faregate.keys.auth import SPECIAL_MODEL_NAMES
from faregate.keys.directory import KeyDirectory
from faregate.keys.tokens import MAX_KEY_CHARS, PREFIX, display_name, hash_key, new_key
from faregate.money import nanos_to_dollars
from faregate.records import KeyRecord
from faregate.storage.protocols import DuplicateAlias, KeyStore
from faregate.wire.storable import check_stored_size

KeyChanged = Callable[[KeyRecord | None, str], Awaitable[None]]
# Settings stored as one JSON document each: each may be at most MAX_STORED_JSON_BYTES.
_JSON_COLUMNS = frozenset({"models", "metadata", "model_rpm_limit", "model_tpm_limit",
                           "aliases"})


@dataclass(frozen=True)
class KeySettings(Terms):
    """The settable fields of a key, its terms and the rest, in LiteLLM's names; None = not
    given."""

    models: list[str] | None = None
    duration: str | None = None
    key_alias: str | None = None
    metadata: dict[str, Any] | None = None
    model_rpm_limit: dict[str, int] | None = None
    model_tpm_limit: dict[str, int] | None = None
    aliases: dict[str, str] | None = None
    blocked: bool | None = None
    soft_budget: float | None = None
    tags: list[str] | None = None
    user_id: str | None = None
    team_id: str | None = None
    budget_id: str | None = None


# LiteLLM's documented /key/generate and /key/update fields that faregate does not enforce yet,
# and why. Each is refused by name (400, code field_not_supported) rather than stored and
# ignored, unless its value asks for nothing (null, [], {}, false: LiteLLM's UI and SDKs send
# those as defaults).
NOT_SUPPORTED_YET: dict[str, str] = {
    "organization_id": "organizations arrive with issue 14's hierarchy (/organization/*)",
    "model_max_budget": "per-model budgets are not enforced yet; use max_budget, or "
                        "model_rpm_limit/model_tpm_limit",
    "budget_fallbacks": "per-model budgets (model_max_budget) are not enforced yet",
    "allowed_routes": "a virtual key already calls only the LLM routes and reads its own "
                      "/key/info and /spend/logs; narrowing that is not enforced yet",
    "allowed_passthrough_routes": "faregate has no pass-through routes",
    "permissions": "per-key permissions are not enforced yet",
    "object_permission": "per-key MCP/vector-store permissions are not enforced yet",
    "guardrails": "faregate runs no guardrails",
    "disable_global_guardrails": "faregate runs no guardrails",
    "policies": "faregate runs no guardrail policies",
    "enforced_params": "required request params are not enforced yet",
    "allowed_cache_controls": "faregate has no response cache",
    "config": "LiteLLM deprecated per-key config",
    "router_settings": "per-key router settings are not enforced yet; routing is config.yaml's",
    "prompts": "faregate has no prompt management",
    "access_group_ids": "LiteLLM's unified access groups (/access_group/*) are not offered; "
                        "list a model_info.access_groups name in 'models' instead",
    "allowed_vector_store_indexes": "faregate serves no vector stores",
    "rpm_limit_type": "rpm_limit is always enforced exactly (guaranteed throughput is not "
                      "offered)",
    "tpm_limit_type": "tpm_limit is always enforced exactly (guaranteed throughput is not "
                      "offered)",
    "auto_rotate": "scheduled key rotation is not offered yet; call /key/regenerate",
    "rotation_interval": "scheduled key rotation is not offered yet; call /key/regenerate",
    "spend": "a key's spend is the sum of its ledger rows; it cannot be set",
    "soft_budget_cooldown": "faregate sends no soft-budget alerts",
    "logging": "per-key logging callbacks are not offered",
}
# Accepted values of fields that change nothing here: every faregate key is LiteLLM's
# "llm_api"-like key (LLM routes plus reading its own state); faregate sends no email.
ACCEPTED_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "key_type": (("default", "llm_api"), "a faregate virtual key calls the LLM routes and "
                 "reads its own /key/info ('default' or 'llm_api'); management and read-only "
                 "keys are not offered yet"),
    "send_invite_email": ((False,), "faregate sends no email"),
}
_NOTHING: tuple[Any, ...] = (None, [], {}, False, "")
# Kept in the key's metadata, as LiteLLM keeps tags: no column of their own.
_IN_METADATA = ("tags", "soft_budget")


def check_supported(body: dict[str, Any]) -> None:
    """A 400 naming the first field of `body` that faregate would otherwise ignore."""
    for name, value in body.items():
        if name in NOT_SUPPORTED_YET and not any(
                value == nothing and type(value) is type(nothing) for nothing in _NOTHING):
            raise InvalidRequest(f"'{name}' is not supported yet: {NOT_SUPPORTED_YET[name]}. "
                                 "Leave it out (see docs/admin-api.md for every key field)",
                                 param=name, code="field_not_supported")
        if name in ACCEPTED_ONLY and value is not None:
            accepted, why = ACCEPTED_ONLY[name]
            if not any(value == ok and type(value) is type(ok) for ok in accepted):
                raise InvalidRequest(f"'{name}'={value!r} is not supported yet: {why}",
                                     param=name, code="field_not_supported")


class KeyAdmin:
    def __init__(self, storage: KeyStore, directory: KeyDirectory, budgets: Admission,
                 now: Callable[[], datetime], models: Callable[[], Collection[str]],
                 on_change: KeyChanged | None = None, *,
                 is_master_key: Callable[[str], bool],
                 may_name: Callable[[str], bool] | None = None,
                 owners: KeyOwners | None = None) -> None:
        self._storage = storage
        # A virtual key equal to the master key would be charged for the master key's calls
        # (they share a hash) while the master key is never refused: no key may be it.
        self._is_master_key = is_master_key
        self._directory = directory
        self._budgets = budgets
        self._now = now
        self._models = models     # read at each call: models stored through /model/new count
        # Other names a key's `models` may list: a wildcard pattern, a name one serves, an
        # access group (the router knows them).
        self._may_name = may_name or (lambda name: False)
        self._on_change = on_change
        self._owners = owners     # user_id/team_id: the user made if new, the team checked

    async def _changed(self, record: KeyRecord | None, token: str) -> None:
        """Other replicas must see the change before the admin call returns."""
        if self._on_change is not None:
            await self._on_change(record, token)

    async def generate(self, settings: KeySettings, key: str | None = None,
                       given: Collection[str] = ()) -> tuple[str, KeyRecord]:
        self._check_custom_key(key, "key")
        key = key or new_key()
        now = self._now()
        changes = self._changes(settings, set(given) | {"models"}, now)
        record = KeyRecord(token=hash_key(key), key_name=display_name(key), created_at=now,
                           updated_at=now, **changes)
        if await self._storage.get_key(record.token) is not None:
            raise InvalidRequest("This key already exists", param="key")
        made = await self._check_owners(record)
        try:
            await self._storage.insert_key(record)
        except DuplicateAlias:
            await self._unmake(made)
            raise InvalidRequest(f"key_alias {record.key_alias!r} is taken by another key",
                                 param="key_alias") from None
        self._directory.put(record)
        return key, record

    async def info(self, token: str) -> KeyRecord:
        record = await self._storage.get_key(token)
        if record is None:
            raise NotFound("No such key. Pass the key (sk-...) or its hash as `key`",
                           code="key_not_found")
        return record

    async def update(self, token: str, settings: KeySettings,
                     given: Collection[str]) -> KeyRecord:
        current = await self.info(token)
        changes = self._changes(settings, set(given), self._now(), current.metadata)
        made = None
        if changes.keys() & {"user_id", "team_id", "models", "budget_id"}:
            made = await self._check_owners(current.evolve(**changes))
        try:
            record = await self._storage.update_key(token, changes)
        except DuplicateAlias:
            await self._unmake(made)
            raise InvalidRequest(f"key_alias {settings.key_alias!r} is taken by another key",
                                 param="key_alias") from None
        if record is None:
            raise NotFound("The key was deleted meanwhile", code="key_not_found")
        self._directory.put(record)
        if "budget_duration" in changes:
            self._budgets.change_period(key_scope(record.token), record.budget_reset_at)
        await self._changed(record, token)
        return record

    async def set_blocked(self, token: str, blocked: bool) -> KeyRecord:
        return await self.update(token, KeySettings(blocked=blocked), {"blocked"})

    async def delete(self, tokens: list[str]) -> list[str]:
        deleted = await self._storage.delete_keys(tokens)
        for token in tokens:
            self._directory.forget(token)
            self._budgets.forget(key_scope(token))
        for token in deleted:
            await self._changed(None, token)
        return deleted

    async def regenerate(self, token: str, key: str | None = None) -> tuple[str, KeyRecord]:
        """A new secret for the same key: settings, spend and ledger stay; the old one dies."""
        await self.info(token)
        self._check_custom_key(key, "new_key")
        key = key or new_key()
        record = await self._storage.replace_token(token, hash_key(key), display_name(key))
        if record is None:
            raise NotFound("The key was deleted meanwhile", code="key_not_found")
        self._directory.forget(token)
        self._budgets.forget(key_scope(token))
        self._directory.put(record)
        await self._changed(None, token)
        return key, record

    async def list(self, page: int, page_size: int, user_id: str | None = None,
                   team_id: str | None = None) -> tuple[list[KeyRecord], int]:
        """A page of keys, and how many there are; with user_id/team_id, theirs only."""
        return await self._storage.list_keys(page, page_size, user_id, team_id)

    async def _check_owners(self, record: KeyRecord) -> str | None:
        """Every check first, then the user made if new (its id returned, for _unmake)."""
        if self._owners is not None and record.budget_id is not None:
            await self._owners.check_budget(record.budget_id)
        if self._owners is not None and (record.user_id or record.team_id):
            return await self._owners.check(record.user_id, record.team_id, record.models)
        return None

    async def _unmake(self, user_id: str | None) -> None:
        """A refused key takes back the user made for it (a refused call leaves nothing)."""
        if self._owners is not None:
            await self._owners.unmake(user_id)

    def view(self, record: KeyRecord) -> dict[str, Any]:
        """A key as LiteLLM's API shows it (spend in dollars, for the current budget period)."""
        return {
            "token": record.token, "key_name": record.key_name, "key_alias": record.key_alias,
            "models": list(record.models), "spend": nanos_to_dollars(
                self._budgets.period_spend(record)),
            "total_spend": nanos_to_dollars(self._budgets.lifetime_spend(record)),
            "max_budget": None if record.max_budget_nanos is None
            else nanos_to_dollars(record.max_budget_nanos),
            "budget_duration": record.budget_duration,
            "budget_reset_at": _iso(record.budget_reset_at), "expires": _iso(record.expires),
            "metadata": record.metadata, "tpm_limit": record.tpm_limit,
            "rpm_limit": record.rpm_limit, "max_parallel_requests": record.max_parallel_requests,
            "model_rpm_limit": record.model_rpm_limit, "model_tpm_limit": record.model_tpm_limit,
            "aliases": record.aliases, "blocked": record.blocked,
            "tags": record.metadata.get("tags") or [],
            **self._soft_budget_view(record),
            "created_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
            "user_id": record.user_id, "team_id": record.team_id,
            "budget_id": record.budget_id,
        }

    def _soft_budget_view(self, record: KeyRecord) -> dict[str, Any]:
        """soft_budget and whether this period's spend has reached it: a marker for whoever
        reads /key/info (faregate sends no alerts), never a refusal."""
        soft = record.metadata.get("soft_budget")
        if not isinstance(soft, int | float) or isinstance(soft, bool):
            return {"soft_budget": None, "soft_budget_reached": False}
        spent = nanos_to_dollars(self._budgets.period_spend(record))
        return {"soft_budget": soft, "soft_budget_reached": spent >= soft}

    def _check_custom_key(self, key: str | None, param: str) -> None:
        if key is None:
            return
        if not key.startswith(PREFIX) or not 16 <= len(key) <= MAX_KEY_CHARS:
            raise InvalidRequest(f"A custom '{param}' must start with 'sk-' and be 16 to "
                                 f"{MAX_KEY_CHARS} characters long", param=param)
        if self._is_master_key(key):
            raise InvalidRequest(f"'{param}' is the master key; a virtual key must be another "
                                 "value (or leave it out for a generated one)", param=param,
                                 code="master_key_reused")

    def _changes(self, s: KeySettings, given: set[str], now: datetime,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """The record's changes from the fields `given`; `metadata`: the key's stored one (an
        update), whose tags and soft_budget survive a new metadata that leaves them out."""
        out = record_terms(s.given_terms(given), now)
        if "models" in given:
            models = s.models or []
            known = set(self._models())
            unknown = [m for m in models if m not in known and m not in SPECIAL_MODEL_NAMES
                       and not self._may_name(m)]
            if unknown:
                raise InvalidRequest(f"Unknown model(s) {unknown}; this gateway serves "
                                     f"{sorted(known)}", param="models")
            out["models"] = tuple(models)
        if "duration" in given:
            duration = self._duration(s.duration, "duration")
            out["expires"] = None if duration is None else periods.add(now, duration)
        for name in ("model_rpm_limit", "model_tpm_limit"):
            if name in given:
                limits = getattr(s, name) or {}
                known = set(self._models())
                unknown = [m for m in limits if m not in known]
                if unknown:
                    raise InvalidRequest(f"'{name}' names unknown model(s) {unknown}",
                                         param=name)
                if any(v < 0 for v in limits.values()):
                    raise InvalidRequest(f"'{name}' values must be >= 0", param=name)
                out[name] = dict(limits)
        if "aliases" in given:
            out["aliases"] = self._aliases(s.aliases or {})
        if "key_alias" in given:
            out["key_alias"] = s.key_alias
        if given & {"metadata", *_IN_METADATA}:
            out["metadata"] = self._metadata(s, given, metadata or {})
        if "blocked" in given:
            out["blocked"] = bool(s.blocked)
        for name in ("user_id", "team_id", "budget_id"):
            if name in given:
                out[name] = getattr(s, name) or None
        for name in _JSON_COLUMNS & set(out):
            check_stored_size(out[name], name)
        return out

    @staticmethod
    def _metadata(s: KeySettings, given: set[str], stored: dict[str, Any]) -> dict[str, Any]:
        """The metadata to store: the given one (else the stored one), with tags and
        soft_budget kept from the stored one unless given (as fields or inside metadata)."""
        out = dict(s.metadata or {}) if "metadata" in given else dict(stored)
        for name in _IN_METADATA:
            if name in given:
                value = getattr(s, name)
                if value is None:
                    out.pop(name, None)
                else:
                    out[name] = value
            elif name not in out and name in stored:
                out[name] = stored[name]
        soft = out.get("soft_budget")
        if soft is not None and (isinstance(soft, bool) or not isinstance(soft, int | float)
                                 or soft < 0):
            raise InvalidRequest("'soft_budget' must be a number of dollars >= 0",
                                 param="soft_budget")
        tags = out.get("tags")
        if tags is not None and (not isinstance(tags, list)
                                 or not all(isinstance(t, str) for t in tags)):
            raise InvalidRequest("'tags' must be a list of strings", param="tags")
        return out

    def _aliases(self, aliases: dict[str, str]) -> dict[str, str]:
        """Each alias must name a model this gateway serves (checked now, so that a typo is
        found by the admin, not by the key's first caller)."""
        known = set(self._models())
        unknown = sorted({target for target in aliases.values() if target not in known})
        if unknown:
            raise InvalidRequest(f"'aliases' points at unknown model(s) {unknown}; this gateway "
                                 f"serves {sorted(known)}", param="aliases")
        if any(not name for name in aliases):
            raise InvalidRequest("'aliases' may not contain an empty name", param="aliases")
        return dict(aliases)

    @staticmethod
    def _duration(value: str | None, param: str) -> str | None:
        if value is None:
            return None
        try:
            return periods.validate(value)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=param) from None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None

"""Models kept in the database (/model/new): validated like config.yaml's, credentials sealed.

`ModelCatalog` owns the stored models' lifecycle: it validates an entry with config.py's rules,
seals its secret params (sealing.py) before they reach the database, and keeps the Router's
table = config deployments + stored deployments, their credentials opened into `Secret`s only in
memory. Every replica re-reads the table every `poll_interval_s` on a background task, so a
change made on one replica reaches the others without touching the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from faregate.catalog.routing import Router
from faregate.catalog.sealing import Sealer, SealingError, is_sealed
from faregate.config import Deployment, deployment_from_entry
from faregate.errors import ConfigError, InvalidRequest, NotFound
from faregate.money import FEMTOS_PER_DOLLAR
from faregate.records import StoredModel
from faregate.storage.protocols import DuplicateModelId, ModelStore
from faregate.wire.storable import LEDGER_UPSTREAM_CHARS, check_stored_size

log = logging.getLogger("faregate.models")

# LiteLLM's credential params, and the suffixes its providers use for more of them.
SECRET_PARAMS = frozenset({"api_key", "aws_access_key_id", "aws_secret_access_key",
                           "aws_session_token", "azure_ad_token", "vertex_credentials",
                           "client_secret"})
_SECRET_SUFFIXES = ("api_key", "secret", "secret_key", "password", "credentials",
                    "access_token", "session_token")
MAX_ID_CHARS = 64


def is_secret_param(name: str) -> bool:
    return name in SECRET_PARAMS or name.endswith(_SECRET_SUFFIXES)


def redacted(params: dict[str, Any]) -> dict[str, Any]:
    """Params as an API may show them: every secret param left out."""
    return {k: v for k, v in params.items() if not is_secret_param(k)}


class ModelCatalog:
    def __init__(self, storage: ModelStore, sealer: Sealer, router: Router,
                 config_deployments: Sequence[Deployment], now: Callable[[], datetime],
                 poll_interval_s: float) -> None:
        self._storage = storage
        self._sealer = sealer
        self._router = router
        self._config = tuple(config_deployments)
        self._now = now
        self._poll_interval_s = poll_interval_s
        self._stored: list[StoredModel] = []
        self._opened: dict[str, Deployment] = {}    # stored model id -> its last opening
        # Stored models this process cannot open (id -> why), and of those the ones it still
        # serves with the credential it opened before (a salt-key rotation it lacks the key of).
        self.unopened: dict[str, str] = {}
        self.kept: set[str] = set()
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    # serving

    async def refresh(self) -> None:
        """Read the stored models; if they changed, give the Router the new table at once."""
        async with self._lock:
            stored = await self._storage.list_models()
            if stored == self._stored:
                return
            self._stored = stored
            self._router.replace([*self._config, *self._open_all(stored)])

    def _open_all(self, stored: list[StoredModel]) -> list[Deployment]:
        out, opened, unopened, kept = [], {}, {}, set()
        for model in stored:
            try:
                deployment = self._deployment(model)
            except SealingError as exc:
                unopened[model.id] = str(exc)
                previous = self._opened.get(model.id)
                if previous is None:
                    # One unreadable row must not take the other models down; say which, why.
                    log.error("stored model %s (%s) is not served: %s", model.id,
                              model.model_name, exc)
                    continue
                # Resealed under a key this process lacks: the credential it opened before
                # still works; keep serving it, loudly, rather than drop a live model.
                log.error("stored model %s (%s) cannot be opened any more (%s); still serving "
                          "it with the credential opened before. Give this replica the new "
                          "FAREGATE_SALT_KEY and restart it", model.id, model.model_name, exc)
                deployment = previous
                kept.add(model.id)
            except ConfigError as exc:
                log.error("stored model %s (%s) is not served: %s", model.id, model.model_name,
                          exc)
                continue
            opened[model.id] = deployment
            out.append(deployment)
        self._opened, self.unopened, self.kept = opened, unopened, kept
        return out

    def _deployment(self, model: StoredModel) -> Deployment:
        params = {k: self._sealer.open(v, model.id, k) if is_secret_param(k) and is_sealed(v)
                  else v for k, v in model.litellm_params.items()}
        entry = {"model_name": model.model_name, "litellm_params": params,
                 "model_info": model.model_info}
        return deployment_from_entry(entry, f"stored model {model.id}", f"db-{model.id}")

    async def start(self) -> None:
        """Load the stored models now (if the database answers), then keep re-reading them."""
        try:
            await self.refresh()
        except Exception as exc:   # a start during a database outage serves config models first
            log.warning("stored models not loaded at start (%s); retrying every %.0f s",
                        type(exc).__name__, self._poll_interval_s)
        self._poller = asyncio.create_task(self._poll(), name="faregate-stored-models")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.refresh()
            except Exception as exc:      # the database may be away: keep serving the last table
                log.warning("stored models: refresh failed (%s); serving the last known table",
                            type(exc).__name__)

    # admin

    async def create(self, model_name: Any, litellm_params: dict[str, Any],
                     model_info: dict[str, Any]) -> StoredModel:
        model_id = model_info.get("id") or uuid.uuid4().hex
        if not isinstance(model_id, str) or len(model_id) > MAX_ID_CHARS:
            raise InvalidRequest(f"model_info.id must be a string of at most {MAX_ID_CHARS} "
                                 "characters", param="model_info.id")
        if any(d.deployment_id == model_id for d in self._config):
            raise InvalidRequest(f"id {model_id} belongs to a config.yaml model",
                                 param="model_info.id")
        info = {k: v for k, v in model_info.items() if k != "id"}
        self._validate(model_name, litellm_params, info)
        now = self._now()
        model = StoredModel(id=model_id, model_name=model_name,
                            litellm_params=self._sealed(litellm_params, model_id),
                            model_info=info, created_at=now, updated_at=now)
        try:
            await self._storage.insert_model(model)
        except DuplicateModelId:
            raise InvalidRequest(f"a stored model with id {model_id} exists; use /model/update",
                                 param="model_info.id", code="duplicate_model_id") from None
        await self.refresh()
        return model

    async def update(self, model_id: str, model_name: Any | None,
                     litellm_params: dict[str, Any] | None,
                     model_info: dict[str, Any] | None) -> StoredModel:
        """Merge the changes into the stored model: a param set to null is removed; secret
        params not given keep their sealed value."""
        current = await self._existing(model_id)
        params = dict(current.litellm_params)
        for name, value in (litellm_params or {}).items():
            if value is None:
                params.pop(name, None)
            else:
                params[name] = value
        info = {**current.model_info, **{k: v for k, v in (model_info or {}).items()
                                         if k != "id"}}
        name = model_name if model_name is not None else current.model_name
        fresh = {k: v for k, v in (litellm_params or {}).items() if v is not None}
        self._validate(name, params, info, already_sealed=set(params) - set(fresh))
        params.update(self._sealed(fresh, model_id))
        model = StoredModel(id=model_id, model_name=name, litellm_params=params,
                            model_info=info, created_at=current.created_at,
                            updated_at=self._now())
        if not await self._storage.update_model(model):
            raise self._not_found(model_id)
        await self.refresh()
        return model

    async def delete(self, model_id: str) -> None:
        await self._existing(model_id)
        if not await self._storage.delete_model(model_id):
            raise self._not_found(model_id)
        await self.refresh()

    def info(self, model_id: str | None = None) -> list[dict[str, Any]]:
        out = [_config_view(d) for d in self._config] + [stored_view(m) for m in self._stored]
        if model_id is not None:
            out = [m for m in out if m["model_info"]["id"] == model_id]
        return out

    def groups(self, model_name: str) -> frozenset[str]:
        """The access groups that grant `model_name`, as the request path reads them."""
        return self._router.groups(model_name)

    async def _existing(self, model_id: str) -> StoredModel:
        if any(d.deployment_id == model_id for d in self._config):
            raise InvalidRequest(f"model {model_id} is defined in config.yaml; change it there",
                                 param="id", code="config_model")
        model = await self._storage.get_model(model_id)
        if model is None:
            raise self._not_found(model_id)
        return model

    @staticmethod
    def _not_found(model_id: str) -> NotFound:
        return NotFound(f"No stored model has id {model_id}; GET /model/info lists them",
                        code="model_not_found")

    def _validate(self, model_name: Any, params: dict[str, Any], info: dict[str, Any],
                  already_sealed: Collection[str] = ()) -> None:
        for name, value in params.items():
            if name in already_sealed:
                continue
            if isinstance(value, str) and value.startswith("os.environ/"):
                raise InvalidRequest(
                    f"litellm_params.{name}: stored models take the value itself, not an "
                    "os.environ/ reference (references belong in config.yaml)",
                    param=f"litellm_params.{name}")
            if is_secret_param(name) and not isinstance(value, str):
                raise InvalidRequest(f"litellm_params.{name} must be a string",
                                     param=f"litellm_params.{name}")
        try:
            deployment = deployment_from_entry({"model_name": model_name,
                                                "litellm_params": params,
                                                "model_info": info}, "model", "new")
        except ConfigError as exc:
            raise InvalidRequest(str(exc), code="invalid_model") from None
        check_stored_size(params, "litellm_params")
        check_stored_size(info, "model_info")
        # Every call's ledger row names the upstream as "<api_base>#<model>" in a column of
        # fixed width; a longer one would be a row the database refuses, on every call.
        upstream = len(deployment.shown_base) + 1 + len(deployment.upstream_model)
        if upstream > LEDGER_UPSTREAM_CHARS:
            raise InvalidRequest(
                f"litellm_params.api_base and litellm_params.model are {upstream} characters "
                f"together; the spend ledger records at most {LEDGER_UPSTREAM_CHARS - 1}: "
                "shorten them", param="litellm_params.api_base", code="value_too_large")

    def _sealed(self, params: dict[str, Any], model_id: str) -> dict[str, Any]:
        secrets = [k for k in params if is_secret_param(k)]
        if secrets and not self._sealer.configured:
            raise InvalidRequest(
                f"litellm_params.{secrets[0]} is a credential and this gateway has no salt key "
                "to encrypt it with: set FAREGATE_SALT_KEY (or LITELLM_SALT_KEY) and restart; "
                "credentials are never stored in plain text", param=f"litellm_params.{secrets[0]}",
                code="salt_key_missing")
        return {k: self._sealer.seal(v, model_id, k) if k in secrets else v
                for k, v in params.items()}


def _config_view(d: Deployment) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": f"openai/{d.upstream_model}", "api_base": d.api_base,
        "input_cost_per_token": d.input_femtos / FEMTOS_PER_DOLLAR,
        "output_cost_per_token": d.output_femtos / FEMTOS_PER_DOLLAR, "timeout": d.timeout_s}
    params.update({k: v for k, v in (("rpm", d.rpm), ("tpm", d.tpm)) if v is not None})
    return {"model_name": d.model_name, "litellm_params": params,
            "model_info": {"id": d.deployment_id, "db_model": False,
                           "max_output_tokens": d.max_output_tokens}}


def stored_view(m: StoredModel) -> dict[str, Any]:
    return {"model_name": m.model_name, "litellm_params": redacted(m.litellm_params),
            "model_info": {**m.model_info, "id": m.id, "db_model": True,
                           "created_at": m.created_at.isoformat() if m.created_at else None,
                           "updated_at": m.updated_at.isoformat() if m.updated_at else None}}

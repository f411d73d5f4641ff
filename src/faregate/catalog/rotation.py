"""Salt-key rotation: re-seal every stored credential under the new salt key.

Each model is re-sealed in its own transaction with a compare-and-set on what was read, so a
concurrent /model/update is never overwritten and a run that stops half way is finished by
running it again (values already under the new key are left alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from faregate.catalog.sealing import Sealer, SealingError, is_sealed, key_id_of
from faregate.catalog.stored_models import is_secret_param
from faregate.records import StoredModel
from faregate.storage.protocols import ModelStore

MAX_ATTEMPTS = 5        # a row that keeps changing under us is reported, not fought over


@dataclass(frozen=True)
class RotationSummary:
    key_id: str                              # the new salt key's id
    models: int                              # stored models looked at
    resealed: int                            # credentials moved to the new key
    already_current: int                     # credentials that were already under it
    failed: tuple[tuple[str, str], ...]      # (model id, why) for models left as they were

    def lines(self) -> list[str]:
        out = [f"salt key rotation to key id {self.key_id}: {self.models} stored models, "
               f"{self.resealed} credentials re-encrypted, {self.already_current} already "
               f"under the new key, {len(self.failed)} models failed"]
        out += [f"  model {model_id}: {why}" for model_id, why in self.failed]
        return out


async def rotate(storage: ModelStore, sealer: Sealer, now: Callable[[], datetime]
                 ) -> RotationSummary:
    """`sealer` seals under the new key and opens under the old ones."""
    new_id = sealer.current_key_id
    if new_id is None:
        raise SealingError("no new salt key given: set FAREGATE_NEW_SALT_KEY")
    resealed = already = 0
    failed: list[tuple[str, str]] = []
    models = await storage.list_models()
    for model in models:
        try:
            moved, kept = await _rotate_one(storage, sealer, model, now)
        except SealingError as exc:
            failed.append((model.id, str(exc)))
            continue
        resealed += moved
        already += kept
    return RotationSummary(new_id, len(models), resealed, already, tuple(failed))


async def _rotate_one(storage: ModelStore, sealer: Sealer, model: StoredModel | None,
                      now: Callable[[], datetime]) -> tuple[int, int]:
    for _ in range(MAX_ATTEMPTS):
        if model is None:
            return 0, 0                      # deleted meanwhile: nothing left to rotate
        params, moved, kept = _resealed(sealer, model)
        if not moved or await storage.reseal_model(model.id, model.litellm_params, params,
                                                   now()):
            return moved, kept
        model = await storage.get_model(model.id)     # changed since we read it: again
    raise SealingError(f"the row kept changing during {MAX_ATTEMPTS} attempts; run again")


def _resealed(sealer: Sealer, model: StoredModel) -> tuple[dict[str, Any], int, int]:
    params = dict(model.litellm_params)
    moved = kept = 0
    for name, value in model.litellm_params.items():
        if not (is_secret_param(name) and is_sealed(value)):
            continue
        if key_id_of(value) == sealer.current_key_id:
            kept += 1
            continue
        params[name] = sealer.seal(sealer.open(value, model.id, name), model.id, name)
        moved += 1
    return params, moved, kept

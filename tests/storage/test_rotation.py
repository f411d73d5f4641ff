"""rotate(): re-seal every stored credential under the new salt key, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from faregate.catalog.rotation import _rotate_one, rotate
from faregate.catalog.sealing import Sealer, SealingError, key_id, key_id_of
from faregate.records import StoredModel
from faregate.secret import Secret
from faregate.storage.database import SqlStorage

OLD = Secret("old-salt-key-0123456789abcdef")
NEW = Secret("new-salt-key-fedcba9876543210")
STRAY = Secret("stray-salt-key-000000000000000")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def now() -> datetime:
    return T0


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[SqlStorage]:
    store = SqlStorage.from_url(db_url)
    try:
        yield store
    finally:
        await store.close()


async def add(storage: SqlStorage, model_id: str, sealer: Sealer, **extra: Any) -> None:
    params: dict[str, Any] = {"model": "openai/x", "api_base": "http://up/v1",
                              "api_key": sealer.seal(f"credential-{model_id}", model_id,
                                                     "api_key"), **extra}
    await storage.insert_model(StoredModel(id=model_id, model_name="m", litellm_params=params,
                                           created_at=T0, updated_at=T0))


async def key_ids(storage: SqlStorage) -> dict[str, str]:
    return {m.id: key_id_of(m.litellm_params["api_key"]) for m in await storage.list_models()
            if "api_key" in m.litellm_params}


async def test_rotation_moves_everything_and_a_rerun_changes_nothing(
        storage: SqlStorage) -> None:
    for i in range(3):
        await add(storage, f"m{i}", Sealer(OLD))
    await storage.insert_model(StoredModel(id="keyless", model_name="m", created_at=T0,
                                           updated_at=T0, litellm_params={"model": "openai/x"}))
    rotating = Sealer(NEW, [OLD])
    summary = await rotate(storage, rotating, now)
    assert (summary.models, summary.resealed, summary.already_current, summary.failed) == \
        (4, 3, 0, ())
    assert set((await key_ids(storage)).values()) == {key_id(NEW)}
    after_new_only = Sealer(NEW)                 # the old key is no longer needed
    for m in await storage.list_models():
        if "api_key" in m.litellm_params:
            assert after_new_only.open(m.litellm_params["api_key"], m.id, "api_key") == \
                f"credential-{m.id}"
    before = await storage.list_models()
    again = await rotate(storage, rotating, now)
    assert (again.resealed, again.already_current, again.failed) == (0, 3, ())
    assert await storage.list_models() == before
    assert "3 credentials re-encrypted" in summary.lines()[0]


async def test_a_half_done_rotation_is_finished_by_running_it_again(storage: SqlStorage) -> None:
    await add(storage, "done", Sealer(NEW))          # a previous run got this far
    await add(storage, "todo", Sealer(OLD))
    summary = await rotate(storage, Sealer(NEW, [OLD]), now)
    assert (summary.resealed, summary.already_current) == (1, 1)
    assert set((await key_ids(storage)).values()) == {key_id(NEW)}


async def test_a_model_under_an_unknown_key_is_reported_and_the_rest_rotated(
        storage: SqlStorage) -> None:
    await add(storage, "stray", Sealer(STRAY))
    await add(storage, "good", Sealer(OLD))
    summary = await rotate(storage, Sealer(NEW, [OLD]), now)
    assert summary.resealed == 1
    [(model_id, why)] = summary.failed
    assert model_id == "stray" and key_id(STRAY) in why
    assert OLD.reveal() not in why and NEW.reveal() not in why
    assert (await key_ids(storage)) == {"stray": key_id(STRAY), "good": key_id(NEW)}
    assert "model stray:" in "\n".join(summary.lines())


async def test_rotation_needs_a_new_key(storage: SqlStorage) -> None:
    with pytest.raises(SealingError, match="FAREGATE_NEW_SALT_KEY"):
        await rotate(storage, Sealer(None, [OLD]), now)


async def test_a_concurrent_update_is_not_overwritten(storage: SqlStorage) -> None:
    """The row changes between the read and the write: the rotation reads it again and
    re-seals the new credential instead of writing back the old one."""
    await add(storage, "m", Sealer(OLD))
    stale = await storage.get_model("m")
    assert stale is not None
    updated = Sealer(OLD).seal("credential-updated", "m", "api_key")
    await storage.update_model(StoredModel(
        id="m", model_name="m", created_at=T0, updated_at=T0,
        litellm_params={**stale.litellm_params, "api_key": updated}))
    assert await _rotate_one(storage, Sealer(NEW, [OLD]), stale, now) == (1, 0)
    row = await storage.get_model("m")
    assert row is not None
    assert Sealer(NEW).open(row.litellm_params["api_key"], "m", "api_key") == \
        "credential-updated"

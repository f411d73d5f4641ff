"""What the rest of the gateway asks of storage, one Protocol per concern.

Consumers depend on these, not on SqlStorage: keys/ on KeyStore, spend/ on SpendStore, catalog/
on ModelStore, the health probe on HealthProbe. SqlStorage (storage/database.py) implements
them all, structurally; the composition root (app.py) and the CLI are the only places that
build it. The value types and errors in these signatures live here too, as part of the contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from faregate.records import KeyRecord, SpendRow, StoredModel


class DuplicateAlias(Exception):
    pass


class DuplicateModelId(Exception):
    pass


@dataclass(frozen=True)
class SpendQuery:
    api_key: str | None = None
    request_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    page: int = 1
    page_size: int = 100


@dataclass(frozen=True)
class SpendWritten:
    """What one write_spend_rows call added: the rows that were new, and their spend per key
    (rows already in the database add nothing)."""

    rows: int = 0
    by_key: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: SpendWritten) -> SpendWritten:
        by_key = dict(self.by_key)
        for token, nanos in other.by_key.items():
            by_key[token] = by_key.get(token, 0) + nanos
        return SpendWritten(self.rows + other.rows, by_key)


@runtime_checkable
class KeyStore(Protocol):
    """The virtual keys' rows: read by token or alias, created, changed, re-keyed, deleted and
    listed (keys/directory.py, keys/admin.py, the Redis admission's key loader, /key/delete)."""

    async def get_key(self, token: str) -> KeyRecord | None: ...

    async def get_key_by_alias(self, alias: str) -> KeyRecord | None: ...

    async def insert_key(self, record: KeyRecord) -> None:
        """Raises DuplicateAlias when another key already has the record's alias."""
        ...

    async def update_key(self, token: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Apply changes (KeyRecord field names); None if no such key. May raise
        DuplicateAlias."""
        ...

    async def replace_token(self, old_token: str, new_token: str,
                            key_name: str) -> KeyRecord | None:
        """The key and its spend rows move to the new token; None if no such key."""
        ...

    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        """Returns the tokens that existed (and are now gone)."""
        ...

    async def list_keys(self, page: int, page_size: int) -> tuple[list[KeyRecord], int]:
        """One page of keys in creation order, and the total count."""
        ...


@runtime_checkable
class SpendStore(Protocol):
    """The spend ledger: spend rows with their keys' aggregates and budget periods
    (spend/ledger.py), and the spend reports (/spend/logs, /global/spend)."""

    async def write_spend(self, rows: Sequence[SpendRow]) -> int:
        """Insert the rows not yet recorded and add their spend to their keys, atomically;
        returns how many were new. Retrying a batch is safe (idempotent by request id)."""
        ...

    async def write_spend_rows(self, rows: Sequence[SpendRow]) -> SpendWritten:
        """write_spend, saying what each key gained (the ledger credits keys whose rows another
        process left behind)."""
        ...

    async def start_budget_period(self, token: str, period_base_nanos: int,
                                  reset_at: datetime | None) -> None: ...

    async def spend_logs(self, query: SpendQuery) -> list[dict[str, Any]]: ...

    async def total_spend(self) -> int: ...


@runtime_checkable
class ModelStore(Protocol):
    """Models added through /model/new, credentials sealed (catalog/stored_models.py,
    catalog/rotation.py)."""

    async def insert_model(self, model: StoredModel) -> None:
        """Raises DuplicateModelId when the id is taken."""
        ...

    async def get_model(self, model_id: str) -> StoredModel | None: ...

    async def list_models(self) -> list[StoredModel]: ...

    async def update_model(self, model: StoredModel) -> bool:
        """False if the model does not exist."""
        ...

    async def reseal_model(self, model_id: str, expected_params: dict[str, Any],
                           new_params: dict[str, Any], updated_at: datetime) -> bool:
        """Compare-and-set: replace the params only if they are still `expected_params`."""
        ...

    async def delete_model(self, model_id: str) -> bool: ...


@runtime_checkable
class HealthProbe(Protocol):
    """A cheap round trip that says whether the database answers (storage/health.py)."""

    async def ping(self) -> None: ...


@runtime_checkable
class AdminStore(KeyStore, SpendStore, Protocol):
    """What the admin API reads itself, beside KeyAdmin: keys by alias and spend reports."""


@dataclass(frozen=True)
class Replica:
    """A serving process on this database. `started_at` and `seen_s_ago` are filled in by the
    store, on the database's clock (one clock for every host)."""

    replica_id: str
    host: str
    pid: int
    shares_admission: bool          # admits through Redis, so it may run beside others
    started_at: datetime | None = None
    seen_s_ago: float = 0.0


@runtime_checkable
class ReplicaStore(Protocol):
    """The serving processes' heartbeats (storage/replicas.py)."""

    async def beat_replica(self, me: Replica, stale_after_s: float) -> list[Replica]:
        """Record that `me` is alive now (registering it on its first beat) and return every
        process seen within `stale_after_s`, `me` included, oldest first. A row left by an
        earlier process with `me`'s host and pid (its container restarted) is removed."""
        ...

    async def remove_replica(self, replica_id: str) -> None: ...


@runtime_checkable
class Storage(KeyStore, SpendStore, ModelStore, HealthProbe, ReplicaStore, Protocol):
    """All of the above, and the connections' lifetime: what the composition root holds."""

    async def close(self) -> None: ...

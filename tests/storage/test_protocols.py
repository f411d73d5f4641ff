"""SqlStorage implements every storage Protocol, with the Protocols' exact signatures."""

from __future__ import annotations

import inspect

import pytest

from faregate.storage import database, protocols
from faregate.storage.database import SqlStorage
from faregate.storage.protocols import (
    AdminStore,
    HealthProbe,
    HierarchyStore,
    KeyStore,
    ModelStore,
    ReplicaStore,
    ReportStore,
    SpendStore,
    Storage,
)

ALL = [KeyStore, SpendStore, ModelStore, HealthProbe, ReplicaStore, HierarchyStore,
       ReportStore, AdminStore, Storage]


def members(protocol: type) -> list[str]:
    return sorted(name for cls in protocol.__mro__ if cls.__module__ == protocols.__name__
                  for name, value in vars(cls).items()
                  if inspect.isfunction(value) and not name.startswith("_"))


@pytest.mark.parametrize("protocol", ALL, ids=lambda p: p.__name__)
def test_sql_storage_implements(protocol: type) -> None:
    store = SqlStorage.from_url("sqlite:///:memory:")
    assert isinstance(store, protocol)
    assert members(protocol)
    for name in members(protocol):
        ours, theirs = getattr(SqlStorage, name), getattr(protocol, name)
        assert inspect.iscoroutinefunction(ours), name
        assert inspect.signature(ours) == inspect.signature(theirs), name


def test_storage_is_every_concern() -> None:
    assert set(members(Storage)) == {
        *members(KeyStore), *members(SpendStore), *members(ModelStore), *members(HealthProbe),
        *members(ReplicaStore), *members(HierarchyStore), *members(ReportStore), "close"}


def test_the_contracts_types_are_still_importable_from_database() -> None:
    assert database.DuplicateAlias is protocols.DuplicateAlias
    assert database.DuplicateModelId is protocols.DuplicateModelId
    assert database.SpendQuery is protocols.SpendQuery

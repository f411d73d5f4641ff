"""Frozen records that cross module boundaries: a virtual key, a spend row, a stored model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class KeyRecord:
    token: str                            # sha256 hex of the key; the plaintext is never stored
    key_name: str                         # "sk-...abcd": enough to recognise, useless to attack
    key_alias: str | None = None
    models: tuple[str, ...] = ()          # empty = every model
    max_budget_nanos: int | None = None
    spend_nanos: int = 0                  # lifetime spend = the sum of this key's ledger rows
    period_base_nanos: int = 0            # lifetime spend when the current budget period began
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    expires: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    model_rpm_limit: dict[str, int] = field(default_factory=dict)
    model_tpm_limit: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)   # model asked for -> model served
    blocked: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def period_spend_nanos(self) -> int:
        """What counts against max_budget: spend since the last budget reset."""
        return self.spend_nanos - self.period_base_nanos

    def evolve(self, **changes: Any) -> KeyRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class SpendRow:
    request_id: str
    api_key: str                          # key hash
    key_alias: str | None
    model: str
    upstream: str
    call_type: str
    prompt_tokens: int
    completion_tokens: int
    spend_nanos: int
    start_time: datetime
    end_time: datetime
    status: str                           # success | partial | failure | interrupted (a stream cut
    #                                       by a crash, charged from its checkpoint) | dead_letter
    #                                       (a storable copy of a row the database refused)


@dataclass(frozen=True)
class StoredModel:
    """A model kept in the database (/model/new). Secret params are sealed strings here."""

    id: str
    model_name: str
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

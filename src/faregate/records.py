"""Frozen records that cross module boundaries: a virtual key, a spend row, a stored model, and
the payers above a key (users, teams and their members, organizations, end users, budgets)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar


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
    user_id: str | None = None            # the owner; pays too for a personal key (no team)
    team_id: str | None = None
    organization_id: str | None = None
    budget_id: str | None = None          # a named budget for terms the key leaves null

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
    # The payers above the key. Appended last, defaulted: the journal writes a row as a list
    # in this order, and lines written before these existed must still decode.
    user_id: str | None = None
    team_id: str | None = None
    organization_id: str | None = None
    end_user: str | None = None
    # How it went upstream, appended after the payers for the same reason: the upstream calls
    # made (retries and fallbacks included; None: not recorded, a line written before this
    # field), and the error it ended with (spend/row_error.py: short, storable, no secrets;
    # None when it succeeded).
    attempts: int | None = 1
    error: str | None = None


@dataclass(frozen=True)
class StoredModel:
    """A model kept in the database (/model/new). Secret params are sealed strings here."""

    id: str
    model_name: str
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class BudgetRecord:
    """A named budget (/budget/new): terms an entity with this budget_id falls back to where
    its own are null."""

    budget_id: str
    max_budget_nanos: int | None = None
    budget_duration: str | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    user_email: str | None = None
    user_alias: str | None = None
    user_role: str = "internal_user"
    models: tuple[str, ...] = ()
    max_budget_nanos: int | None = None
    spend_nanos: int = 0                  # the sum of its personal keys' rows (no team)
    period_base_nanos: int = 0
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    budget_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class OrganizationRecord:
    organization_id: str
    organization_alias: str | None = None
    models: tuple[str, ...] = ()
    max_budget_nanos: int | None = None
    spend_nanos: int = 0                  # the sum of the rows naming this organization
    period_base_nanos: int = 0
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    budget_id: str | None = None
    blocked: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class OrganizationMemberRecord:
    organization_id: str
    user_id: str
    user_role: str = "internal_user"
    created_at: datetime | None = None


@dataclass(frozen=True)
class TeamRecord:
    team_id: str
    team_alias: str | None = None
    organization_id: str | None = None
    models: tuple[str, ...] = ()
    max_budget_nanos: int | None = None
    spend_nanos: int = 0                  # the sum of the rows naming this team
    period_base_nanos: int = 0
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False
    budget_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class MemberRecord:
    """A user within a team: its budget there (max_budget_in_team) and its spend there (the
    sum of the rows naming both the team and the user)."""

    team_id: str
    user_id: str
    role: str = "user"                    # admin | user
    max_budget_in_team_nanos: int | None = None
    spend_nanos: int = 0
    period_base_nanos: int = 0
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class EndUserRecord:
    """A customer of the gateway's users' apps (x-litellm-end-user-id or the body's `user`)."""

    end_user_id: str
    alias: str | None = None
    blocked: bool = False
    max_budget_nanos: int | None = None
    spend_nanos: int = 0                  # the sum of the rows naming this end user
    period_base_nanos: int = 0
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    tpm_limit: int | None = None
    rpm_limit: int | None = None
    max_parallel_requests: int | None = None
    budget_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class KeyPayers:
    """A key with everything above it that pays for its requests, read in one round trip
    (admission builds its payers from this). `member` is the key's user within its team;
    `budgets` holds the named budgets any of them references, by budget_id."""

    key: KeyRecord
    user: UserRecord | None = None
    team: TeamRecord | None = None
    member: MemberRecord | None = None
    organization: OrganizationRecord | None = None
    budgets: dict[str, BudgetRecord] = field(default_factory=dict)

    def with_budget_terms(self) -> KeyPayers:
        """Each payer with the terms it leaves null taken from its named budget (budget_id):
        max budget, duration, TPM, RPM, parallel requests. A member has no budget_id."""
        return replace(self, key=with_budget_terms(self.key, self.budgets) or self.key,
                       user=with_budget_terms(self.user, self.budgets),
                       team=with_budget_terms(self.team, self.budgets),
                       organization=with_budget_terms(self.organization, self.budgets))


BUDGET_TERMS = ("max_budget_nanos", "budget_duration", "tpm_limit", "rpm_limit",
                "max_parallel_requests")

_Payer = TypeVar("_Payer", KeyRecord, UserRecord, TeamRecord, OrganizationRecord,
                 EndUserRecord)


def with_budget_terms(payer: _Payer | None,
                      budgets: dict[str, BudgetRecord]) -> _Payer | None:
    """The payer with each budget term it leaves null taken from its named budget, if that
    budget is in `budgets`; unchanged otherwise."""
    if payer is None or payer.budget_id is None or payer.budget_id not in budgets:
        return payer
    budget = budgets[payer.budget_id]
    filled = {name: getattr(budget, name) for name in BUDGET_TERMS
              if getattr(payer, name) is None and getattr(budget, name) is not None}
    return replace(payer, **filled) if filled else payer

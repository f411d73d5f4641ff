"""A payer above the key as its database row has it now: where the Redis admission starts a
payer's budget state (its settled spend, period base and period end), as it does for keys."""

from __future__ import annotations

from dataclasses import replace

from faregate.admission.demand import END_USER, MEMBER, ORG, TEAM, USER, Payer
from faregate.records import EndUserRecord, MemberRecord, OrganizationRecord, TeamRecord, UserRecord
from faregate.storage.protocols import HierarchyStore, parse_scope


class PayerRows:
    def __init__(self, storage: HierarchyStore) -> None:
        self._storage = storage

    async def load(self, payer: Payer) -> Payer | None:
        """`payer` with the spend, period base and period end of its row; None if the row
        is gone (admission then reloads the key and what pays above it)."""
        level, ids = parse_scope(payer.scope)
        storage = self._storage
        row: UserRecord | TeamRecord | MemberRecord | OrganizationRecord | EndUserRecord | None
        if level == USER:
            row = await storage.get_user(ids[0])
        elif level == TEAM:
            row = await storage.get_team(ids[0])
        elif level == MEMBER:
            row = await storage.get_team_member(ids[0], ids[1])
        elif level == ORG:
            row = await storage.get_organization(ids[0])
        elif level == END_USER:
            row = await storage.get_end_user(ids[0])
        else:
            raise ValueError(f"no payer row for scope {payer.scope!r}")
        if row is None:
            return None
        return replace(payer, spend_nanos=row.spend_nanos,
                       period_base_nanos=row.period_base_nanos,
                       budget_reset_at=row.budget_reset_at)

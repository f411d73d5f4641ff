"""End users (LiteLLM's customers): the business of /customer/* and /end_user/*.

An end user is who a request is made for (the body's `user`, or x-litellm-end-user-id); its
budget, limits and blocked flag are admission's, so every change is told to admission.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from faregate.accounts.budgets import require_budget
from faregate.accounts.changes import PayerChanges
from faregate.accounts.terms import iso, payer_fields, spend_view, terms_view
from faregate.errors import InvalidRequest, NotFound
from faregate.records import EndUserRecord
from faregate.storage.protocols import DuplicateId, HierarchyStore, Page, PageAfter, scope


class CustomerAdmin:
    def __init__(self, storage: HierarchyStore, changes: PayerChanges,
                 now: Callable[[], datetime]) -> None:
        self._storage = storage
        self._changes = changes
        self._now = now

    async def new(self, end_user_id: str, fields: Mapping[str, Any]) -> EndUserRecord:
        """`fields`: alias, blocked, budget_id, metadata and the budget terms."""
        now = self._now()
        await require_budget(self._storage, fields.get("budget_id"))
        record = EndUserRecord(end_user_id, created_at=now, updated_at=now,
                               **self._record_fields(fields, now))
        try:
            await self._storage.insert_end_user(record)
        except DuplicateId:
            raise InvalidRequest(f"Customer {end_user_id!r} already exists; call "
                                 "/customer/update to change it", param="user_id",
                                 code="customer_exists") from None
        # A request may have been admitted for it before (end users start on first use).
        await self._changes.changed(scope("end_user", end_user_id), record.budget_reset_at,
                                    new_period=True)
        return await self.info(end_user_id)

    async def info(self, end_user_id: str) -> EndUserRecord:
        record = await self._storage.get_end_user(end_user_id)
        if record is None:
            raise NotFound(f"No customer {end_user_id!r}", code="customer_not_found")
        return record

    async def update(self, end_user_id: str, fields: Mapping[str, Any]) -> EndUserRecord:
        await self.info(end_user_id)
        if "budget_id" in fields:
            await require_budget(self._storage, fields["budget_id"])
        changes = self._record_fields(fields, self._now())
        record = await self._storage.update_end_user(end_user_id, changes)
        if record is None:
            raise NotFound(f"Customer {end_user_id!r} was deleted meanwhile",
                           code="customer_not_found")
        await self._changes.changed(scope("end_user", end_user_id), record.budget_reset_at,
                                    new_period="budget_duration" in changes)
        return record

    async def delete(self, end_user_ids: Collection[str]) -> list[str]:
        """The customers that existed, now deleted; a 404 if none did. Their spend rows stay
        (an end user made again starts with their sum)."""
        deleted = [u for u in end_user_ids if await self._storage.delete_end_user(u)]
        if not deleted:
            raise NotFound(f"No customer {', '.join(end_user_ids)}",
                           code="customer_not_found")
        for end_user_id in deleted:
            await self._changes.changed(scope("end_user", end_user_id))
        return deleted

    async def set_blocked(self, end_user_ids: Collection[str],
                          blocked: bool) -> list[EndUserRecord]:
        """As LiteLLM: blocking a customer not seen yet creates it, blocked."""
        out = []
        for end_user_id in end_user_ids:
            if blocked:
                await self._storage.get_or_create_end_user(end_user_id)
            record = await self._storage.update_end_user(end_user_id, {"blocked": blocked})
            if record is None:
                raise NotFound(f"No customer {end_user_id!r}", code="customer_not_found")
            await self._changes.changed(scope("end_user", end_user_id))
            out.append(record)
        return out

    async def page(self, after: PageAfter | None, limit: int) -> Page[EndUserRecord]:
        return await self._storage.list_end_users(None, after, limit)

    @staticmethod
    def _record_fields(fields: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        return payer_fields(fields, ("alias", "blocked", "budget_id", "metadata"), now)

    @staticmethod
    def view(record: EndUserRecord) -> dict[str, Any]:
        """LiteLLM's LiteLLM_EndUserTable shape; the terms also under litellm_budget_table."""
        terms = terms_view(record)
        return {"user_id": record.end_user_id, "alias": record.alias,
                "blocked": record.blocked, **spend_view(record),
                "allowed_model_region": None, "default_model": None,
                "budget_id": record.budget_id, **terms,
                "litellm_budget_table": {"budget_id": record.budget_id, **terms},
                "metadata": record.metadata, "created_at": iso(record.created_at),
                "updated_at": iso(record.updated_at)}

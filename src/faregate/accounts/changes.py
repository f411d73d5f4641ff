"""Telling admission that an admin changed a payer (its budget, limits, blocked flag), so that
the next request on this process, and on every replica, reads the payer again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from faregate.admission.demand import Admission

# RedisAdmission.payer_changed: bumps the payer's version so every replica reloads it
PayerChanged = Callable[[str, datetime | None], Awaitable[None]]


class PayerChanges:
    def __init__(self, admission: Admission, on_change: PayerChanged | None = None,
                 forget_cached: Callable[[str], None] | None = None) -> None:
        """`forget_cached`: drop this process's cached copies of the payer (the key
        directory's entries it pays for, the end-user cache), so its next request reads it."""
        self._admission = admission
        self._on_change = on_change
        self._forget_cached = forget_cached

    async def changed(self, scope: str, reset_at: datetime | None = None, *,
                      new_period: bool = False) -> None:
        """`new_period`: the budget_duration changed, so its period now ends at `reset_at`."""
        if new_period:
            self._admission.change_period(scope, reset_at)
        self._admission.forget(scope)
        if self._forget_cached is not None:
            self._forget_cached(scope)
        if self._on_change is not None:
            await self._on_change(scope, reset_at)

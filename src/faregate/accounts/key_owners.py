"""A key's owners: the user it is made for (created if unknown, as LiteLLM does) and the team
it belongs to (which must exist, and whose models bound the key's)."""

from __future__ import annotations

from collections.abc import Sequence

from faregate.accounts.budgets import require_budget
from faregate.accounts.users import UserAdmin, all_pages
from faregate.errors import InvalidRequest
from faregate.records import KeyRecord
from faregate.storage.protocols import HierarchyStore

# A key's `models` entry that means "whatever my team may use" (LiteLLM's name).
ALL_TEAM_MODELS = "all-team-models"
_PAGE = 1000


class KeyOwners:
    def __init__(self, storage: HierarchyStore, users: UserAdmin) -> None:
        self._storage = storage
        self._users = users

    async def check(self, user_id: str | None, team_id: str | None,
                    models: Sequence[str]) -> str | None:
        """A 400 if the team does not exist or `models` go beyond the team's; the user is
        made if it does not exist. Call before the key is stored; returns the user_id made
        (None if none was), which `unmake` takes back if the key is then refused."""
        if team_id is not None:
            team = await self._storage.get_team(team_id)
            if team is None:
                raise InvalidRequest(f"Team {team_id!r} does not exist; create it with "
                                     "/team/new", param="team_id", code="team_not_found")
            if team.models:
                outside = [m for m in models
                           if m not in team.models and m != ALL_TEAM_MODELS]
                if outside:
                    raise InvalidRequest(f"Model(s) {outside} are not among team "
                                         f"{team_id!r}'s models {list(team.models)}",
                                         param="models", code="team_model_access_denied")
        if user_id is None or await self._storage.get_user(user_id) is not None:
            return None
        await self._users.ensure(user_id)
        return user_id

    async def unmake(self, user_id: str | None) -> None:
        """Take back a user `check` made for a key that was then refused (a refused
        /key/generate leaves nothing behind). Only if it still has no key: another request
        may have given it one meanwhile."""
        if user_id is not None and not (await self._storage.list_keys_page(
                {"user_id": user_id}, None, 1)).items:
            await self._storage.delete_user(user_id)

    async def check_budget(self, budget_id: str) -> None:
        """A 400 if the key's named budget does not exist (its terms would be nothing)."""
        await require_budget(self._storage, budget_id)

    async def keys_of(self, user_id: str | None, team_id: str | None) -> list[KeyRecord]:
        """Every key of the user and/or team, in creation order."""
        where = {name: value for name, value in (("user_id", user_id), ("team_id", team_id))
                 if value is not None}
        return await all_pages(lambda after: self._storage.list_keys_page(where, after, _PAGE))

"""Helpers for the /organization, /customer and /budget tests: admin calls that must succeed
or fail in OpenAI's error shape, and an Admission that records what it is told."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.conftest import RunningGateway
from api.openai_shape import openai_error


async def ok(gw: RunningGateway, method: str, path: str, **kwargs: Any) -> Any:
    resp = await gw.admin(method, path, **kwargs)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def error(gw: RunningGateway, status: int, method: str, path: str,
                **kwargs: Any) -> dict[str, Any]:
    resp = await gw.admin(method, path, **kwargs)
    assert resp.status_code == status, resp.text
    return openai_error(resp.status_code, resp.json())


class Told:
    """Stands in for Admission's forget/change_period and RedisAdmission.payer_changed."""

    def __init__(self) -> None:
        self.forgotten: list[str] = []
        self.periods: list[str] = []
        self.bumped: list[str] = []

    def forget(self, scope: str) -> None:
        self.forgotten.append(scope)

    def change_period(self, scope: str, reset_at: datetime | None) -> None:
        self.periods.append(scope)

    async def payer_changed(self, scope: str, reset_at: datetime | None) -> None:
        self.bumped.append(scope)

"""Spend reports (FastAPI, never on the request path), LiteLLM's shapes: /spend/logs,
/global/spend, /global/spend/report, /user/daily/activity, /team/daily/activity and the top-N
lists /global/spend/keys|teams|end_users|models.

Every figure is summed in SQL by SpendStore.spend_totals over the ledger rows a SpendQuery
selects; days are UTC days. Handlers parse, call the store, render dollars.
No `from __future__ import annotations` here: FastAPI reads the dependency annotations.
"""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from faregate.api.admin_auth import Access, Roles
from faregate.api.storable_input import StorableInput
from faregate.errors import InvalidRequest
from faregate.keys.tokens import token_of
from faregate.money import nanos_to_dollars
from faregate.storage.protocols import SpendQuery, SpendStore, SpendTotal
from faregate.wire.storable import INT32_MAX

# A report holds at most this many groups (group x day); past it the caller narrows the range
# rather than getting a silently cut answer.
MAX_REPORT_GROUPS = 10_000
# More than any query's rows can group into: "every total" for spend_totals' paging.
_ALL = 2**31 - 1

Level = Literal["team", "customer", "api_key", "model", "user", "organization"]
# group_by's words (LiteLLM's: customer is an end user, api_key a key) -> spend_totals' levels
_LEVELS = {"team": "team", "customer": "end_user", "api_key": "key", "model": "model",
           "user": "user", "organization": "organization"}


class EndUsersSpend(BaseModel):
    """POST /global/spend/end_users, as LiteLLM takes it."""

    model_config = ConfigDict(extra="forbid")
    api_key: str | None = Field(default=None, max_length=256)
    startTime: str | None = Field(default=None, max_length=64)     # LiteLLM's field names
    endTime: str | None = Field(default=None, max_length=64)


def build_spend_routes(roles: Roles, storage: SpendStore) -> APIRouter:
    router = APIRouter(route_class=StorableInput)   # unstorable input is a 400

    Who = Annotated[Access, Depends(roles.access)]    # api/admin_auth.py ROUTES
    Limit = Annotated[int, Query(ge=1, le=1000)]

    @router.get("/spend/logs")
    async def spend_logs(who: Who, api_key: str | None = None,
                         request_id: str | None = None, user_id: str | None = None,
                         team_id: str | None = None, organization_id: str | None = None,
                         end_user: str | None = None, start_date: str | None = None,
                         end_date: str | None = None,
                         page: Annotated[int, Query(ge=1, le=INT32_MAX)] = 1,
                         page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
                         ) -> list[dict[str, Any]]:
        token = token_of(api_key) if api_key else None
        token, user_id = who.rows(token, user_id)
        rows = await storage.spend_logs(SpendQuery(
            api_key=token, request_id=request_id, user_id=user_id, team_id=team_id,
            organization_id=organization_id, end_user=end_user,
            start=when(start_date, "start_date"), end=when(end_date, "end_date", end=True),
            page=page, page_size=page_size))
        return [_spend_row(r) for r in rows]

    @router.get("/global/spend")
    async def global_spend(_: Who) -> dict[str, Any]:
        return {"spend": nanos_to_dollars(await storage.total_spend()), "max_budget": None}

    @router.get("/global/spend/report")
    async def spend_report(_: Who, start_date: str | None = None,
                           end_date: str | None = None, group_by: Level = "team",
                           api_key: str | None = None, customer_id: str | None = None,
                           internal_user_id: str | None = None, team_id: str | None = None,
                           ) -> list[dict[str, Any]]:
        start, end = day_range(start_date, end_date)
        query = SpendQuery(api_key=token_of(api_key) if api_key else None,
                           end_user=customer_id, user_id=internal_user_id, team_id=team_id,
                           start=start, end=end, page_size=MAX_REPORT_GROUPS + 1)
        level = _LEVELS[group_by]
        if group_by in ("team", "customer"):
            totals = _bounded(await storage.spend_totals(level, query, by_day=True))
            return _per_day(totals, group_by)
        totals = _bounded(await storage.spend_totals(level, query))
        return [_group_total(group_by, t) for t in totals]

    async def activity(query: SpendQuery, page: int, page_size: int) -> dict[str, Any]:
        days = await storage.spend_totals("all", replace(query, page_size=_ALL), by_day=True)
        shown = days[(page - 1) * page_size:page * page_size]
        breakdown: dict[str, dict[date, list[SpendTotal]]] = {}
        if shown:
            window = replace(query, page_size=_ALL, start=max(_midnight(shown[0].day),
                                                              query.start or _EPOCH),
                             end=min(_midnight(shown[-1].day) + timedelta(days=1),
                                     query.end or _FAR))
            for name, level in (("models", "model"), ("api_keys", "key")):
                breakdown[name] = _by_day(await storage.spend_totals(level, window,
                                                                     by_day=True))
        return {
            "results": [{"date": _midnight(t.day).date().isoformat(), "metrics": _metrics(t),
                         "breakdown": {name: {g.id: {"metrics": _metrics(g), "metadata": {}}
                                              for g in per_day.get(_midnight(t.day).date(), [])}
                                       for name, per_day in breakdown.items()}}
                        for t in shown],
            "metadata": {**_metric_totals(days), "page": page,
                         "total_pages": max(1, -(-len(days) // page_size)),
                         "has_more": page * page_size < len(days)},
        }

    @router.get("/user/daily/activity")
    async def user_activity(who: Who, start_date: str | None = None,
                            end_date: str | None = None, user_id: str | None = None,
                            api_key: str | None = None, model: str | None = None,
                            page: Annotated[int, Query(ge=1, le=INT32_MAX)] = 1,
                            page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
                            ) -> dict[str, Any]:
        start, end = day_range(start_date, end_date)
        return await activity(SpendQuery(
            user_id=who.user(user_id), api_key=token_of(api_key) if api_key else None,
            model=model,
            start=start, end=end), page, page_size)

    @router.get("/team/daily/activity")
    async def team_activity(who: Who, start_date: str | None = None,
                            end_date: str | None = None, team_ids: str | None = None,
                            api_key: str | None = None, model: str | None = None,
                            page: Annotated[int, Query(ge=1, le=INT32_MAX)] = 1,
                            page_size: Annotated[int, Query(ge=1, le=1000)] = 50,
                            ) -> dict[str, Any]:
        start, end = day_range(start_date, end_date)
        teams = [t for t in (team_ids or "").split(",") if t]
        if len(teams) != 1:
            raise InvalidRequest("Pass one team as team_ids (ask once per team; "
                                 "/global/spend/report?group_by=team splits every team by day)",
                                 param="team_ids")
        await who.team(teams[0])
        return await activity(SpendQuery(
            team_id=teams[0], api_key=token_of(api_key) if api_key else None, model=model,
            start=start, end=end), page, page_size)

    @router.get("/global/spend/keys")
    async def top_keys(_: Who, limit: Limit = 5) -> list[dict[str, Any]]:
        totals = await storage.spend_totals("key", SpendQuery(page_size=limit))
        return [{"api_key": t.id, "total_spend": nanos_to_dollars(t.spend_nanos)}
                for t in totals]

    @router.get("/global/spend/teams")
    async def top_teams(_: Who, limit: Limit = 100) -> dict[str, Any]:
        totals = await storage.spend_totals("team", SpendQuery(page_size=limit))
        return {"teams": [t.id for t in totals],
                "total_spend_per_team": [{"team_id": t.id,
                                          "total_spend": nanos_to_dollars(t.spend_nanos)}
                                         for t in totals]}

    @router.get("/global/spend/models")
    async def top_models(_: Who, limit: Limit = 5) -> list[dict[str, Any]]:
        totals = await storage.spend_totals("model", SpendQuery(page_size=limit))
        return [{"model": t.id, "total_spend": nanos_to_dollars(t.spend_nanos)}
                for t in totals]

    @router.post("/global/spend/end_users")
    async def top_end_users(_: Who, body: EndUsersSpend | None = None,
                            limit: Limit = 100) -> list[dict[str, Any]]:
        asked = body or EndUsersSpend()
        totals = await storage.spend_totals("end_user", SpendQuery(
            api_key=token_of(asked.api_key) if asked.api_key else None,
            start=when(asked.startTime, "startTime"),
            end=when(asked.endTime, "endTime", end=True), page_size=limit))
        return [{"end_user": t.id, "total_spend": nanos_to_dollars(t.spend_nanos),
                 "total_count": t.requests} for t in totals]

    return router


_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 12, 31, tzinfo=UTC)


def when(value: str | None, param: str, end: bool = False) -> datetime | None:
    """A day (YYYY-MM-DD; an end day is inclusive) or an ISO 8601 time, as UTC."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):     # OverflowError: past year 9999 or before year 1
        raise InvalidRequest(f"{param} must be YYYY-MM-DD or an ISO 8601 time between the "
                             "years 1 and 9999", param=param) from None


def day_range(start_date: str | None, end_date: str | None) -> tuple[datetime, datetime]:
    """A report's UTC days, both named and the end day included: [start, end + 1 day)."""
    for name, value in (("start_date", start_date), ("end_date", end_date)):
        if value is None:
            raise InvalidRequest(f"Pass {name} as YYYY-MM-DD (UTC days, the end day "
                                 "included)", param=name)
    start, end = when(start_date, "start_date"), when(end_date, "end_date", end=True)
    assert start is not None and end is not None
    if end <= start:
        raise InvalidRequest("end_date is before start_date", param="end_date")
    return start, end


def _bounded(totals: list[SpendTotal]) -> list[SpendTotal]:
    if len(totals) > MAX_REPORT_GROUPS:
        raise InvalidRequest(f"The report has more than {MAX_REPORT_GROUPS} groups; narrow "
                             "the dates or filter by a key, team, user or customer")
    return totals


def _midnight(day: date | None) -> datetime:
    assert day is not None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _by_day(totals: list[SpendTotal]) -> dict[date, list[SpendTotal]]:
    out: dict[date, list[SpendTotal]] = {}
    for t in totals:
        if t.day is not None:
            out.setdefault(t.day, []).append(t)
    return out


def _per_day(totals: list[SpendTotal], group_by: str) -> list[dict[str, Any]]:
    """LiteLLM's per-day report: [{group_by_day, teams: [{team_name, total_spend, ...}]}]."""
    plural, name = ("teams", "team_name") if group_by == "team" else ("customers", "customer")
    out = []
    for day, groups in _by_day(totals).items():
        out.append({"group_by_day": _midnight(day).isoformat(), plural: [
            {name: g.id, "total_spend": nanos_to_dollars(g.spend_nanos),
             "total_spend_nanos": g.spend_nanos, "api_requests": g.requests,
             "total_input_tokens": g.prompt_tokens,
             "total_output_tokens": g.completion_tokens, "metadata": []}
            for g in groups]})
    return out


def _group_total(group_by: str, t: SpendTotal) -> dict[str, Any]:
    """LiteLLM's api_key report row, the group named by its own field."""
    return {group_by if group_by != "user" else "user_id": t.id,
            "total_cost": nanos_to_dollars(t.spend_nanos), "total_spend_nanos": t.spend_nanos,
            "api_requests": t.requests, "total_input_tokens": t.prompt_tokens,
            "total_output_tokens": t.completion_tokens, "model_details": []}


def _metrics(t: SpendTotal) -> dict[str, Any]:
    return {"spend": nanos_to_dollars(t.spend_nanos), "spend_nanos": t.spend_nanos,
            "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
            "total_tokens": t.prompt_tokens + t.completion_tokens,
            "api_requests": t.requests}


def _metric_totals(days: list[SpendTotal]) -> dict[str, Any]:
    nanos = sum(t.spend_nanos for t in days)
    prompt = sum(t.prompt_tokens for t in days)
    completion = sum(t.completion_tokens for t in days)
    return {"total_spend": nanos_to_dollars(nanos), "total_spend_nanos": nanos,
            "total_prompt_tokens": prompt, "total_completion_tokens": completion,
            "total_tokens": prompt + completion,
            "total_api_requests": sum(t.requests for t in days)}


def _spend_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": row["request_id"], "call_type": row["call_type"],
        "api_key": row["api_key"], "spend": nanos_to_dollars(row["spend_nanos"]),
        "spend_nanos": row["spend_nanos"],
        "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
        "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
        "startTime": row["start_time"].isoformat(), "endTime": row["end_time"].isoformat(),
        "model": row["model"], "model_group": row["model"], "api_base": row["upstream"],
        "status": row["status"], "user": row.get("user_id"), "team_id": row.get("team_id"),
        "organization_id": row.get("organization_id"), "end_user": row.get("end_user"),
        "metadata": {"user_api_key_alias": row["key_alias"],
                     "user_api_key_user_id": row.get("user_id"),
                     "user_api_key_team_id": row.get("team_id"),
                     "user_api_key_org_id": row.get("organization_id")},
    }

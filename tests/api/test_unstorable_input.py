"""Input that cannot be stored is refused at the edge (issue 13, finding 2).

Every admin route and every OpenAI and Anthropic route is sent, field by field, NUL (U+0000),
a lone surrogate (a JSON `\\ud800` escape), numbers JSON cannot carry (NaN, -Infinity, 1e999,
an integer past 64 bits) and oversized values, on SQLite and on Postgres. Each request must get
a 4xx in its route's error shape (never a 5xx), the NUL and surrogate refusals name the field,
and after each route's requests (hot routes: each request) the key, model and ledger tables
are exactly as before. A normal call afterwards is recorded: nothing got stuck in the ledger.

The routes are read from the app (/openapi.json and the hot routes' tables): a new route fails
`test_every_route_has_a_probe` until it is given one here, and then it is swept like the rest.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from api.account_probes import account_probes
from api.conftest import RunningGateway, serve
from api.openai_shape import openai_error, spend_and_rows
from sqlalchemy import select
from support import MASTER_KEY, env_for, write_config

from faregate import config
from faregate.api.anthropic_routes import AnthropicRoutes
from faregate.api.openai_routes import OpenAIRoutes
from faregate.api.storable_input import MAX_ADMIN_BODY_BYTES
from faregate.app import Faregate
from faregate.storage.schema import keys, models, spend_logs
from faregate.wire.storable import LEDGER_UPSTREAM_CHARS

SALT_KEY = "salt-key-for-unstorable-input-tests-0123"
MARK = "@@poison@@"
TEXT_POISONS = {"NUL": rb'"a\u0000b"', "a lone surrogate": rb'"a\ud800b"'}
NAME_POISONS = {"NUL": rb'"k\u0000"', "a lone surrogate": rb'"k\udc00"'}
NON_FINITE = [b"NaN", b"-Infinity", b"1e999"]
NUMBER_POISONS = [*NON_FINITE, b"18446744073709551616"]   # and an integer past 64 bits
OVERSIZED = "x" * 100_000
OVERSIZED_QUERY = "x" * 5_000        # a URL this long is still read by the server
MISSING_KEY = "sk-no-such-key-00000000"
JsonPath = tuple[str | int, ...]


@dataclass
class Probe:
    """A valid request to one route; the sweep poisons one of its values at a time."""

    body: dict[str, Any] | None = None
    query: dict[str, str] = field(default_factory=dict)
    path_params: dict[str, str] = field(default_factory=dict)


@dataclass
class Seed:
    key: str
    model_id: str
    upstream: str


def admin_probes(seed: Seed) -> dict[tuple[str, str], Probe]:
    """Every admin operation with a request that would succeed (or find nothing) as it is.
    Routes that delete or re-key name keys and models that do not exist, so that a value
    that slips through changes nothing but the status."""
    settings: dict[str, Any] = {
        "key_alias": "probe-alias", "models": ["qwen-local"], "max_budget": 1.5,
        "budget_duration": "30d", "duration": "7d", "tpm_limit": 100, "rpm_limit": 10,
        "max_parallel_requests": 2, "model_rpm_limit": {"qwen-local": 5},
        "model_tpm_limit": {"qwen-local": 50}, "aliases": {"fast": "qwen-local"},
        "blocked": False,
        "metadata": {"team": "a", "tags": ["x", 1, 2.5], "nested": {"deep": "y"}}}
    params = {"model": "openai/probe-upstream", "api_base": seed.upstream,
              "api_key": "upstream-secret-1", "input_cost_per_token": 0.000001,
              "output_cost_per_token": 0.000002, "timeout": 30, "extra": {"a": ["b", 1]}}
    info = {"max_output_tokens": 100, "note": "n"}
    ref = {"key": MISSING_KEY}
    return {
        ("POST", "/key/generate"): Probe({"key": "sk-probe-new-key-0001", **settings}),
        ("POST", "/key/update"): Probe({"key": seed.key, **settings}),
        ("POST", "/key/delete"): Probe({"keys": [MISSING_KEY], "key_aliases": ["no-alias"]}),
        ("GET", "/key/info"): Probe(query={"key": seed.key}),
        ("GET", "/key/list"): Probe(query={"page": "1", "size": "10",
                                           "return_full_object": "true"}),
        ("POST", "/key/regenerate"): Probe({**ref, "new_key": "sk-probe-new-key-0002"}),
        ("POST", "/key/{key}/regenerate"): Probe({"new_key": "sk-probe-new-key-0003"},
                                                 path_params={"key": MISSING_KEY}),
        ("POST", "/key/block"): Probe(ref),
        ("POST", "/key/unblock"): Probe(ref),
        ("GET", "/spend/logs"): Probe(query={
            "api_key": seed.key, "request_id": "req-1", "user_id": "u-1", "team_id": "t-1",
            "organization_id": "o-1", "end_user": "c-1", "start_date": "2026-01-01",
            "end_date": "2026-12-31", "page": "1", "page_size": "10"}),
        ("GET", "/global/spend"): Probe(),
        ("GET", "/global/spend/report"): Probe(query={
            "start_date": "2026-01-01", "end_date": "2026-12-31", "group_by": "team",
            "api_key": seed.key, "customer_id": "c-1", "internal_user_id": "u-1",
            "team_id": "t-1"}),
        ("GET", "/user/daily/activity"): Probe(query={
            "start_date": "2026-01-01", "end_date": "2026-12-31", "user_id": "u-1",
            "api_key": seed.key, "model": "qwen-local", "page": "1", "page_size": "10"}),
        ("GET", "/team/daily/activity"): Probe(query={
            "start_date": "2026-01-01", "end_date": "2026-12-31", "team_ids": "t-1",
            "api_key": seed.key, "model": "qwen-local", "page": "1", "page_size": "10"}),
        ("GET", "/global/spend/keys"): Probe(query={"limit": "5"}),
        ("GET", "/global/spend/teams"): Probe(query={"limit": "5"}),
        ("GET", "/global/spend/models"): Probe(query={"limit": "5"}),
        ("POST", "/global/spend/end_users"): Probe(
            {"api_key": seed.key, "startTime": "2026-01-01", "endTime": "2026-12-31"},
            query={"limit": "5"}),
        ("POST", "/model/new"): Probe({"model_name": "probe-model", "litellm_params": params,
                                       "model_info": {"id": "probe-model-id", **info}}),
        ("POST", "/model/update"): Probe({"id": seed.model_id, "model_name": "stored-model",
                                          "litellm_params": params, "model_info": info}),
        ("POST", "/model/delete"): Probe({"id": "no-such-model-id"}),
        ("GET", "/model/info"): Probe(query={"litellm_model_id": "x"}),
        ("GET", "/v1/model/info"): Probe(query={"litellm_model_id": "x"}),
        **user_and_team_probes(),
        **account_probes(Probe),
    }


def user_and_team_probes() -> dict[tuple[str, str], Probe]:
    """/user/* and /team/*: what is deleted or looked up does not exist; what is made is
    made once (later variants find the id taken: a 400 too)."""
    terms: dict[str, Any] = {"max_budget": 2.5, "budget_duration": "30d", "tpm_limit": 100,
                             "rpm_limit": 10, "max_parallel_requests": 2,
                             "models": ["qwen-local"], "metadata": {"a": ["b", 1]}}
    user = {"user_email": "probe@example.com", "user_alias": "probe",
            "user_role": "internal_user", **terms}
    team = {"team_alias": "probe-team", "blocked": False, **terms}
    member = {"user_id": "probe-member", "role": "user"}
    return {
        ("POST", "/user/new"): Probe({"user_id": "probe-user", **user}),
        ("GET", "/user/info"): Probe(query={"user_id": "no-such-user"}),
        ("POST", "/user/update"): Probe({"user_id": "no-such-user", **user}),
        ("POST", "/user/delete"): Probe({"user_ids": ["no-such-user"]}),
        ("GET", "/user/list"): Probe(query={"page": "1", "page_size": "10",
                                            "user_ids": "a,b", "role": "internal_user",
                                            "user_email": "x@example.com", "team": "t"}),
        ("POST", "/team/new"): Probe({"team_id": "probe-team", "members_with_roles": [member],
                                      **team}),
        ("GET", "/team/info"): Probe(query={"team_id": "no-such-team"}),
        ("POST", "/team/update"): Probe({"team_id": "no-such-team", **team}),
        ("POST", "/team/delete"): Probe({"team_ids": ["no-such-team"]}),
        ("GET", "/team/list"): Probe(query={"user_id": "u", "organization_id": "o"}),
        ("POST", "/team/member_add"): Probe({"team_id": "no-such-team", "member": [member],
                                             "max_budget_in_team": 1.5}),
        ("POST", "/team/member_delete"): Probe({"team_id": "no-such-team",
                                                "user_id": "u", "user_email": "e@x.y"}),
        ("POST", "/team/member_update"): Probe({"team_id": "no-such-team", "user_id": "u",
                                                "role": "admin", "max_budget_in_team": 1.5}),
        ("POST", "/team/block"): Probe({"team_id": "no-such-team"}),
        ("POST", "/team/unblock"): Probe({"team_id": "no-such-team"}),
        ("POST", "/team/model/add"): Probe({"team_id": "no-such-team",
                                            "models": ["qwen-local"]}),
        ("POST", "/team/model/delete"): Probe({"team_id": "no-such-team",
                                               "models": ["qwen-local"]}),
    }


_CHAT = {"model": "qwen-local", "messages": [{"role": "user", "content": "hi"}],
         "max_tokens": 4, "temperature": 0.5, "user": "u-1"}
_ANTHROPIC = {"model": "qwen-local", "max_tokens": 4, "temperature": 0.5,
              "messages": [{"role": "user", "content": "hi"}], "metadata": {"user_id": "u-1"}}
HOT_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": _CHAT, "/chat/completions": _CHAT,
    "/v1/completions": {"model": "qwen-local", "prompt": "hi", "max_tokens": 4},
    "/completions": {"model": "qwen-local", "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": "qwen-local", "input": "hi"},
    "/embeddings": {"model": "qwen-local", "input": "hi"},
    "/v1/messages": _ANTHROPIC,
    "/v1/messages/count_tokens": {"model": "qwen-local",
                                  "messages": [{"role": "user", "content": "hi"}]},
}
HOT_WITHOUT_INPUT = {"/v1/models", "/models"}   # GET, nothing read but the key


@pytest.fixture
async def gw(db_url: str, mock_upstream: str, tmp_path: Path
             ) -> AsyncIterator[RunningGateway]:
    cfg = write_config(tmp_path / "config.yaml", mock_upstream)
    settings = config.load({**os.environ, **env_for(db_url, tmp_path),
                            "FAREGATE_SALT_KEY": SALT_KEY}, cfg)
    async with serve(Faregate.from_settings(settings)) as running:
        yield running


async def seed(gw: RunningGateway, upstream: str) -> Seed:
    """A stored model, a key that may use it, and one ledger row."""
    made = await gw.admin("POST", "/model/new", json={
        "model_name": "stored-model", "model_info": {"id": "seeded-model-id"},
        "litellm_params": {"model": "openai/stored-upstream", "api_base": upstream,
                           "api_key": "upstream-secret-0", "input_cost_per_token": 0.000001,
                           "output_cost_per_token": 0.000002}})
    assert made.status_code == 200, made.text
    key = await gw.new_key(models=["qwen-local", "stored-model"], max_budget=1,
                           key_alias="seeded")
    await normal_call(gw, key, "qwen-local")
    return Seed(key, "seeded-model-id", upstream)


async def normal_call(gw: RunningGateway, key: str, model: str) -> None:
    before = await spend_and_rows(gw, key)
    reply = await gw.http.post("/v1/chat/completions", json={**_CHAT, "model": model},
                               headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    spend, ledger, rows = await spend_and_rows(gw, key)
    assert rows == before[2] + 1 and spend == ledger > before[1], "the call was not recorded"


async def tables(gw: RunningGateway) -> dict[str, list[Any]]:
    """Every row of the key, model and ledger tables (rows waiting in the writer flushed)."""
    await gw.app.ledger.flush()
    async with gw.app.storage.engine.connect() as conn:   # type: ignore[attr-defined]
        return {table.name: sorted(tuple(row) for row in await conn.execute(select(table)))
                for table in (keys, models, spend_logs)}


def changes(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> str:
    """The rows that came and went, per table (the poisoned value they carry names the
    variant that got through)."""
    out = []
    for name in before:
        gone = [row for row in before[name] if row not in after[name]]
        came = [row for row in after[name] if row not in before[name]]
        if gone or came:
            out.append(f"{name}: now {came!r}"[:500] + f", was {gone!r}"[:300])
    return "; ".join(out)


def shown(path: JsonPath) -> str:
    """A field's path as the gateway's messages name it: metadata.tags[0]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def leaves(value: Any, path: JsonPath = ()) -> Iterator[tuple[JsonPath, Any]]:
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from leaves(inner, (*path, name))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from leaves(inner, (*path, i))
    else:
        yield path, value


def names(value: Any, path: JsonPath = ()) -> Iterator[JsonPath]:
    """The path of every object key."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield (*path, name)
            yield from names(inner, (*path, name))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from names(inner, (*path, i))


def replaced(body: dict[str, Any], path: JsonPath, raw: bytes, *, name: bool = False) -> bytes:
    """`body` as JSON with the value (or, with `name`, the key) at `path` written as `raw`:
    bytes no JSON writer would produce (NaN, \\u0000 escapes, lone surrogates)."""
    copy = orjson.loads(orjson.dumps(body))
    parent = copy
    for part in path[:-1]:
        parent = parent[part]
    if name:
        parent[MARK] = parent.pop(path[-1])
    else:
        parent[path[-1]] = MARK
    written = orjson.dumps(copy)
    assert written.count(MARK.encode()) == 1
    return written.replace(b'"' + MARK.encode() + b'"', raw)


@dataclass
class Variant:
    what: str
    body: bytes | None
    query: dict[str, str]
    path_params: dict[str, str]
    field: str | None          # the field the refusal must name; None: any 4xx will do
    must_refuse: bool = True   # False: a lookup of a value that is merely long may succeed


def variants(probe: Probe) -> Iterator[Variant]:
    body = probe.body
    plain = orjson.dumps(body) if body is not None else None
    if body is not None:
        for path, _ in leaves(body):
            for what, raw in TEXT_POISONS.items():
                yield Variant(f"{what} in {shown(path)}", replaced(body, path, raw),
                              probe.query, probe.path_params, shown(path))
            for raw in NUMBER_POISONS:
                yield Variant(f"{raw.decode()} as {shown(path)}", replaced(body, path, raw),
                              probe.query, probe.path_params, None)
            yield Variant(f"{shown(path)} oversized",
                          replaced(body, path, orjson.dumps(OVERSIZED)), probe.query,
                          probe.path_params, None)
        for path in names(body):
            for what, raw in NAME_POISONS.items():
                yield Variant(f"{what} in the name of {shown(path)}",
                              replaced(body, path, raw, name=True), probe.query,
                              probe.path_params, "a field name")
    for params, is_path in ((probe.query, False), (probe.path_params, True)):
        for name in params:
            for what, value, named, refuse in (("NUL", "a\x00b", name, True),
                                               ("oversized", OVERSIZED_QUERY, None, False)):
                changed = {**params, name: value}
                yield Variant(f"{what} in {'path' if is_path else 'query'} {name}", plain,
                              probe.query if is_path else changed,
                              changed if is_path else probe.path_params, named, refuse)


def hot_variants(body: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """NUL and oversized in the model name (the one field that reaches a ledger row; a NUL in
    a prompt is the upstream's business), a lone surrogate in any text, a non-finite number
    in place of any value. (An integer past 64 bits reads as a finite float here and passes
    to the upstream like any number: nothing of it is stored.)"""
    for what, raw in (*TEXT_POISONS.items(), ("oversized", orjson.dumps(OVERSIZED))):
        yield f"{what} in model", replaced(body, ("model",), raw)
    for path, _ in leaves(body):
        yield f"a lone surrogate in {shown(path)}", replaced(body, path,
                                                             TEXT_POISONS["a lone surrogate"])
        for raw in NON_FINITE:
            yield f"{raw.decode()} as {shown(path)}", replaced(body, path, raw)


def anthropic_error(status: int, body: Any) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict) and body.get("type") == "error", body
    error = body["error"]
    assert set(error) == {"type", "message"} and error["message"], error
    return dict(error)


def hot_paths(gw: RunningGateway) -> set[str]:
    gateway, metrics = gw.app.gateway, gw.app.metrics
    routes = {**OpenAIRoutes(gateway, 1, metrics, False).routes,
              **AnthropicRoutes(gateway, 1, metrics, False).routes}
    return {path for _, path in routes}


async def test_every_route_has_a_probe(gw: RunningGateway) -> None:
    document = (await gw.http.get("/openapi.json")).json()
    operations = {(method.upper(), path) for path, ops in document["paths"].items()
                  for method in ops}
    hot = hot_paths(gw)
    admin = {(m, p) for m, p in operations if p not in hot}
    seed_ = Seed(MISSING_KEY, "x", "http://127.0.0.1:9/v1")
    assert admin == set(admin_probes(seed_)), "give each admin route a probe here"
    assert hot == set(HOT_BODIES) | HOT_WITHOUT_INPUT, "give each hot route a body here"


async def test_admin_routes_refuse_what_cannot_be_stored(gw: RunningGateway,
                                                         mock_upstream: str) -> None:
    seeded = await seed(gw, mock_upstream)
    before = await tables(gw)
    wrong: list[str] = []
    sent = 0
    for (method, template), probe in admin_probes(seeded).items():
        # One snapshot per route, after all of its variants (~30 each: a snapshot after each
        # request was most of this test's time): each variant sends the probe's values but
        # one, values no seeded row holds, so a change one of them made stays to be seen.
        for variant in variants(probe):
            path = template.format(**{k: quote(v, safe="")
                                      for k, v in variant.path_params.items()})
            resp = await gw.http.request(
                method, path, params=variant.query, content=variant.body,
                headers={"Authorization": f"Bearer {MASTER_KEY}",
                         "Content-Type": "application/json"})
            sent += 1
            where = f"{method} {template}, {variant.what}: {resp.status_code} {resp.text[:200]}"
            try:
                assert resp.status_code < 500
                if variant.must_refuse or resp.status_code >= 400:
                    error = openai_error(resp.status_code, resp.json())
                    if variant.field is not None:
                        assert resp.status_code == 400
                        assert variant.field in error["message"], "the field is not named"
            except (AssertionError, ValueError) as exc:
                wrong.append(f"{where} ({exc})")
        after = await tables(gw)
        if after != before:
            wrong.append(f"{method} {template}: the tables changed: {changes(before, after)}")
            before = after
    assert sent > 500, sent
    print(f"{sent} admin requests refused")
    assert not wrong, f"{len(wrong)} of {sent}:\n" + "\n".join(wrong[:40])
    await normal_call(gw, seeded.key, "qwen-local")
    await normal_call(gw, seeded.key, "stored-model")


async def test_hot_routes_refuse_what_cannot_be_stored(gw: RunningGateway,
                                                       mock_upstream: str) -> None:
    seeded = await seed(gw, mock_upstream)
    before = await tables(gw)
    wrong: list[str] = []
    for path, body in HOT_BODIES.items():
        shape = anthropic_error if path.startswith("/v1/messages") else openai_error
        for what, content in hot_variants(body):
            resp = await gw.http.post(path, content=content, headers={
                "Authorization": f"Bearer {seeded.key}", "Content-Type": "application/json"})
            try:
                error = shape(resp.status_code, resp.json())
                if what == "NUL in model":
                    assert resp.status_code == 400 and "model" in error["message"]
            except (AssertionError, ValueError) as exc:
                wrong.append(f"POST {path}, {what}: {resp.status_code} {resp.text[:200]} "
                             f"({exc})")
            if await tables(gw) != before:
                wrong.append(f"POST {path}, {what}: the tables changed")
                before = await tables(gw)
    assert not wrong, "\n".join(wrong[:40])
    await normal_call(gw, seeded.key, "qwen-local")


async def test_the_ledger_upstream_column_bounds_a_stored_model(gw: RunningGateway,
                                                                mock_upstream: str) -> None:
    """`<api_base>#<model>` is every ledger row's `upstream`: a stored model whose pair fits
    the column is served and recorded (on Postgres too, which enforces the width); one
    character more is refused before anything is stored."""
    base = mock_upstream.rstrip("/")
    room = LEDGER_UPSTREAM_CHARS - len(base) - 1

    def wide(extra: int) -> dict[str, Any]:
        return {"model_name": f"wide-{extra}", "litellm_params": {
            "model": "openai/" + "m" * (room + extra), "api_base": base,
            "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}}

    refused = await gw.admin("POST", "/model/new", json=wide(1))
    error = openai_error(refused.status_code, refused.json())
    assert refused.status_code == 400 and error["code"] == "value_too_large", error
    assert str(LEDGER_UPSTREAM_CHARS - 1) in error["message"]
    assert (await gw.admin("POST", "/model/new", json=wide(0))).status_code == 200
    key = await gw.new_key(models=["wide-0"], max_budget=1)
    await normal_call(gw, key, "wide-0")
    [row] = (await gw.admin("GET", "/spend/logs", params={"api_key": key})).json()
    assert len(row["api_base"]) == LEDGER_UPSTREAM_CHARS
    assert [m["model_name"] for m in (await gw.admin("GET", "/model/info")).json()["data"]
            if m["model_name"].startswith("wide-")] == ["wide-0"]


async def test_an_admin_body_is_read_only_so_far(gw: RunningGateway) -> None:
    """Past MAX_ADMIN_BODY_BYTES an admin body is a 413, announced or not, before the caller
    is known: nothing is buffered past the bound."""
    big = orjson.dumps({"metadata": {"a": "x" * MAX_ADMIN_BODY_BYTES}})

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    for headers in ({"Authorization": f"Bearer {MASTER_KEY}"}, {}):
        for content in (big, chunked()):
            resp = await gw.http.post("/key/generate", content=content, headers=headers)
            error = openai_error(resp.status_code, resp.json())
            assert resp.status_code == 413 and error["code"] == "body_too_large", resp.text
    fits = {"metadata": {"a": "x" * 60_000}}
    assert (await gw.admin("POST", "/key/generate", json=fits)).status_code == 200

"""SqlStorage: every query the gateway makes, one method each, on SQLite or Postgres.

It implements every Protocol in storage/protocols.py (KeyStore, SpendStore, ModelStore,
HealthProbe, ReplicaStore, HierarchyStore, ReportStore, Storage); the errors and SpendQuery are
defined there and re-exported here. The hierarchy's queries live in storage/hierarchy.py, the
UI's reads in storage/reports.py (both mixed in).

Values are always bound parameters. Spend rows are written with their key's aggregate, and
their other payers' (storage/payer_spend.py), in one transaction, and idempotently (a request
id already present is skipped), so each key's and payer's spend is always the sum of its rows,
even when a batch is retried.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy import Select, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ColumnElement

from faregate.records import KeyRecord, SpendRow, StoredModel
from faregate.storage import spend_rollup
from faregate.storage.hierarchy import HierarchyQueries, key_from_mapping
from faregate.storage.payer_spend import (
    PAYER_COLUMNS,
    add_payer_spend_postgres,
    names_a_payer,
    payer_amounts,
    sqlite_steps,
)
from faregate.storage.protocols import DuplicateAlias as DuplicateAlias
from faregate.storage.protocols import DuplicateModelId as DuplicateModelId
from faregate.storage.protocols import Replica, SpendTotal, SpendWritten
from faregate.storage.protocols import SpendQuery as SpendQuery
from faregate.storage.reports import ReportQueries
from faregate.storage.schema import keys, models, replicas, spend_logs


def async_url(url: str) -> str:
    """Map the URLs users write (as in LiteLLM's DATABASE_URL) to async drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://"):]
    return url


def create_engine(url: str) -> AsyncEngine:
    sa_url = make_url(async_url(url))
    if sa_url.get_backend_name() == "sqlite":
        # One file, many short transactions: WAL lets readers run beside the ledger writer.
        in_memory = sa_url.database in (None, "", ":memory:")
        # One connection: SQLite has one writer anyway, and with several pooled connections
        # the process's memory grew ~230 bytes per ledger row without bound (measured; flat
        # with one).
        engine = create_async_engine(sa_url, poolclass=NullPool) if in_memory else \
            create_async_engine(sa_url, pool_size=1, max_overflow=0)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.close()

        return engine
    return create_async_engine(sa_url, pool_size=10, max_overflow=10, pool_pre_ping=True)


# WAL: readers run beside the writer. synchronous=FULL: a commit is on disk when it returns
# (the ledger deletes a journal segment only then). The busy timeout covers the two connections
# that write (the engine's and the ledger's own, see _SqliteSpendWriter).
_SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
                   "PRAGMA busy_timeout=10000")


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _key_from_row(row: Any) -> KeyRecord:
    return key_from_mapping(row._mapping)


def _as_utc(value: datetime | None) -> datetime | None:
    """Bind times as UTC: SQLite's DateTime keeps the wall clock and drops the offset."""
    return value.astimezone(UTC) if value is not None and value.tzinfo is not None else value


def _key_values(record: KeyRecord) -> dict[str, Any]:
    return {
        "token": record.token, "key_name": record.key_name, "key_alias": record.key_alias,
        "models": orjson.dumps(list(record.models)).decode(),
        "max_budget_nanos": record.max_budget_nanos, "spend_nanos": record.spend_nanos,
        "period_base_nanos": record.period_base_nanos, "budget_duration": record.budget_duration,
        "budget_reset_at": _as_utc(record.budget_reset_at), "expires": _as_utc(record.expires),
        "metadata": orjson.dumps(record.metadata).decode(), "tpm_limit": record.tpm_limit,
        "rpm_limit": record.rpm_limit, "max_parallel_requests": record.max_parallel_requests,
        "model_rpm_limit": orjson.dumps(record.model_rpm_limit).decode(),
        "model_tpm_limit": orjson.dumps(record.model_tpm_limit).decode(),
        "aliases": orjson.dumps(record.aliases).decode(),
        "blocked": record.blocked, "created_at": _as_utc(record.created_at),
        "updated_at": _as_utc(record.updated_at), "user_id": record.user_id,
        "team_id": record.team_id, "organization_id": record.organization_id,
        "budget_id": record.budget_id,
    }


def _model_from_row(row: Any) -> StoredModel:
    return StoredModel(id=row.id, model_name=row.model_name,
                       litellm_params=orjson.loads(row.litellm_params),
                       model_info=orjson.loads(row.model_info),
                       created_at=_utc(row.created_at), updated_at=_utc(row.updated_at))


def _params_text(params: dict[str, Any]) -> str:
    # Sorted keys: the same params always give the same text (compare-and-set compares it).
    return orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()


class SqlStorage(HierarchyQueries, ReportQueries):
    """Storage on SQLAlchemy's async engine (Postgres or SQLite)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        database = engine.url.database
        self._sqlite_spend = _SqliteSpendWriter(database) \
            if engine.dialect.name == "sqlite" and database not in (None, "", ":memory:") \
            else None

    @classmethod
    def from_url(cls, url: str) -> SqlStorage:
        return cls(create_engine(url))

    async def close(self) -> None:
        if self._sqlite_spend is not None:
            await self._sqlite_spend.close()
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # keys

    async def get_key(self, token: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(keys).where(keys.c.token == token))).first()
        return _key_from_row(row) if row else None

    async def get_key_by_alias(self, alias: str) -> KeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(keys).where(keys.c.key_alias == alias))).first()
        return _key_from_row(row) if row else None

    async def insert_key(self, record: KeyRecord) -> None:
        try:
            async with self.engine.begin() as conn:
                if record.key_alias is not None and (await conn.execute(
                        select(keys.c.token).where(keys.c.key_alias == record.key_alias))).first():
                    raise DuplicateAlias(record.key_alias)
                await conn.execute(keys.insert().values(**_key_values(record)))
        except IntegrityError:
            # A concurrent insert won the race the SELECT above could not see.
            if record.key_alias is not None and await self.get_key_by_alias(record.key_alias):
                raise DuplicateAlias(record.key_alias) from None
            raise

    async def insert_keys(self, records: Sequence[KeyRecord]) -> None:
        """Bulk import (migrations from another gateway, benchmarks); no alias check."""
        if records:
            async with self.engine.begin() as conn:
                await conn.execute(keys.insert(), [_key_values(r) for r in records])

    async def update_key(self, token: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Apply admin changes (KeyRecord field names) and return the new record."""
        values = {k: v for k, v in _key_values(KeyRecord(token=token, key_name="", **changes))
                  .items() if k in changes}
        values["updated_at"] = datetime.now(UTC)
        alias = changes.get("key_alias")
        try:
            async with self.engine.begin() as conn:
                if alias is not None and (await conn.execute(select(keys.c.token).where(
                        keys.c.key_alias == alias, keys.c.token != token))).first():
                    raise DuplicateAlias(alias)
                await conn.execute(update(keys).where(keys.c.token == token).values(**values))
                row = (await conn.execute(select(keys).where(keys.c.token == token))).first()
        except IntegrityError:
            if alias is not None:
                raise DuplicateAlias(alias) from None
            raise
        return _key_from_row(row) if row else None

    async def replace_token(self, old_token: str, new_token: str,
                            key_name: str) -> KeyRecord | None:
        """Regenerate: the key keeps its settings, spend and ledger, under a new secret."""
        async with self.engine.begin() as conn:
            result = await conn.execute(update(keys).where(keys.c.token == old_token).values(
                token=new_token, key_name=key_name, updated_at=datetime.now(UTC)))
            if result.rowcount == 0:
                return None
            await conn.execute(update(spend_logs).where(spend_logs.c.api_key == old_token)
                               .values(api_key=new_token))
            row = (await conn.execute(select(keys).where(keys.c.token == new_token))).first()
        return _key_from_row(row) if row else None

    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        async with self.engine.begin() as conn:
            found = [r.token for r in await conn.execute(
                select(keys.c.token).where(keys.c.token.in_(list(tokens))))]
            if found:
                await conn.execute(delete(keys).where(keys.c.token.in_(found)))
        return found

    async def list_keys(self, page: int, page_size: int, user_id: str | None = None,
                        team_id: str | None = None) -> tuple[list[KeyRecord], int]:
        # The page's tokens come from a (owner, created_at, token) index alone, then only their
        # rows are read: an offset steps over index entries, never over table rows, and
        # nothing is sorted (page 1,000 of 100,000 keys: see docs/performance.md).
        where = [keys.c[name] == value for name, value in (("user_id", user_id),
                                                           ("team_id", team_id))
                 if value is not None]
        chosen = (select(keys.c.token, keys.c.created_at).where(*where)
                  .order_by(keys.c.created_at, keys.c.token)
                  .limit(page_size).offset((page - 1) * page_size).subquery())
        async with self.engine.connect() as conn:
            total = (await conn.execute(
                select(func.count()).select_from(keys).where(*where))).scalar_one()
            rows = await conn.execute(
                select(keys).join(chosen, chosen.c.token == keys.c.token)
                .order_by(chosen.c.created_at, chosen.c.token))
            return [_key_from_row(r) for r in rows], int(total)

    async def start_budget_period(self, token: str, period_base_nanos: int,
                                  reset_at: datetime | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(keys).where(keys.c.token == token).values(
                period_base_nanos=period_base_nanos, budget_reset_at=_as_utc(reset_at)))

    # stored models

    async def insert_model(self, model: StoredModel) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(models.insert().values(
                    id=model.id, model_name=model.model_name,
                    litellm_params=_params_text(model.litellm_params),
                    model_info=_params_text(model.model_info),
                    created_at=_as_utc(model.created_at), updated_at=_as_utc(model.updated_at)))
        except IntegrityError:
            raise DuplicateModelId(model.id) from None

    async def get_model(self, model_id: str) -> StoredModel | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(models).where(models.c.id == model_id))).first()
        return _model_from_row(row) if row else None

    async def list_models(self) -> list[StoredModel]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(models).order_by(models.c.created_at, models.c.id))
            return [_model_from_row(r) for r in rows]

    async def update_model(self, model: StoredModel) -> bool:
        """Replace a stored model's name, params and info; False if it does not exist."""
        async with self.engine.begin() as conn:
            result = await conn.execute(update(models).where(models.c.id == model.id).values(
                model_name=model.model_name, litellm_params=_params_text(model.litellm_params),
                model_info=_params_text(model.model_info), updated_at=_as_utc(model.updated_at)))
        return bool(result.rowcount)

    async def reseal_model(self, model_id: str, expected_params: dict[str, Any],
                           new_params: dict[str, Any], updated_at: datetime) -> bool:
        """Compare-and-set for a rotation: replace the params only if nobody changed them since
        they were read. False means the row changed or went away (read it again)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(update(models).where(
                models.c.id == model_id,
                models.c.litellm_params == _params_text(expected_params)).values(
                litellm_params=_params_text(new_params), updated_at=_as_utc(updated_at)))
        return bool(result.rowcount)

    async def delete_model(self, model_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(models).where(models.c.id == model_id))
        return bool(result.rowcount)

    # spend

    async def write_spend(self, rows: Sequence[SpendRow]) -> int:
        """Insert rows not yet recorded and add their spend to their keys, atomically.

        Returns how many rows were new. Retrying a batch after an error is safe.
        """
        return (await self.write_spend_rows(rows)).rows

    async def write_spend_rows(self, rows: Sequence[SpendRow]) -> SpendWritten:
        """write_spend, with the new spend per key.

        This is the one write on the request volume's scale, so it goes to the driver directly:
        SQLAlchemy's per-row parameter handling cost ~70 µs a row, on the event loop.
        """
        if not rows:
            return SpendWritten()
        if self._sqlite_spend is not None:
            return await self._sqlite_spend.write(rows)
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            if self.engine.dialect.name == "postgresql":
                return await _write_spend_postgres(raw, rows)
            return await _write_spend_sqlite(raw, rows)

    async def spend_logs(self, query: SpendQuery) -> list[dict[str, Any]]:
        stmt: Select[Any] = select(spend_logs)
        stmt = _spend_filtered(stmt, query)
        stmt = (stmt.order_by(spend_logs.c.start_time.desc(), spend_logs.c.request_id)
                .limit(query.page_size).offset((query.page - 1) * query.page_size))
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt)
            out = []
            for row in result:
                item = dict(row._mapping)
                item["start_time"] = _utc(item["start_time"])
                item["end_time"] = _utc(item["end_time"])
                out.append(item)
            return out

    async def spend_totals(self, level: str, query: SpendQuery,
                           by_day: bool = False) -> list[SpendTotal]:
        """Each payer of a level's spend over the query's rows, summed in SQL: dearest first,
        or by UTC day then dearest with `by_day`. Level "all" sums every row (one total, or
        one a day). The query's page and page_size apply to the totals."""
        if level not in _TOTAL_COLUMNS and level != "all":
            raise ValueError(f"no spend totals by {level!r}; one of "
                             f"{', '.join(_TOTAL_COLUMNS)}, all")
        amount = func.sum(spend_logs.c.spend_nanos)
        groups: list[Any] = []
        if by_day:
            groups.append(self._utc_day(spend_logs.c.start_time).label("day"))
        if level != "all":
            column: ColumnElement[Any] = spend_logs.c[_TOTAL_COLUMNS[level]]
            if self.engine.dialect.name == "sqlite" and not _narrowed(query):
                # Over all rows a scan is faster: SQLite otherwise groups along the level's
                # index, fetching every row from it (1.9 s -> 0.65 s for 1M rows by team).
                column = func.ifnull(column, None)
            groups.append(column.label("id"))
        stmt = _spend_filtered(select(
            *groups, amount.label("spend"), func.count().label("requests"),
            func.coalesce(func.sum(spend_logs.c.prompt_tokens), 0).label("prompt"),
            func.coalesce(func.sum(spend_logs.c.completion_tokens), 0).label("completion")),
            query)
        if level != "all":
            stmt = stmt.where(column.is_not(None))
        order = [groups[0]] if by_day else []
        stmt = (stmt.group_by(*groups).order_by(*order, amount.desc(), *groups)
                .limit(query.page_size).offset((query.page - 1) * query.page_size))
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(stmt))
        return [SpendTotal(r.id if level != "all" else None, int(r.spend or 0),
                           int(r.requests), int(r.prompt), int(r.completion),
                           _as_date(r.day) if by_day else None)
                for r in rows if level != "all" or by_day or r.requests]

    def _utc_day(self, column: Any) -> Any:
        if self.engine.dialect.name == "postgresql":
            return func.date(func.timezone("UTC", column))
        return func.date(column)        # SQLite keeps naive UTC text

    async def total_spend(self) -> int:
        async with self.engine.connect() as conn:
            total = (await conn.execute(
                select(func.coalesce(func.sum(spend_logs.c.spend_nanos), 0)))).scalar_one()
        return int(total)

    # serving processes (storage/replicas.py)

    async def beat_replica(self, me: Replica, stale_after_s: float) -> list[Replica]:
        """Upsert `me`'s heartbeat and read every live process, all on the database's clock
        (hosts' clocks may disagree; a row's age is measured against the same clock)."""
        async with self.engine.begin() as conn:
            clock: datetime = (await conn.execute(select(func.now()))).scalar_one()
            db_now = clock if clock.tzinfo is not None else clock.replace(tzinfo=UTC)
            seen = await conn.execute(update(replicas).where(
                replicas.c.replica_id == me.replica_id).values(last_seen=_as_utc(db_now)))
            if not seen.rowcount:
                # The same host and pid: an earlier process in this container, now gone.
                await conn.execute(delete(replicas).where(
                    replicas.c.host == me.host, replicas.c.pid == me.pid))
                await conn.execute(replicas.insert().values(
                    replica_id=me.replica_id, host=me.host, pid=me.pid,
                    shares_admission=me.shares_admission, started_at=_as_utc(db_now),
                    last_seen=_as_utc(db_now)))
            rows = list(await conn.execute(select(replicas).order_by(
                replicas.c.started_at, replicas.c.replica_id)))
            live, gone = [], []
            for row in rows:
                age = (db_now - (_utc(row.last_seen) or db_now)).total_seconds()
                if age <= stale_after_s:
                    live.append(Replica(row.replica_id, row.host, row.pid,
                                        bool(row.shares_admission), _utc(row.started_at),
                                        max(0.0, age)))
                elif age > _REPLICA_FORGOTTEN_S:
                    gone.append(row.replica_id)
            if gone:        # killed without a goodbye, long ago
                await conn.execute(delete(replicas).where(replicas.c.replica_id.in_(gone)))
        return live

    async def remove_replica(self, replica_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(replicas).where(replicas.c.replica_id == replica_id))


def _narrowed(query: SpendQuery) -> bool:
    """Whether an index picks the query's rows (a key, a payer, a request, a time range)."""
    return any(getattr(query, name) is not None for name in (
        "api_key", "request_id", "user_id", "team_id", "organization_id", "end_user", "start",
        "end", "model"))


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


# spend_totals' levels and the spend_logs column each groups by
_TOTAL_COLUMNS = {"key": "api_key", "user": "user_id", "team": "team_id",
                  "organization": "organization_id", "end_user": "end_user", "model": "model"}


def _spend_filtered(stmt: Select[Any], query: SpendQuery) -> Select[Any]:
    for name in ("api_key", "request_id", "user_id", "team_id", "organization_id", "end_user",
                 "model"):
        value = getattr(query, name)
        if value is not None:
            stmt = stmt.where(spend_logs.c[name] == value)
    if query.start is not None:
        stmt = stmt.where(spend_logs.c.start_time >= _as_utc(query.start))
    if query.end is not None:
        stmt = stmt.where(spend_logs.c.start_time < _as_utc(query.end))
    return stmt


# A heartbeat row this old belongs to a process that will not come back.
_REPLICA_FORGOTTEN_S = 3600.0


_SPEND_COLUMNS = ("request_id", "api_key", "key_alias", "model", "upstream", "call_type",
                  "prompt_tokens", "completion_tokens", "spend_nanos", "start_time", "end_time",
                  "status", *PAYER_COLUMNS, "attempts", "error")
_PG_TYPES = ("text", "text", "text", "text", "text", "text", "int", "int", "bigint",
             "timestamptz", "timestamptz", "text", "text", "text", "text", "text", "int", "text")

# One statement: insert what is new, add exactly the new rows' spend to their keys. It answers
# the spend per key, or (_PG_WRITE_SPEND_NEW_IDS) the new rows' ids, when payers above the keys
# need their share too.
_PG_WRITE_SPEND_CTE = f"""
WITH new_rows AS (
    INSERT INTO faregate_spend_logs ({", ".join(_SPEND_COLUMNS)})
    SELECT * FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_PG_TYPES))})
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, api_key, spend_nanos
), per_key AS (
    SELECT api_key, count(*) AS n, sum(spend_nanos) AS amount FROM new_rows GROUP BY api_key
), locked AS (
    -- lock the keys in one order, so that replicas writing batches at once cannot deadlock
    SELECT k.token FROM faregate_keys k JOIN per_key p ON k.token = p.api_key
    ORDER BY k.token FOR UPDATE OF k
), updated AS (
    UPDATE faregate_keys k SET spend_nanos = k.spend_nanos + per_key.amount
    FROM per_key JOIN locked ON locked.token = per_key.api_key
    WHERE k.token = per_key.api_key
)
"""
_PG_WRITE_SPEND = _PG_WRITE_SPEND_CTE + "SELECT api_key, n, amount FROM per_key"
_PG_WRITE_SPEND_NEW_IDS = _PG_WRITE_SPEND_CTE + "SELECT request_id FROM new_rows"


async def _write_spend_postgres(conn: Any, rows: Sequence[SpendRow]) -> SpendWritten:
    # Inserted in request id order: two writers of overlapping batches (a retry beside an
    # adoption) then wait for each other's ids in one order and cannot deadlock on them.
    unique = sorted(_first_of_each(rows), key=lambda r: r.request_id)
    columns = [[getattr(r, name) for r in unique] for name in _SPEND_COLUMNS]
    if not names_a_payer(unique):
        per_key = await conn.fetch(_PG_WRITE_SPEND, *columns)
        return SpendWritten(sum(int(r["n"]) for r in per_key),
                            {r["api_key"]: int(r["amount"]) for r in per_key})
    async with conn.transaction():
        inserted = {r["request_id"] for r in await conn.fetch(_PG_WRITE_SPEND_NEW_IDS, *columns)}
        new = [r for r in unique if r.request_id in inserted]
        amounts = payer_amounts(new)
        await add_payer_spend_postgres(conn, amounts)
    return SpendWritten(len(new), _per_key(new), amounts.by_scope())


def _per_key(rows: Sequence[SpendRow]) -> dict[str, int]:
    per_key: dict[str, int] = defaultdict(int)
    for r in rows:
        per_key[r.api_key] += r.spend_nanos
    return dict(per_key)


def _sqlite_time(value: datetime) -> str:
    # SQLAlchemy's storage format for DateTime on SQLite (naive UTC), so reads parse it back.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


# Each statement runs in one sqlite3_step, whatever the batch size: the driver lets go of the
# GIL around every step, and a thread waits up to the switch interval (5 ms) to get it back
# from an event loop busy serving, so per-row statements (executemany) ran at ~200 rows/s under
# full load. The rows travel as one JSON array, which also keeps one statement text for any
# batch size (a variable-length IN (?, ?, ...) filled the statement cache: +40 MB per 200k).
_SQLITE_KNOWN = ("SELECT request_id FROM faregate_spend_logs WHERE request_id IN "
                 "(SELECT value FROM json_each(?))")
_SQLITE_INSERT = (
    f"INSERT INTO faregate_spend_logs ({', '.join(_SPEND_COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_SPEND_COLUMNS)))
    + " FROM json_each(?)")
# A join (UPDATE ... FROM, one key lookup per amount), not a subquery per key over the whole
# array: that read the array once per key, ~260 µs a row for a batch of 1,000 keys.
_SQLITE_ADD = (
    "UPDATE faregate_keys SET spend_nanos = spend_nanos + a.amount FROM (SELECT "
    "json_extract(value, '$[0]') AS token, json_extract(value, '$[1]') AS amount "
    "FROM json_each(?)) AS a WHERE faregate_keys.token = a.token")


def _json(rows: Sequence[SpendRow], values: list[Any]) -> bytes:
    try:
        return orjson.dumps(values)
    except TypeError:
        # Text that is not valid Unicode (a lone surrogate): say which, as the driver would.
        for row in rows:
            for value in (row.request_id, row.api_key, row.key_alias, row.model, row.upstream,
                          row.call_type, row.status, row.user_id, row.team_id,
                          row.organization_id, row.end_user, row.error):
                if value is not None:
                    value.encode("utf-8")
        raise


def _sqlite_plan(rows: Sequence[SpendRow], found: list[Any]) -> tuple[
        SpendWritten, list[tuple[str, tuple[object, ...]]]]:
    """What the rows not found add, and the statements that write them: the insert, the
    rollups' upserts (storage/spend_rollup.py), the keys' update, then the payers' above the
    keys (storage/payer_spend.py)."""
    known = {r[0] for r in found}
    new = [r for r in _first_of_each(rows) if r.request_id not in known]
    per_key = _per_key(new)
    starts = [_sqlite_time(r.start_time) for r in new]
    inserted = _json(new, [
        (r.request_id, r.api_key, r.key_alias, r.model, r.upstream, r.call_type,
         r.prompt_tokens, r.completion_tokens, r.spend_nanos, start, _sqlite_time(r.end_time),
         r.status, r.user_id, r.team_id, r.organization_id, r.end_user, r.attempts, r.error)
        for r, start in zip(new, starts, strict=True)])
    amounts = payer_amounts(new)
    steps: list[tuple[str, tuple[object, ...]]] = [
        (_SQLITE_INSERT, (inserted,)),
        # the rollups, per batch (no insert triggers on SQLite since 0012)
        *spend_rollup.sqlite_steps(new, starts),
        (_SQLITE_ADD, (orjson.dumps(sorted(per_key.items())),)),
        *sqlite_steps(amounts, _sqlite_time(datetime.now(UTC)))]
    return SpendWritten(len(new), per_key, amounts.by_scope()), steps


async def _write_spend_sqlite(conn: Any, rows: Sequence[SpendRow]) -> SpendWritten:
    """Through aiosqlite (an in-memory database, which only the engine's connection sees).
    BEGIN IMMEDIATE takes SQLite's write lock first, so check-then-insert cannot race."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        found = await conn.execute_fetchall(
            _SQLITE_KNOWN, (_json(rows, [r.request_id for r in rows]),))
        written, steps = _sqlite_plan(rows, list(found))
        for statement, params in steps:
            await conn.execute(statement, params)
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    return written


class _SqliteSpendWriter:
    """The SQLite ledger's own connection, on one thread of its own: a whole batch is one
    transaction in one hop off the event loop, each statement run in one step. Through
    aiosqlite it took ~7 hops a batch and a GIL round trip per row, each waiting its turn
    behind a loop busy serving, and the ledger fell behind at ~3,300 requests/s (issue 13).
    One thread also means one writer at a time, with no lock to leak on a cancel."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ledger")
        self._conn: sqlite3.Connection | None = None

    async def write(self, rows: Sequence[SpendRow]) -> SpendWritten:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._write, rows)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)

    def _write(self, rows: Sequence[SpendRow]) -> SpendWritten:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute(
                _SQLITE_KNOWN, (_json(rows, [r.request_id for r in rows]),)).fetchall()
            written, steps = _sqlite_plan(rows, found)
            for statement, params in steps:
                conn.execute(statement, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return written

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
            for pragma in _SQLITE_PRAGMAS:
                conn.execute(pragma)
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _first_of_each(rows: Sequence[SpendRow]) -> list[SpendRow]:
    """A request id recorded twice in one batch counts once: the first, as the table keeps it."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.request_id not in seen:
            seen.add(r.request_id)
            out.append(r)
    return out

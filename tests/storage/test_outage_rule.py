"""is_outage, the one rule for 'the database cannot serve now', on errors provoked on a real
Postgres (a fresh database each test) and on SQLite, and on what must not count."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import create_async_engine
from support import PG_ADMIN_URL, fresh_pg_database, pg_admin

from faregate.storage.health import is_outage, outage_reason, sqlstate


@contextlib.asynccontextmanager
async def refusing(url: str) -> AsyncIterator[str]:
    """The database with ALLOW_CONNECTIONS false (restored in a finally). Yields its name."""
    name = url.rsplit("/", 1)[1]
    await pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        yield name
    finally:
        await pg_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def terminate_all(name: str) -> None:
    """pg_terminate_backend signals; wait until the backends are gone."""
    await pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for _ in range(100):
            if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE datname = $1", name):
                return
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def sa_error(url: str, sql: str = "SELECT 1") -> BaseException:
    engine = create_async_engine(sa_url(url), pool_pre_ping=True)
    try:
        async with engine.connect() as conn:
            await conn.execute(sqlalchemy.text(sql))
    except Exception as exc:
        return exc
    finally:
        await engine.dispose()
    raise AssertionError("no error")


def test_connect_refused_by_allow_connections_false_is_an_outage() -> None:
    async def scenario(url: str) -> None:
        async with refusing(url):
            raw: BaseException | None = None
            try:
                await asyncpg.connect(url)
            except Exception as exc:
                raw = exc
            wrapped = await sa_error(url)
        assert raw is not None and sqlstate(raw) == "55000" and is_outage(raw)
        assert isinstance(wrapped, sqlalchemy.exc.DBAPIError)
        assert not isinstance(wrapped, sqlalchemy.exc.OperationalError)  # why it was missed
        assert sqlstate(wrapped) == "55000" and is_outage(wrapped)
        assert "55000" in outage_reason(wrapped) and "not currently accepting" in \
            outage_reason(wrapped)

    with fresh_pg_database() as url:
        asyncio.run(scenario(url))


def test_a_terminated_held_connection_is_an_outage() -> None:
    async def scenario(url: str, name: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            await terminate_all(name)
            with pytest.raises(Exception) as caught:
                await conn.fetch("SELECT 1")
        finally:
            conn.terminate()
        assert is_outage(caught.value)
        # SQLAlchemy over a pooled connection the server ended: invalidated, an outage too.
        engine = create_async_engine(sa_url(url))     # no pre-ping: the query meets it
        try:
            async with engine.connect() as c:
                await c.execute(sqlalchemy.text("SELECT 1"))
            await terminate_all(name)
            with pytest.raises(sqlalchemy.exc.DBAPIError) as wrapped:
                async with engine.connect() as c:
                    await c.execute(sqlalchemy.text("SELECT 1"))
        finally:
            await engine.dispose()
        assert is_outage(wrapped.value)

    with fresh_pg_database() as url:
        asyncio.run(scenario(url, url.rsplit("/", 1)[1]))


def test_too_many_connections_is_an_outage() -> None:
    async def scenario(url: str, name: str) -> None:
        role = f"{name}_r"
        await pg_admin(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
        try:
            as_role = url.replace("://postgres@", f"://{role}@", 1)
            held = await asyncpg.connect(as_role)
            try:
                wrapped = await sa_error(as_role)
            finally:
                await held.close()
        finally:
            await terminate_all(name)
            await pg_admin(f'DROP ROLE IF EXISTS "{role}"')
        assert sqlstate(wrapped) == "53300" and is_outage(wrapped)

    with fresh_pg_database() as url:
        if "://postgres@" not in url:
            pytest.skip("needs the test server's trust login as postgres")
        asyncio.run(scenario(url, url.rsplit("/", 1)[1]))


@pytest.mark.parametrize("code", ["08006", "08001", "53100", "53200", "57P01", "57P02",
                                  "57P03", "55000"])
def test_every_outage_sqlstate_family_counts(code: str) -> None:
    """Codes a test cannot provoke safely on a shared server (a crash, a full disk), raised as
    asyncpg raises them from the server's error message."""
    cls = asyncpg.exceptions.PostgresError.get_message_class_for_sqlstate(code)  # type: ignore[attr-defined]
    exc = cls("server says no")
    assert sqlstate(exc) == code and is_outage(exc)


def test_query_errors_are_not_outages() -> None:
    async def scenario(url: str) -> list[BaseException]:
        engine = create_async_engine(sa_url(url))
        errors: list[BaseException] = []
        try:
            async with engine.begin() as conn:
                await conn.execute(sqlalchemy.text("CREATE TABLE t (k text PRIMARY KEY)"))
                await conn.execute(sqlalchemy.text("INSERT INTO t VALUES ('a')"))
            for sql, params in [("INSERT INTO t VALUES ('a')", {}),           # 23505
                                ("INSERT INTO t VALUES (:v)", {"v": "a\x00b"}),  # 22021
                                ("SELECT * FROM missing", {}),                 # 42P01
                                ("SELECT 1/0", {})]:                            # 22012
                try:
                    async with engine.begin() as conn:
                        await conn.execute(sqlalchemy.text(sql), params)
                except Exception as exc:
                    errors.append(exc)
        finally:
            await engine.dispose()
        return errors

    with fresh_pg_database() as url:
        errors = asyncio.run(scenario(url))
    assert [sqlstate(e) for e in errors] == ["23505", "22021", "42P01", "22012"]
    assert not any(is_outage(e) for e in errors)


def test_sqlite_busy_is_an_outage_and_a_bad_query_is_not(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    holder.execute("BEGIN EXCLUSIVE")

    async def scenario() -> tuple[BaseException, BaseException]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}",
                                     connect_args={"timeout": 0.1})
        try:
            with pytest.raises(sqlalchemy.exc.OperationalError) as busy:
                async with engine.begin() as conn:
                    await conn.execute(sqlalchemy.text("INSERT INTO t VALUES ('a')"))
            holder.execute("ROLLBACK")
            with pytest.raises(sqlalchemy.exc.OperationalError) as bad:
                async with engine.begin() as conn:
                    await conn.execute(sqlalchemy.text("SELECT * FROM missing"))
        finally:
            await engine.dispose()
        return busy.value, bad.value

    try:
        busy, bad = asyncio.run(scenario())
    finally:
        holder.close()
    assert "locked" in str(busy) and is_outage(busy)
    assert "no such table" in str(bad) and not is_outage(bad)


def test_pool_timeout_and_refused_connect_are_outages() -> None:
    assert is_outage(sqlalchemy.exc.TimeoutError("QueuePool limit reached"))
    assert is_outage(ConnectionRefusedError(111, "Connection refused"))

    async def refused() -> BaseException:
        engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/x")
        try:
            async with engine.connect():
                pass
        except Exception as exc:
            return exc
        finally:
            await engine.dispose()
        raise AssertionError("connected to port 1")

    assert is_outage(asyncio.run(refused()))

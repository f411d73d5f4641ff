"""Apply and check migrations (Alembic, numbered revisions under migrations/versions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from faregate.errors import ConfigError
from faregate.storage.database import create_engine

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config("")).get_current_head()
    assert head is not None
    return head


def upgrade(url: str) -> None:
    """Bring the schema to the newest revision. Blocking: call before the event loop runs."""
    command.upgrade(_config(url), "head")


async def current_revision(url: str) -> str | None:
    engine = create_engine(url)

    def _read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_read)
    finally:
        await engine.dispose()


def require_current(url: str) -> None:
    """With DISABLE_SCHEMA_UPDATE the schema is someone else's job; refuse to run behind it."""
    current = asyncio.run(current_revision(url))
    head = head_revision()
    if current != head:
        raise ConfigError(
            f"the database schema is at revision {current or 'none (empty database)'} but this "
            f"faregate needs {head}. DISABLE_SCHEMA_UPDATE is set, so faregate will not migrate "
            "it itself: run `faregate migrate` (the migration job) first")

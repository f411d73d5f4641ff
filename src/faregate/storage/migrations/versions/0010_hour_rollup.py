"""Hourly sums for the UI's month-long reads (issue 16): faregate_spend_rollup_hour holds the
levels "all" and "model" per UTC hour, kept by triggers beside the 15-minute rollup (0007).

Why: the overview and usage by model read a month of every model's buckets; at 15 minutes
that is 2,880 rows per model (34,560 for 12 models), at an hour 720. An hour is exact for
every zone a whole number of hours from UTC; for the others (India +05:30, Nepal +05:45) the
hours that a local day or hour cuts are read from the 15-minute buckets (storage/reports.py).
Only these two levels: a payer's own chart is one range of the 15-minute primary key, and the
ledger's write pays two more upserts per row on SQLite, not seven.

The upgrade fills the table from the 15-minute rollup (already equal to the ledger rows).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLE = "faregate_spend_rollup_hour"
LEVELS = (("all", None), ("model", "model"))
SUMS = ("spend_nanos", "requests", "failures", "prompt_tokens", "completion_tokens")

SQLITE_HOUR = "substr({t}, 1, 14) || '00:00.000000'"
PG_HOUR = "to_timestamp(floor(extract(epoch FROM {t}) / 3600) * 3600)"


def _execute(sql: str) -> None:
    op.get_bind().exec_driver_sql(sql)


def _id(r: str, column: str | None) -> str:
    return "''" if column is None else f"{r}.{column}"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("level", sa.String(16), primary_key=True),
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("bucket", sa.DateTime(timezone=True), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_spend_rollup_hour_level_bucket", TABLE,
                    ["level", "bucket", "id", *SUMS])
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        _postgres_triggers()
    else:
        _sqlite_triggers()
    hour = (PG_HOUR if postgres else SQLITE_HOUR).format(t="bucket")
    _execute(f"""
    INSERT INTO {TABLE} (level, id, bucket, {", ".join(SUMS)})
    SELECT level, id, {hour}, {", ".join(f"sum({s})" for s in SUMS)}
    FROM faregate_spend_rollup WHERE level IN ('all', 'model')
    GROUP BY level, id, {hour}""")


def _sqlite_add(r: str, sign: str) -> str:
    levels = " UNION ALL ".join(f"SELECT '{level}' AS level, {_id(r, column)} AS id"
                                for level, column in LEVELS)
    return f"""
    INSERT INTO {TABLE} (level, id, bucket, {", ".join(SUMS)})
    SELECT l.level, l.id, {SQLITE_HOUR.format(t=f"{r}.start_time")}, {sign}{r}.spend_nanos,
           {sign}1, {sign}({r}.status <> 'success'), {sign}{r}.prompt_tokens,
           {sign}{r}.completion_tokens
    FROM ({levels}) AS l WHERE l.id IS NOT NULL
    ON CONFLICT (level, id, bucket) DO UPDATE SET
    {", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS)};"""


def _sqlite_triggers() -> None:
    _execute(f"CREATE TRIGGER {TABLE}_insert AFTER INSERT ON faregate_spend_logs "
             f"BEGIN {_sqlite_add('NEW', '')} END")
    _execute(f"CREATE TRIGGER {TABLE}_update AFTER UPDATE ON faregate_spend_logs "
             f"BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '')} END")
    _execute(f"CREATE TRIGGER {TABLE}_delete AFTER DELETE ON faregate_spend_logs "
             f"BEGIN {_sqlite_add('OLD', '-')} END")


def _pg_add(rows: str, sign: str) -> str:
    values = ", ".join(f"('{level}', {_id('r', column)})" for level, column in LEVELS)
    return f"""
    INSERT INTO {TABLE} (level, id, bucket, {", ".join(SUMS)})
    SELECT l.level, l.id, {PG_HOUR.format(t="r.start_time")}, {sign}sum(r.spend_nanos),
           {sign}count(*), {sign}count(*) FILTER (WHERE r.status <> 'success'),
           {sign}sum(r.prompt_tokens), {sign}sum(r.completion_tokens)
    FROM {rows} r CROSS JOIN LATERAL (VALUES {values}) AS l(level, id)
    WHERE l.id IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (level, id, bucket) DO UPDATE SET
    {", ".join(f"{s} = {TABLE}.{s} + excluded.{s}" for s in SUMS)};"""


def _postgres_triggers() -> None:
    # As 0007: one grouped upsert per ledger statement, in (level, id, bucket) order.
    _execute(f"""
    CREATE FUNCTION {TABLE}_apply() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN {_pg_add('old_rows', '-')}
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN {_pg_add('new_rows', '')}
        END IF;
        RETURN NULL;
    END $$""")
    for event, tables in (("INSERT", "NEW TABLE AS new_rows"),
                          ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
                          ("DELETE", "OLD TABLE AS old_rows")):
        _execute(f"CREATE TRIGGER {TABLE}_{event.lower()} AFTER {event} ON "
                 f"faregate_spend_logs REFERENCING {tables} FOR EACH STATEMENT "
                 f"EXECUTE FUNCTION {TABLE}_apply()")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for event in ("insert", "update", "delete"):
        _execute(f"DROP TRIGGER IF EXISTS {TABLE}_{event}"
                 + (" ON faregate_spend_logs" if postgres else ""))
    if postgres:
        _execute(f"DROP FUNCTION IF EXISTS {TABLE}_apply()")
    op.drop_table(TABLE)

"""The spend rollups per ledger batch on SQLite (issue 15): its two row-level insert triggers
(faregate_spend_rollup_insert of 0007, faregate_spend_rollup_hour_insert of 0010) go, and the
ledger's batched write adds each batch's new rows to both rollups itself, one grouped upsert per
table in the rows' transaction (storage/spend_rollup.py). The triggers cost nine upserts per
row on the gateway's own ledger thread. Update and delete triggers stay as they are.

Postgres changes nothing: its triggers were statement-level over the inserted rows already.

Nothing to fill: the rollups are equal to the ledger before and after. From this revision on,
a row inserted into faregate_spend_logs by anything but write_spend reaches the SQLite rollups
only through a backfill; the downgrade restores the triggers.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The triggers as 0007 and 0010 made them, for the downgrade (a migration keeps its own copy:
# the newer code no longer writes them).
QUARTER = ("substr(NEW.start_time, 1, 14) || printf('%02d', "
           "(CAST(substr(NEW.start_time, 15, 2) AS INTEGER) / 15) * 15) || ':00.000000'")
HOUR = "substr(NEW.start_time, 1, 14) || '00:00.000000'"
SUMS = ("spend_nanos", "requests", "failures", "prompt_tokens", "completion_tokens")
TRIGGERS = {
    "faregate_spend_rollup_insert": ("faregate_spend_rollup", QUARTER, (
        ("all", "''"), ("model", "NEW.model"), ("key", "NEW.api_key"), ("team", "NEW.team_id"),
        ("user", "NEW.user_id"), ("org", "NEW.organization_id"),
        ("end_user", "NEW.end_user"))),
    "faregate_spend_rollup_hour_insert": ("faregate_spend_rollup_hour", HOUR, (
        ("all", "''"), ("model", "NEW.model"))),
}


def _execute(sql: str) -> None:
    # As the driver's own SQL: SQLAlchemy's text() would read ':00' in a literal as a parameter.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in TRIGGERS:
            _execute(f"DROP TRIGGER IF EXISTS {name}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, (table, bucket, levels) in TRIGGERS.items():
        ids = " UNION ALL ".join(f"SELECT '{level}' AS level, {column} AS id"
                                 for level, column in levels)
        _execute(f"""
        CREATE TRIGGER {name} AFTER INSERT ON faregate_spend_logs BEGIN
        INSERT INTO {table} (level, id, bucket, {", ".join(SUMS)})
        SELECT l.level, l.id, {bucket}, NEW.spend_nanos, 1, (NEW.status <> 'success'),
               NEW.prompt_tokens, NEW.completion_tokens
        FROM ({ids}) AS l WHERE l.id IS NOT NULL
        ON CONFLICT (level, id, bucket) DO UPDATE SET
        {", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS)}; END""")

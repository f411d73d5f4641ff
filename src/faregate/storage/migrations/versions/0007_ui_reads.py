"""Fast reads for the UI and the admin API (issue 16): keyset indexes on keys and spend rows,
and the spend rollup, kept by triggers, that the UI's aggregates read instead of the ledger.

Keys: (user_id | team_id | blocked, created_at, token) serve a filtered keyset page in index
order; key_alias gets a prefix-search index (text_pattern_ops on Postgres, so LIKE 'p%' uses it
whatever the database's collation). Spend rows: (start_time, request_id) replaces
(start_time) as the logs' keyset order; (model | status, start_time) serve the logs' filters.

faregate_spend_rollup holds, per 15-minute UTC bucket, each level's sums (level all, model,
key, team, user, org, end_user): spend, requests, failures (status other than success) and
tokens. 15 minutes: every time zone in use today is a whole number of quarter hours from UTC,
so a day or an hour in any zone is a whole number of buckets. Triggers on the ledger table keep
it equal to the rows, in the rows' own transaction: an insert adds, an update (a regenerated
key moves its rows) moves, a delete subtracts. The upgrade fills it from the rows already there.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LEVELS = (("all", None), ("model", "model"), ("key", "api_key"), ("team", "team_id"),
          ("user", "user_id"), ("org", "organization_id"), ("end_user", "end_user"))
SUMS = ("spend_nanos", "requests", "failures", "prompt_tokens", "completion_tokens")

SQLITE_BUCKET = ("substr({r}.start_time, 1, 14) || printf('%02d', "
                 "(CAST(substr({r}.start_time, 15, 2) AS INTEGER) / 15) * 15) || ':00.000000'")
PG_BUCKET = "to_timestamp(floor(extract(epoch FROM {r}.start_time) / 900) * 900)"


def _id(r: str, column: str | None) -> str:
    """A level's id in row `r`: level "all" has one, the empty string."""
    return "''" if column is None else f"{r}.{column}"


def _levels(r: str) -> str:
    return " UNION ALL ".join(f"SELECT '{level}' AS level, {_id(r, column)} AS id"
                              for level, column in LEVELS)


def _execute(sql: str) -> None:
    # As the driver's own SQL: SQLAlchemy's text() would read ':00' in a literal as a parameter.
    op.get_bind().exec_driver_sql(sql)


def upgrade() -> None:
    op.drop_index("ix_keys_user_id", "faregate_keys")
    op.drop_index("ix_keys_team_id", "faregate_keys")
    op.create_index("ix_keys_user_created", "faregate_keys", ["user_id", "created_at", "token"])
    op.create_index("ix_keys_team_created", "faregate_keys", ["team_id", "created_at", "token"])
    op.create_index("ix_keys_blocked_created", "faregate_keys",
                    ["blocked", "created_at", "token"])
    op.create_index("ix_keys_alias_prefix", "faregate_keys", ["key_alias"],
                    postgresql_ops={"key_alias": "text_pattern_ops"})

    op.drop_index("ix_spend_logs_start", "faregate_spend_logs")
    op.create_index("ix_spend_logs_start_id", "faregate_spend_logs",
                    ["start_time", "request_id"])
    op.create_index("ix_spend_logs_model_start", "faregate_spend_logs", ["model", "start_time"])
    op.create_index("ix_spend_logs_status_start", "faregate_spend_logs",
                    ["status", "start_time"])

    op.create_table(
        "faregate_spend_rollup",
        sa.Column("level", sa.String(16), primary_key=True),
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("bucket", sa.DateTime(timezone=True), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS),
        sqlite_with_rowid=False,        # clustered by (level, id, bucket): a payer's chart
    )                                   # is one contiguous range
    # A level's buckets in a range, read from this index alone (it holds every column): the
    # table's order is (level, id, bucket), so without it a level's range costs a lookup per
    # row (SQLite) or a heap page per row (Postgres: the ledger's upserts scatter them).
    op.create_index("ix_spend_rollup_level_bucket", "faregate_spend_rollup",
                    ["level", "bucket", "id", *SUMS])
    if op.get_bind().dialect.name == "postgresql":
        _postgres_triggers()
    else:
        _sqlite_triggers()


def _sqlite_add(r: str, sign: str) -> str:
    """One statement adding (sign '+') or taking away ('-') row `r` (NEW or OLD)."""
    bucket = SQLITE_BUCKET.format(r=r)
    return f"""
    INSERT INTO faregate_spend_rollup (level, id, bucket, {", ".join(SUMS)})
    SELECT l.level, l.id, {bucket}, {sign}{r}.spend_nanos, {sign}1,
           {sign}({r}.status <> 'success'), {sign}{r}.prompt_tokens, {sign}{r}.completion_tokens
    FROM ({_levels(r)}) AS l WHERE l.id IS NOT NULL
    ON CONFLICT (level, id, bucket) DO UPDATE SET
    {", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS)};"""


def _sqlite_triggers() -> None:
    _execute("CREATE TRIGGER faregate_spend_rollup_insert AFTER INSERT ON faregate_spend_logs "
               f"BEGIN {_sqlite_add('NEW', '')} END")
    _execute("CREATE TRIGGER faregate_spend_rollup_update AFTER UPDATE ON faregate_spend_logs "
               f"BEGIN {_sqlite_add('OLD', '-')} {_sqlite_add('NEW', '')} END")
    _execute("CREATE TRIGGER faregate_spend_rollup_delete AFTER DELETE ON faregate_spend_logs "
               f"BEGIN {_sqlite_add('OLD', '-')} END")
    _execute(_backfill(SQLITE_BUCKET))


def _pg_add(rows: str, sign: str) -> str:
    bucket = PG_BUCKET.format(r="r")
    values = ", ".join(f"('{level}', {_id('r', column)})" for level, column in LEVELS)
    return f"""
    INSERT INTO faregate_spend_rollup (level, id, bucket, {", ".join(SUMS)})
    SELECT l.level, l.id, {bucket}, {sign}sum(r.spend_nanos), {sign}count(*),
           {sign}count(*) FILTER (WHERE r.status <> 'success'), {sign}sum(r.prompt_tokens),
           {sign}sum(r.completion_tokens)
    FROM {rows} r CROSS JOIN LATERAL (VALUES {values}) AS l(level, id)
    WHERE l.id IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (level, id, bucket) DO UPDATE SET
    {", ".join(f"{s} = faregate_spend_rollup.{s} + excluded.{s}" for s in SUMS)};"""


def _postgres_triggers() -> None:
    # Statement triggers over transition tables: one grouped upsert per ledger statement, in
    # one order (level, id, bucket), so that writers on several replicas cannot deadlock.
    _execute(f"""
    CREATE FUNCTION faregate_spend_rollup_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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
        _execute(f"CREATE TRIGGER faregate_spend_rollup_{event.lower()} AFTER {event} ON "
                   f"faregate_spend_logs REFERENCING {tables} FOR EACH STATEMENT "
                   "EXECUTE FUNCTION faregate_spend_rollup_apply()")
    _execute(_backfill(PG_BUCKET))


def _backfill(bucket_sql: str) -> str:
    bucket = bucket_sql.format(r="r")
    return f"""
    INSERT INTO faregate_spend_rollup (level, id, bucket, {", ".join(SUMS)})
    SELECT l.level, l.id, l.bucket, sum(l.spend_nanos), count(*),
           sum(CASE WHEN l.status <> 'success' THEN 1 ELSE 0 END), sum(l.prompt_tokens),
           sum(l.completion_tokens)
    FROM ({" UNION ALL ".join(
        f"SELECT '{level}' AS level, {_id('r', column)} AS id, "
        f"{bucket} AS bucket, r.spend_nanos, r.status, r.prompt_tokens, r.completion_tokens "
        "FROM faregate_spend_logs r" for level, column in LEVELS)}) AS l
    WHERE l.id IS NOT NULL GROUP BY l.level, l.id, l.bucket"""


def downgrade() -> None:
    for event in ("insert", "update", "delete"):
        _execute(f"DROP TRIGGER IF EXISTS faregate_spend_rollup_{event}"
                   + (" ON faregate_spend_logs"
                      if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        _execute("DROP FUNCTION IF EXISTS faregate_spend_rollup_apply()")
    op.drop_table("faregate_spend_rollup")
    for index in ("ix_spend_logs_start_id", "ix_spend_logs_model_start",
                  "ix_spend_logs_status_start"):
        op.drop_index(index, "faregate_spend_logs")
    op.create_index("ix_spend_logs_start", "faregate_spend_logs", ["start_time"])
    for index in ("ix_keys_user_created", "ix_keys_team_created", "ix_keys_blocked_created",
                  "ix_keys_alias_prefix"):
        op.drop_index(index, "faregate_keys")
    op.create_index("ix_keys_user_id", "faregate_keys", ["user_id"])
    op.create_index("ix_keys_team_id", "faregate_keys", ["team_id"])

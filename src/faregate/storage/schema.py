"""The reference schema. Migrations must produce exactly this (tests/storage checks it)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

metadata = MetaData()

LEDGER_ERROR_CHARS = 400        # faregate_spend_logs.error (spend/row_error.py fills it)

keys = Table(
    "faregate_keys", metadata,
    Column("token", String(64), primary_key=True),
    Column("key_name", String(64), nullable=False),
    Column("key_alias", String(256), nullable=True, unique=True),
    Column("models", Text, nullable=False, default="[]"),
    Column("max_budget_nanos", BigInteger, nullable=True),
    Column("spend_nanos", BigInteger, nullable=False, default=0),
    Column("period_base_nanos", BigInteger, nullable=False, default=0),
    Column("budget_duration", String(32), nullable=True),
    Column("budget_reset_at", DateTime(timezone=True), nullable=True),
    Column("expires", DateTime(timezone=True), nullable=True),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("tpm_limit", Integer, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("max_parallel_requests", Integer, nullable=True),
    Column("blocked", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("model_rpm_limit", Text, nullable=False, default="{}"),
    Column("model_tpm_limit", Text, nullable=False, default="{}"),
    Column("aliases", Text, nullable=False, default="{}"),
    Column("user_id", String(256), nullable=True),
    Column("team_id", String(256), nullable=True),
    Column("organization_id", String(256), nullable=True),
    Column("budget_id", String(256), nullable=True),
    Index("ix_keys_created_at", "created_at", "token"),
    # keyset pages filtered by owner or state, and alias prefix search (migration 0007)
    Index("ix_keys_user_created", "user_id", "created_at", "token"),
    Index("ix_keys_team_created", "team_id", "created_at", "token"),
    Index("ix_keys_blocked_created", "blocked", "created_at", "token"),
    Index("ix_keys_alias_prefix", "key_alias", postgresql_ops={"key_alias": "text_pattern_ops"}),
)

spend_logs = Table(
    "faregate_spend_logs", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("api_key", String(64), nullable=False),
    Column("key_alias", String(256), nullable=True),
    Column("model", String(256), nullable=False),
    Column("upstream", String(512), nullable=False),
    Column("call_type", String(32), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("spend_nanos", BigInteger, nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("user_id", String(256), nullable=True),
    Column("team_id", String(256), nullable=True),
    Column("organization_id", String(256), nullable=True),
    Column("end_user", String(256), nullable=True),
    # upstream calls made (retries, fallbacks); NULL on rows written before migration 0011
    Column("attempts", Integer, nullable=True),
    # what a request that did not succeed ended with (spend/row_error.py); NULL on success
    Column("error", String(LEDGER_ERROR_CHARS), nullable=True),
    Index("ix_spend_logs_api_key_start", "api_key", "start_time"),
    Index("ix_spend_logs_start_id", "start_time", "request_id"),
    Index("ix_spend_logs_user_start", "user_id", "start_time"),
    # covering the per-team reports' sums (migration 0008)
    Index("ix_spend_logs_team_start", "team_id", "start_time", "model", "api_key",
          "spend_nanos", "prompt_tokens", "completion_tokens"),
    Index("ix_spend_logs_org_start", "organization_id", "start_time"),
    Index("ix_spend_logs_end_user_start", "end_user", "start_time"),
    Index("ix_spend_logs_model_start", "model", "start_time"),
    Index("ix_spend_logs_status_start", "status", "start_time"),
)

# Each level's sums per 15-minute UTC bucket (level: all, model, key, team, user, org,
# end_user; id '' for all), kept equal to the ledger rows (migration 0007; since 0012 SQLite's
# inserts by write_spend itself, storage/spend_rollup.py), so the UI's aggregates read
# thousands of rows instead of millions (storage/reports.py).
spend_rollup = Table(
    "faregate_spend_rollup", metadata,
    Column("level", String(16), primary_key=True),
    Column("id", String(512), primary_key=True),
    Column("bucket", DateTime(timezone=True), primary_key=True),
    Column("spend_nanos", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    # A level's buckets in a range, read from the index alone (it holds every column): the
    # table's order is (level, id, bucket), so without it a level's range is a lookup per row
    # (SQLite) or a heap page per row (Postgres: the ledger's upserts scatter them).
    Index("ix_spend_rollup_level_bucket", "level", "bucket", "id", "spend_nanos", "requests",
          "failures", "prompt_tokens", "completion_tokens"),
    sqlite_with_rowid=False,
)

# The levels all and model per UTC hour (migration 0010): a month of the models is 720 rows
# per model instead of 2,880, for the overview and usage by model (storage/reports.py).
spend_rollup_hour = Table(
    "faregate_spend_rollup_hour", metadata,
    Column("level", String(16), primary_key=True),
    Column("id", String(512), primary_key=True),
    Column("bucket", DateTime(timezone=True), primary_key=True),
    Column("spend_nanos", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Index("ix_spend_rollup_hour_level_bucket", "level", "bucket", "id", "spend_nanos",
          "requests", "failures", "prompt_tokens", "completion_tokens"),
    sqlite_with_rowid=False,
)

models = Table(
    "faregate_models", metadata,
    Column("id", String(64), primary_key=True),
    Column("model_name", String(256), nullable=False),
    Column("litellm_params", Text, nullable=False),      # JSON; secret fields sealed (sealing.py)
    Column("model_info", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_models_model_name", "model_name"),
)

replicas = Table(
    "faregate_replicas", metadata,
    Column("replica_id", String(64), primary_key=True),
    Column("host", String(256), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),     # the database's clock
    Column("last_seen", DateTime(timezone=True), nullable=False),      # the database's clock
    Column("shares_admission", Boolean, nullable=False),               # admits through Redis
)


# The payers above keys (issue 14). Each level's spend_nanos is the sum of the spend rows that
# name it, kept by write_spend in the same transaction as the rows.
ENTITY_ID = 256       # ids are the caller's (LiteLLM lets them choose), or generated uuids


def _budget_columns() -> list[Column[object]]:
    """A payer's budget terms and limits, as on keys."""
    return [
        Column("max_budget_nanos", BigInteger, nullable=True),
        Column("spend_nanos", BigInteger, nullable=False, default=0),
        Column("period_base_nanos", BigInteger, nullable=False, default=0),
        Column("budget_duration", String(32), nullable=True),
        Column("budget_reset_at", DateTime(timezone=True), nullable=True),
        Column("tpm_limit", Integer, nullable=True),
        Column("rpm_limit", Integer, nullable=True),
        Column("max_parallel_requests", Integer, nullable=True),
    ]


budgets = Table(
    "faregate_budgets", metadata,
    Column("budget_id", String(ENTITY_ID), primary_key=True),
    Column("max_budget_nanos", BigInteger, nullable=True),
    Column("budget_duration", String(32), nullable=True),
    Column("tpm_limit", Integer, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("max_parallel_requests", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_budgets_created_at", "created_at", "budget_id"),
)

users = Table(
    "faregate_users", metadata,
    Column("user_id", String(ENTITY_ID), primary_key=True),
    Column("user_email", String(256), nullable=True),
    Column("user_alias", String(256), nullable=True),
    Column("user_role", String(32), nullable=False, default="internal_user"),
    Column("models", Text, nullable=False, default="[]"),
    *_budget_columns(),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("budget_id", String(ENTITY_ID), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_users_created_at", "created_at", "user_id"),
    Index("ix_users_user_email", "user_email"),
)
# One user per email, case aside (migration 0009): /user/new and /user/update check first
# for a clear message; this holds when two of them race.
Index("ux_users_user_email_lower", func.lower(users.c.user_email), unique=True)

organizations = Table(
    "faregate_organizations", metadata,
    Column("organization_id", String(ENTITY_ID), primary_key=True),
    Column("organization_alias", String(256), nullable=True),
    Column("models", Text, nullable=False, default="[]"),
    *_budget_columns(),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("budget_id", String(ENTITY_ID), nullable=True),
    Column("blocked", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_organizations_created_at", "created_at", "organization_id"),
)

organization_members = Table(
    "faregate_organization_members", metadata,
    Column("organization_id", String(ENTITY_ID), primary_key=True),
    Column("user_id", String(ENTITY_ID), primary_key=True),
    Column("user_role", String(32), nullable=False, default="internal_user"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_organization_members_user_id", "user_id"),
)

teams = Table(
    "faregate_teams", metadata,
    Column("team_id", String(ENTITY_ID), primary_key=True),
    Column("team_alias", String(256), nullable=True),
    Column("organization_id", String(ENTITY_ID), nullable=True),
    Column("models", Text, nullable=False, default="[]"),
    *_budget_columns(),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("blocked", Boolean, nullable=False, default=False),
    Column("budget_id", String(ENTITY_ID), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_teams_created_at", "created_at", "team_id"),
    Index("ix_teams_organization_id", "organization_id"),
)

team_members = Table(
    "faregate_team_members", metadata,
    Column("team_id", String(ENTITY_ID), primary_key=True),
    Column("user_id", String(ENTITY_ID), primary_key=True),
    Column("role", String(16), nullable=False, default="user"),
    Column("max_budget_in_team_nanos", BigInteger, nullable=True),
    Column("spend_nanos", BigInteger, nullable=False, default=0),
    Column("period_base_nanos", BigInteger, nullable=False, default=0),
    Column("budget_duration", String(32), nullable=True),
    Column("budget_reset_at", DateTime(timezone=True), nullable=True),
    Column("tpm_limit", Integer, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_team_members_user_id", "user_id"),
)

end_users = Table(
    "faregate_end_users", metadata,
    Column("end_user_id", String(ENTITY_ID), primary_key=True),
    Column("alias", String(256), nullable=True),
    Column("blocked", Boolean, nullable=False, default=False),
    *_budget_columns(),
    Column("budget_id", String(ENTITY_ID), nullable=True),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_end_users_created_at", "created_at", "end_user_id"),
)

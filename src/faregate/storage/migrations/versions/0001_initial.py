"""Virtual keys and the spend ledger.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "faregate_keys",
        sa.Column("token", sa.String(64), primary_key=True),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("key_alias", sa.String(256), nullable=True, unique=True),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("max_budget_nanos", sa.BigInteger, nullable=True),
        sa.Column("spend_nanos", sa.BigInteger, nullable=False),
        sa.Column("period_base_nanos", sa.BigInteger, nullable=False),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("tpm_limit", sa.Integer, nullable=True),
        sa.Column("rpm_limit", sa.Integer, nullable=True),
        sa.Column("max_parallel_requests", sa.Integer, nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "faregate_spend_logs",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("api_key", sa.String(64), nullable=False),
        sa.Column("key_alias", sa.String(256), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("upstream", sa.String(512), nullable=False),
        sa.Column("call_type", sa.String(32), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("spend_nanos", sa.BigInteger, nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("ix_spend_logs_api_key_start", "faregate_spend_logs",
                    ["api_key", "start_time"])
    op.create_index("ix_spend_logs_start", "faregate_spend_logs", ["start_time"])


def downgrade() -> None:
    op.drop_table("faregate_spend_logs")
    op.drop_table("faregate_keys")

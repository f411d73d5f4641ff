"""Who pays above the key (issue 14): budgets, users, organizations and their members, teams
and their members, end users; the payers' ids on keys and on spend rows.

Every new column is nullable and every new table starts empty, so an upgraded database keeps
each key and its spend as they were (tests/storage/test_migrations.py checks it).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ENTITY_ID = 256


def _budget_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("max_budget_nanos", sa.BigInteger, nullable=True),
        sa.Column("spend_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("period_base_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tpm_limit", sa.Integer, nullable=True),
        sa.Column("rpm_limit", sa.Integer, nullable=True),
        sa.Column("max_parallel_requests", sa.Integer, nullable=True),
    ]


def _times() -> list[sa.Column[object]]:
    return [sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False)]


def upgrade() -> None:
    with op.batch_alter_table("faregate_keys") as batch:
        for name in ("user_id", "team_id", "organization_id", "budget_id"):
            batch.add_column(sa.Column(name, sa.String(ENTITY_ID), nullable=True))
    op.create_index("ix_keys_user_id", "faregate_keys", ["user_id"])
    op.create_index("ix_keys_team_id", "faregate_keys", ["team_id"])
    op.create_index("ix_keys_created_at", "faregate_keys", ["created_at", "token"])

    with op.batch_alter_table("faregate_spend_logs") as batch:
        for name in ("user_id", "team_id", "organization_id", "end_user"):
            batch.add_column(sa.Column(name, sa.String(ENTITY_ID), nullable=True))
    for index, column in (("ix_spend_logs_user_start", "user_id"),
                          ("ix_spend_logs_team_start", "team_id"),
                          ("ix_spend_logs_org_start", "organization_id"),
                          ("ix_spend_logs_end_user_start", "end_user")):
        op.create_index(index, "faregate_spend_logs", [column, "start_time"])

    op.create_table(
        "faregate_budgets",
        sa.Column("budget_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("max_budget_nanos", sa.BigInteger, nullable=True),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("tpm_limit", sa.Integer, nullable=True),
        sa.Column("rpm_limit", sa.Integer, nullable=True),
        sa.Column("max_parallel_requests", sa.Integer, nullable=True),
        *_times(),
    )
    op.create_index("ix_budgets_created_at", "faregate_budgets", ["created_at", "budget_id"])

    op.create_table(
        "faregate_users",
        sa.Column("user_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("user_email", sa.String(256), nullable=True),
        sa.Column("user_alias", sa.String(256), nullable=True),
        sa.Column("user_role", sa.String(32), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        *_budget_columns(),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("budget_id", sa.String(ENTITY_ID), nullable=True),
        *_times(),
    )
    op.create_index("ix_users_created_at", "faregate_users", ["created_at", "user_id"])
    op.create_index("ix_users_user_email", "faregate_users", ["user_email"])

    op.create_table(
        "faregate_organizations",
        sa.Column("organization_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("organization_alias", sa.String(256), nullable=True),
        sa.Column("models", sa.Text, nullable=False),
        *_budget_columns(),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("budget_id", sa.String(ENTITY_ID), nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False),
        *_times(),
    )
    op.create_index("ix_organizations_created_at", "faregate_organizations",
                    ["created_at", "organization_id"])

    op.create_table(
        "faregate_organization_members",
        sa.Column("organization_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("user_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("user_role", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_organization_members_user_id", "faregate_organization_members",
                    ["user_id"])

    op.create_table(
        "faregate_teams",
        sa.Column("team_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("team_alias", sa.String(256), nullable=True),
        sa.Column("organization_id", sa.String(ENTITY_ID), nullable=True),
        sa.Column("models", sa.Text, nullable=False),
        *_budget_columns(),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("blocked", sa.Boolean, nullable=False),
        sa.Column("budget_id", sa.String(ENTITY_ID), nullable=True),
        *_times(),
    )
    op.create_index("ix_teams_created_at", "faregate_teams", ["created_at", "team_id"])
    op.create_index("ix_teams_organization_id", "faregate_teams", ["organization_id"])

    op.create_table(
        "faregate_team_members",
        sa.Column("team_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("user_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("max_budget_in_team_nanos", sa.BigInteger, nullable=True),
        sa.Column("spend_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("period_base_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tpm_limit", sa.Integer, nullable=True),
        sa.Column("rpm_limit", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_team_members_user_id", "faregate_team_members", ["user_id"])

    op.create_table(
        "faregate_end_users",
        sa.Column("end_user_id", sa.String(ENTITY_ID), primary_key=True),
        sa.Column("alias", sa.String(256), nullable=True),
        sa.Column("blocked", sa.Boolean, nullable=False),
        *_budget_columns(),
        sa.Column("budget_id", sa.String(ENTITY_ID), nullable=True),
        sa.Column("metadata", sa.Text, nullable=False),
        *_times(),
    )
    op.create_index("ix_end_users_created_at", "faregate_end_users",
                    ["created_at", "end_user_id"])


def downgrade() -> None:
    for table in ("faregate_end_users", "faregate_team_members", "faregate_teams",
                  "faregate_organization_members", "faregate_organizations", "faregate_users",
                  "faregate_budgets"):
        op.drop_table(table)
    for index in ("ix_spend_logs_user_start", "ix_spend_logs_team_start",
                  "ix_spend_logs_org_start", "ix_spend_logs_end_user_start"):
        op.drop_index(index, "faregate_spend_logs")
    with op.batch_alter_table("faregate_spend_logs") as batch:
        for name in ("user_id", "team_id", "organization_id", "end_user"):
            batch.drop_column(name)
    for index in ("ix_keys_user_id", "ix_keys_team_id", "ix_keys_created_at"):
        op.drop_index(index, "faregate_keys")
    with op.batch_alter_table("faregate_keys") as batch:
        for name in ("user_id", "team_id", "organization_id", "budget_id"):
            batch.drop_column(name)

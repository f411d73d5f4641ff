"""Per-model RPM/TPM limits on keys (LiteLLM's model_rpm_limit, model_tpm_limit).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("faregate_keys") as batch:
        batch.add_column(sa.Column("model_rpm_limit", sa.Text, nullable=False,
                                   server_default="{}"))
        batch.add_column(sa.Column("model_tpm_limit", sa.Text, nullable=False,
                                   server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("faregate_keys") as batch:
        batch.drop_column("model_tpm_limit")
        batch.drop_column("model_rpm_limit")

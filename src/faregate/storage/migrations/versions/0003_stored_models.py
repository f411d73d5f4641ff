"""Models stored through /model/new, their credentials sealed under the salt key.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "faregate_models",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("litellm_params", sa.Text, nullable=False),
        sa.Column("model_info", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_models_model_name", "faregate_models", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_models_model_name", "faregate_models")
    op.drop_table("faregate_models")

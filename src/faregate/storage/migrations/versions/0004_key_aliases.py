"""Model aliases on keys (LiteLLM's `aliases`: {"my-gpt": "qwen-local"}).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("faregate_keys") as batch:
        batch.add_column(sa.Column("aliases", sa.Text, nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("faregate_keys") as batch:
        batch.drop_column("aliases")

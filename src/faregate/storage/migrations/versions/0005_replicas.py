"""Serving processes register here with a heartbeat, so that processes sharing one database
without shared admission (Redis) find each other (storage/replicas.py).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "faregate_replicas",
        sa.Column("replica_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("shares_admission", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("faregate_replicas")

"""Each ledger row's attempts and error (issue 16, the UI's request detail): `attempts`, the
upstream calls the request made (retries and fallbacks included), and `error`, what a request
that did not succeed ended with (spend/row_error.py: type/code and the first 300 characters of
the message, secrets redacted).

Both nullable and without a default: rows written before this revision keep NULL, which the UI
shows as "not recorded" rather than a guessed 1. Adding a nullable column without a default
rewrites nothing on either database (a plain ALTER TABLE ... ADD COLUMN, not the batch copy:
that would drop the rollup triggers of 0007 and 0010 with the old table).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLE = "faregate_spend_logs"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("attempts", sa.Integer, nullable=True))
    op.add_column(TABLE, sa.Column("error", sa.String(400), nullable=True))


def downgrade() -> None:
    # SQLite (3.35+) drops a column in place: no trigger or index names these two.
    op.drop_column(TABLE, "error")
    op.drop_column(TABLE, "attempts")

"""The per-team reports read only the team index (issue 14): ix_spend_logs_team_start also
holds the columns /team/daily/activity and the team filters of the spend reports sum and group
by (model, api_key, spend_nanos, prompt_tokens, completion_tokens), so a team's rows are summed
from the index alone instead of being fetched one by one from the table.

Measured on SQLite, 200k rows, one team holding half of them (best of 3): the team's days
910 ms -> 128 ms, its days by model 1085 -> 205 ms, by key 1320 -> 311 ms (the three queries
of /team/daily/activity: 3.3 s -> 0.64 s). Raw inserts into the table lose 3-15% of their
rate to the wider index (20k rows in one transaction, two runs).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLE = "faregate_spend_logs"
INDEX = "ix_spend_logs_team_start"


def upgrade() -> None:
    op.drop_index(INDEX, TABLE)
    op.create_index(INDEX, TABLE, ["team_id", "start_time", "model", "api_key", "spend_nanos",
                                   "prompt_tokens", "completion_tokens"])


def downgrade() -> None:
    op.drop_index(INDEX, TABLE)
    op.create_index(INDEX, TABLE, ["team_id", "start_time"])

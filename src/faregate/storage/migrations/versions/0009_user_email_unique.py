"""One user per email, case aside (issue 14): a unique index on lower(user_email).

/user/new and /user/update look for another holder of the email first (for a message naming
it), but two concurrent calls with one email could both pass that look; the index makes the
second insert fail, which the store turns into the same 400 `user_email_exists`.

A database that already holds two users with one email (compared case-insensitively) must
still upgrade: the oldest holder (created_at, then user_id) keeps the email; each other
holder's `user_email` is set to NULL and the email it had is kept in its `metadata` as
`"faregate_duplicate_user_email"`, so an admin can see whom it named and give it another
(`/user/update`). Each such user is logged by id. Nothing else changes; keys and spend stay.

Revision ID: 0009
Revises: 0008
"""

import json
import logging

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = "faregate_users"
INDEX = "ux_users_user_email_lower"
MOVED = "faregate_duplicate_user_email"    # the metadata key a duplicate's email goes to

log = logging.getLogger("faregate.migrations")


def upgrade() -> None:
    conn = op.get_bind()
    users = sa.table(TABLE, sa.column("user_id"), sa.column("user_email"),
                     sa.column("metadata"), sa.column("created_at"))
    rows = conn.execute(sa.select(users.c.user_id, users.c.user_email, users.c.metadata)
                        .where(users.c.user_email.is_not(None))
                        .order_by(users.c.created_at, users.c.user_id)).all()
    kept: dict[str, str] = {}                       # lower(email) -> the user keeping it
    for user_id, email, metadata in rows:
        holder = kept.setdefault(email.lower(), user_id)
        if holder == user_id:
            continue
        try:
            meta = json.loads(metadata or "{}")
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        meta[MOVED] = email
        conn.execute(sa.update(users).where(users.c.user_id == user_id).values(
            user_email=None, metadata=json.dumps(meta, separators=(",", ":"))))
        log.warning("user %s shared the email of user %s: its user_email is now null (kept in "
                    "its metadata as %s)", user_id, holder, MOVED)
    op.create_index(INDEX, TABLE, [sa.text("lower(user_email)")], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, TABLE)

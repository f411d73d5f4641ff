"""The spend of the payers above a key, added in the same transaction as the rows.

A spend row names up to five payers besides its key: its user, team, the user within the team
(a member), organization and end user. write_spend adds each new row's spend to every one of
them, so each level's spend_nanos is the sum of the rows it pays for, as a key's is. A user
pays for the rows of its personal keys (no team): a team key's row is paid by the team and the
member (as admission books it), so a user's spend in teams never eats its personal budget. Rows
already recorded add nothing anywhere (the insert skips them; only the rows it inserted are
counted here).

A payer named by a row but missing from its table gains nothing (as for a key: the row stays
the record), except an end user, who is created by its first row (LiteLLM creates end users
on first use; their spend must add up from the first request).

Levels are written in one fixed order, and within a level in id order, locked first on
Postgres: two processes writing batches at once can wait for each other, never deadlock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from faregate.records import SpendRow
from faregate.storage.protocols import scope
from faregate.storage.schema import end_users, organizations, team_members, teams, users


@dataclass(frozen=True)
class _Level:
    name: str                       # the scope's level
    table: str
    id_columns: tuple[str, ...]
    row_column: str = ""            # the spend_logs column naming it (end users: end_user)
    created_on_first_row: bool = False


_LEVELS = (
    _Level("user", users.name, ("user_id",)),
    _Level("team", teams.name, ("team_id",)),
    _Level("member", team_members.name, ("team_id", "user_id")),
    _Level("org", organizations.name, ("organization_id",)),
    _Level("end_user", end_users.name, ("end_user_id",), "end_user",
           created_on_first_row=True),
)

PAYER_COLUMNS = ("user_id", "team_id", "organization_id", "end_user")


def names_a_payer(rows: Sequence[SpendRow]) -> bool:
    return any(r.user_id or r.team_id or r.organization_id or r.end_user for r in rows)


def _ids(level: str, row: SpendRow) -> tuple[str, ...] | None:
    if level == "user":             # what the user pays as a payer: its personal keys' rows
        return (row.user_id,) if row.user_id and not row.team_id else None
    if level == "team":
        return (row.team_id,) if row.team_id else None
    if level == "member":
        return (row.team_id, row.user_id) if row.team_id and row.user_id else None
    if level == "org":
        return (row.organization_id,) if row.organization_id else None
    return (row.end_user,) if row.end_user else None


@dataclass(frozen=True)
class PayerAmounts:
    """What the new rows add to each payer above their keys, level by level, ids sorted."""

    by_level: tuple[tuple[_Level, tuple[tuple[tuple[str, ...], int], ...]], ...]

    def by_scope(self) -> dict[str, int]:
        return {scope(level.name, *ids): amount
                for level, amounts in self.by_level for ids, amount in amounts}


def payer_amounts(new_rows: Sequence[SpendRow]) -> PayerAmounts:
    out = []
    for level in _LEVELS:
        sums: dict[tuple[str, ...], int] = defaultdict(int)
        for row in new_rows:
            ids = _ids(level.name, row)
            if ids is not None:
                sums[ids] += row.spend_nanos
        if sums:
            out.append((level, tuple(sorted(sums.items()))))
    return PayerAmounts(tuple(out))


# Postgres: one statement per level (two for end users), ids and amounts as arrays.

def _pg_statements(level: _Level) -> tuple[str, ...]:
    ids = level.id_columns
    arrays = ", ".join(f"${i + 1}::text[]" for i in range(len(ids)))
    amount = f"${len(ids) + 1}::bigint[]"
    names = ", ".join(f"id{i}" for i in range(len(ids)))
    given = f"SELECT * FROM unnest({arrays}, {amount}) AS a({names}, amount)"
    match = " AND ".join(f"t.{c} = a.id{i}" for i, c in enumerate(ids))
    order = ", ".join(f"t.{c}" for c in ids)
    add = (
        f"WITH a AS ({given}), locked AS ("
        f"SELECT {order} FROM {level.table} t JOIN a ON {match} ORDER BY {order} FOR UPDATE OF t"
        f") UPDATE {level.table} t SET spend_nanos = t.spend_nanos + a.amount FROM a "
        f"WHERE {match}")
    if not level.created_on_first_row:
        return (add,)
    # Those still missing are made with the sum of every row naming them (this batch's rows
    # included: they are in), their period starting before this batch. One made meanwhile by
    # another writer is a conflict that adds this batch's amount only.
    made = (
        f"INSERT INTO {level.table} AS t ({ids[0]}, blocked, spend_nanos, period_base_nanos, "
        "metadata, created_at, updated_at) "
        "SELECT id0, false, total, total - amount, '{}', now(), now() FROM ("
        f"SELECT id0, amount, (SELECT coalesce(sum(l.spend_nanos), 0) "
        f"FROM faregate_spend_logs l WHERE l.{level.row_column} = a.id0) AS total "
        f"FROM ({given}) a WHERE NOT EXISTS "
        f"(SELECT 1 FROM {level.table} t WHERE t.{ids[0]} = a.id0)) n ORDER BY id0 "
        f"ON CONFLICT ({ids[0]}) DO UPDATE SET spend_nanos = t.spend_nanos + "
        "(excluded.spend_nanos - excluded.period_base_nanos)")
    return add, made


_PG_STATEMENTS = {level.name: _pg_statements(level) for level in _LEVELS}


def pg_arguments(amounts: tuple[tuple[tuple[str, ...], int], ...],
                 width: int) -> list[list[object]]:
    columns: list[list[object]] = [[ids[i] for ids, _ in amounts] for i in range(width)]
    columns.append([amount for _, amount in amounts])
    return columns


async def add_payer_spend_postgres(conn: Any, amounts: PayerAmounts) -> None:
    """On an asyncpg connection, inside the rows' transaction, after the rows' insert."""
    for level, sums in amounts.by_level:
        arguments = pg_arguments(sums, len(level.id_columns))
        for statement in _PG_STATEMENTS[level.name]:
            await conn.execute(statement, *arguments)


# SQLite: one statement per level (two for end users), the amounts as one JSON array (see
# database.py on why). One writer at a time: nothing is made meanwhile.

def _sqlite_statements(level: _Level) -> tuple[str, ...]:
    ids = level.id_columns
    # a join: one lookup per amount (a subquery per payer read the whole array each time)
    listed = ", ".join(f"json_extract(value, '$[{i}]') AS id{i}" for i in range(len(ids)))
    match = " AND ".join(f"{level.table}.{c} = a.id{i}" for i, c in enumerate(ids))
    add = (
        f"UPDATE {level.table} SET spend_nanos = spend_nanos + a.amount FROM (SELECT {listed}, "
        f"json_extract(value, '$[{len(ids)}]') AS amount FROM json_each(?1)) AS a WHERE {match}")
    if not level.created_on_first_row:
        return (add,)
    made = (
        f"INSERT INTO {level.table} ({ids[0]}, blocked, spend_nanos, period_base_nanos, "
        "metadata, created_at, updated_at) SELECT id, 0, total, total - amount, '{}', ?2, ?2 "
        "FROM (SELECT id, amount, (SELECT coalesce(sum(l.spend_nanos), 0) FROM "
        f"faregate_spend_logs l WHERE l.{level.row_column} = a.id) AS total FROM ("
        "SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS amount "
        f"FROM json_each(?1)) a WHERE NOT EXISTS ("
        f"SELECT 1 FROM {level.table} t WHERE t.{ids[0]} = a.id))")
    return add, made


SQLITE_STATEMENTS = {level.name: _sqlite_statements(level) for level in _LEVELS}


def sqlite_steps(amounts: PayerAmounts, now: str) -> list[tuple[str, tuple[object, ...]]]:
    """The statements and parameters that add the amounts (`now`: created_at for end users
    made by their first row, in SQLite's stored format)."""
    steps: list[tuple[str, tuple[object, ...]]] = []
    for level, sums in amounts.by_level:
        payload = orjson.dumps([[*ids, amount] for ids, amount in sums])
        add, *made = SQLITE_STATEMENTS[level.name]
        steps.append((add, (payload,)))
        steps += [(statement, (payload, now)) for statement in made]
    return steps

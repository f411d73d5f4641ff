"""The spend rollups' share of a ledger batch on SQLite: one grouped upsert per rollup table.

faregate_spend_rollup (15-minute buckets, seven levels) and faregate_spend_rollup_hour (hours,
levels all and model) are kept equal to the ledger rows (migrations 0007, 0010). Postgres does
it with statement-level triggers over the inserted rows. SQLite has only row-level triggers:
nine upserts per row, most of the ledger thread's time (issue 15). So on SQLite write_spend
adds each batch's new rows itself, in the rows' transaction, one upsert per (level, id,
bucket); migration 0012 drops the two insert triggers. The update and delete triggers stay: a
regenerated key's rows move their sums, one row at a time, rarely.

The sums are grouped here, not by a GROUP BY over the insert's JSON: SQLite parses a row's JSON
again for every json_extract, and eleven of them a row cost ~20 µs, four times the grouping.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from faregate.records import SpendRow
from faregate.storage.reports import HOURLY_LEVELS
from faregate.storage.schema import spend_rollup, spend_rollup_hour

SUMS = ("spend_nanos", "requests", "failures", "prompt_tokens", "completion_tokens")
# the levels in the order a row's shape (below) names their ids; level "all" has one, ''
LEVELS = ("all", "model", "key", "team", "user", "org", "end_user")
_HOURLY = tuple(LEVELS.index(level) for level in HOURLY_LEVELS)

# A minute's quarter hour, as the triggers of 0007 wrote it from start_time's stored text
# ("YYYY-MM-DD HH:MM:SS.ffffff"): "YYYY-MM-DD HH:" || printf('%02d', MM / 15 * 15) || ":00.000000".
_QUARTER = tuple(f"{minute // 15 * 15:02d}:00.000000" for minute in range(60))
_HOUR = "00:00.000000"


def _upsert(table: str) -> str:
    """One statement for a table; its one parameter, the groups as a JSON array of
    [level, id, bucket, *SUMS]."""
    columns = ("level", "id", "bucket", *SUMS)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT "
        + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
        # WHERE true: without it SQLite would read ON CONFLICT as a join's ON
        + " FROM json_each(?) WHERE true ON CONFLICT (level, id, bucket) DO UPDATE SET "
        + ", ".join(f"{s} = {s} + excluded.{s}" for s in SUMS))


_UPSERTS = (_upsert(spend_rollup.name), _upsert(spend_rollup_hour.name))

Group = dict[tuple[str, str, str], list[int]]


def _add(groups: Group, group: tuple[str, str, str], sums: list[int]) -> None:
    into = groups.get(group)
    if into is None:
        groups[group] = list(sums)
    else:
        for i, value in enumerate(sums):
            into[i] += value


def sqlite_steps(rows: Sequence[SpendRow],
                 start_times: Sequence[str]) -> list[tuple[str, tuple[object, ...]]]:
    """The upserts that add new ledger rows to both rollups (`start_times`: each row's
    start_time as stored). Nothing for no rows."""
    # Rows of one shape (minute, model and payers) first: a batch is mostly a few keys' rows.
    shapes: dict[tuple[str, str, str, str | None, str | None, str | None, str | None],
                 list[int]] = {}
    for row, start in zip(rows, start_times, strict=True):
        shape = (start[:16], row.model, row.api_key, row.team_id, row.user_id,
                 row.organization_id, row.end_user)
        sums = shapes.get(shape)
        if sums is None:
            sums = shapes[shape] = [0, 0, 0, 0, 0]
        sums[0] += row.spend_nanos
        sums[1] += 1
        sums[2] += row.status != "success"
        sums[3] += row.prompt_tokens
        sums[4] += row.completion_tokens
    quarters: Group = {}
    hours: Group = {}
    for (minute, *ids), sums in shapes.items():
        quarter = minute[:14] + _QUARTER[int(minute[14:16])]
        hour = minute[:14] + _HOUR
        idents = ("", *ids)
        for level, ident in zip(LEVELS, idents, strict=True):
            if ident is not None:
                _add(quarters, (level, ident, quarter), sums)
        for i in _HOURLY:
            if (ident := idents[i]) is not None:
                _add(hours, (LEVELS[i], ident, hour), sums)
    # in key order: each table's b-tree is walked once, front to back
    return [(statement, (orjson.dumps([[*group, *sums] for group, sums in sorted(g.items())]),))
            for statement, g in zip(_UPSERTS, (quarters, hours), strict=True) if g]

"""The period calendar: LiteLLM's duration strings ("30s", "30m", "1h", "1d", "1w", "1mo") and
the one rule for when a budget period ends. A month is a calendar month everywhere (in-process,
in Redis, at validation): the Lua script never computes a period end, Python hands it one.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta

_PATTERN = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Longer periods are no budget or expiry anyone means, and dates past year 9999 do not exist.
MAX_SECONDS = 100 * 366 * 86400
MAX_MONTHS = 100 * 12


def validate(text: str) -> str:
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 30m, 1h, 1d, 1w or 1mo")
    amount, unit = int(match[1]), match[2]
    if (amount > MAX_MONTHS) if unit == "mo" else (amount * _SECONDS[unit] > MAX_SECONDS):
        raise ValueError(f"{text!r} is longer than 100 years; use a shorter duration")
    return text.strip()


def add(start: datetime, text: str) -> datetime:
    """`start` plus the duration; months are calendar months (Jan 31 + 1mo = Feb 28/29)."""
    match = _PATTERN.match(validate(text))
    assert match is not None
    amount, unit = int(match[1]), match[2]
    if unit == "mo":
        month_index = start.month - 1 + amount
        year, month = start.year + month_index // 12, month_index % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day)
    return start + timedelta(**{_UNITS[unit]: amount})


def next_reset(reset_at: datetime, duration: str, now: datetime) -> datetime:
    """The end of the period that contains `now`, for a period that was due to end at
    `reset_at`: periods follow one another from `reset_at`, skipping any that passed unused."""
    while reset_at <= now:
        reset_at = add(reset_at, duration)
    return reset_at

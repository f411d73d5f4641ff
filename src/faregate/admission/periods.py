"""LiteLLM's duration strings: "30s", "30m", "1h", "1d", "1w", "1mo"."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta

_PATTERN = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 31 * 86400}
# Longer periods are no budget or expiry anyone means, and dates past year 9999 do not exist.
MAX_SECONDS = 100 * 366 * 86400


def validate(text: str) -> str:
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 30m, 1h, 1d, 1w or 1mo")
    if int(match[1]) * _SECONDS[match[2]] > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years; use a shorter duration")
    return text.strip()


def add(start: datetime, text: str) -> datetime:
    match = _PATTERN.match(validate(text))
    assert match is not None
    amount, unit = int(match[1]), match[2]
    if unit == "mo":
        month_index = start.month - 1 + amount
        year, month = start.year + month_index // 12, month_index % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day)
    return start + timedelta(**{_UNITS[unit]: amount})

"""LiteLLM's duration strings: "30s", "30m", "1h", "1d", "1w", "1mo"."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta

_PATTERN = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def validate(text: str) -> str:
    if not isinstance(text, str) or not _PATTERN.match(text) or int(_PATTERN.match(text)[1]) == 0:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 30m, 1h, 1d, 1w or 1mo")
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

"""faregate.admission.periods: LiteLLM's "30s", "30m", "1h", "1d", "1w", "1mo"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from faregate.admission import periods

T0 = datetime(2024, 3, 10, 12, 30, 15, tzinfo=UTC)


@pytest.mark.parametrize(("text", "delta"), [
    ("30s", timedelta(seconds=30)),
    ("1s", timedelta(seconds=1)),
    ("30m", timedelta(minutes=30)),            # m is minutes, not months
    ("1h", timedelta(hours=1)),
    ("36h", timedelta(hours=36)),
    ("1d", timedelta(days=1)),
    ("30d", timedelta(days=30)),
    ("1w", timedelta(weeks=1)),
    ("2w", timedelta(days=14)),
    (" 2h ", timedelta(hours=2)),
    ("2 h", timedelta(hours=2)),
])
def test_fixed_units(text: str, delta: timedelta) -> None:
    assert periods.add(T0, text) == T0 + delta


@pytest.mark.parametrize(("start", "text", "end"), [
    (datetime(2024, 3, 10, 12, 30, 15), "1mo", datetime(2024, 4, 10, 12, 30, 15)),
    (datetime(2024, 1, 31), "1mo", datetime(2024, 2, 29)),       # leap year
    (datetime(2023, 1, 31), "1mo", datetime(2023, 2, 28)),
    (datetime(2100, 1, 31), "1mo", datetime(2100, 2, 28)),       # not a leap year
    (datetime(2024, 3, 31), "1mo", datetime(2024, 4, 30)),
    (datetime(2024, 1, 30), "1mo", datetime(2024, 2, 29)),
    (datetime(2024, 1, 28), "1mo", datetime(2024, 2, 28)),
    (datetime(2024, 12, 15), "1mo", datetime(2025, 1, 15)),      # across the year
    (datetime(2023, 12, 31), "2mo", datetime(2024, 2, 29)),
    (datetime(2024, 1, 31), "12mo", datetime(2025, 1, 31)),
    (datetime(2024, 2, 29), "12mo", datetime(2025, 2, 28)),
    (datetime(2024, 5, 31), "25mo", datetime(2026, 6, 30)),
])
def test_months_clamp_to_month_end(start: datetime, text: str, end: datetime) -> None:
    assert periods.add(start, text) == end


def test_months_keep_time_and_timezone() -> None:
    tz = timezone(timedelta(hours=-5))
    start = datetime(2024, 1, 31, 23, 59, 59, 999, tzinfo=tz)
    assert periods.add(start, "1mo") == datetime(2024, 2, 29, 23, 59, 59, 999, tzinfo=tz)
    assert periods.add(T0, "1mo").tzinfo is UTC


@pytest.mark.parametrize("text", ["30s", "30m", "1h", "1d", "1w", "1mo", " 7d "])
def test_validate_accepts_and_strips(text: str) -> None:
    assert periods.validate(text) == text.strip()


@pytest.mark.parametrize("text", [
    "0d", "0s", "0mo", "00h", "", " ", "d", "1", "1x", "1y", "1M", "1D", "-1d", "+1d", "1.5h",
    "1 mo 2d", "1d2h", "1month", "1 day", "mo1",
])
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        periods.validate(text)
    with pytest.raises(ValueError, match="is not a duration"):
        periods.add(T0, text)


@pytest.mark.parametrize("value", [None, 30, 1.0, b"1d"])
def test_non_strings_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        periods.validate(value)  # type: ignore[arg-type]

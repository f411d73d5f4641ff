"""Jinja2 for the pages: autoescaping always on, undefined names an error, and the filters the
templates share (money in nano-dollars shown as dollars, times in the viewer's zone)."""

from __future__ import annotations

from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from faregate.money import NANOS_PER_DOLLAR

TEMPLATES = Path(__file__).parent / "templates"


def dollars(nanos: int | None) -> str:
    """$1,234.56 for large amounts, more decimals for small ones (a call costs fractions of
    a cent); '—' for none."""
    if nanos is None:
        return "—"
    value = nanos / NANOS_PER_DOLLAR
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:,.4f}".rstrip("0").rstrip(".")
    return f"${value:.9f}".rstrip("0").rstrip(".")


def number(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def when(value: datetime | None, zone: tzinfo, seconds: bool = False) -> str:
    if value is None:
        return "—"
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S" if seconds
                                           else "%Y-%m-%d %H:%M")


def percent(part: int | float, whole: int | float) -> str:
    return "—" if not whole else f"{100 * part / whole:.1f}%"


class Renderer:
    def __init__(self, directory: Path = TEMPLATES) -> None:
        self.env = Environment(loader=FileSystemLoader(directory), autoescape=True,
                               undefined=StrictUndefined, trim_blocks=True,
                               lstrip_blocks=True)
        self.env.filters.update(dollars=dollars, number=number, when=when, percent=percent)

    def render(self, template: str, **values: Any) -> str:
        return self.env.get_template(template).render(**values)

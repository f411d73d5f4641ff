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
    """$1,234.56 for large amounts, up to 6 decimals below $1,000 and 9 below a cent (a
    call costs fractions of a cent; a remaining budget must not round up), trailing zeros
    dropped; '—' for none."""
    if nanos is None:
        return "—"
    value = nanos / NANOS_PER_DOLLAR
    if value == 0:
        return "$0"
    if abs(value) >= 1000:
        return f"${value:,.2f}"
    text = f"{value:,.6f}" if abs(value) >= 0.01 else f"{value:.9f}"
    return "$" + text.rstrip("0").rstrip(".")


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

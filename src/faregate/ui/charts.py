"""Charts as geometry for the templates' SVG (templates/macros.html draws them): stacked bars
per time bucket, and the spend-vs-budget bar. Numbers are integers (nano-dollars, tokens);
nothing here knows HTML, so nothing here can forget to escape it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAX_SERIES = 8                      # more are summed as "other" (the palette has 9 colours)
OTHER = "other"


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    series: int                     # colour class s0..s8
    title: str                      # the tooltip: "<bucket> · <series>: <value>"


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    rects: tuple[Rect, ...]
    x_labels: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    legend: tuple[tuple[int, str], ...]
    # The same numbers as a table, for screen readers and for copying.
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def empty(self) -> bool:
        return not self.rects


LEFT, BOTTOM, TOP, RIGHT = 64, 24, 8, 8


def stacked_bars(title: str, buckets: Sequence[str], series: Mapping[str, Sequence[int]],
                 fmt: Callable[[int], str], width: int = 960, height: int = 220) -> Chart:
    """One bar per bucket, stacked by series (each a value per bucket), the largest series
    first; beyond MAX_SERIES the rest are summed as "other"."""
    ranked = sorted(series.items(), key=lambda item: (-sum(item[1]), item[0]))
    if len(ranked) > MAX_SERIES:
        rest = [sum(values) for values in zip(*(v for _, v in ranked[MAX_SERIES - 1:]),
                                              strict=True)]
        ranked = [*ranked[:MAX_SERIES - 1], (OTHER, rest)]
    totals = [sum(v[i] for _, v in ranked) for i in range(len(buckets))]
    top = _nice_ceiling(max(totals, default=0))
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    step = plot_w / max(len(buckets), 1)
    bar_w = max(step * 0.8, 1.0)
    rects = []
    for i, bucket in enumerate(buckets):
        y = float(TOP + plot_h)
        for index, (name, values) in enumerate(ranked):
            value = values[i]
            if value <= 0 or top == 0:
                continue
            h = plot_h * value / top
            y -= h
            rects.append(Rect(round(LEFT + i * step + (step - bar_w) / 2, 2), round(y, 2),
                              round(bar_w, 2), round(h, 2), index,
                              f"{bucket} · {name}: {fmt(value)}"))
    every = max(1, len(buckets) // 8)
    x_labels = tuple((round(LEFT + i * step + step / 2, 2), b)
                     for i, b in enumerate(buckets) if i % every == 0)
    y_ticks = tuple((round(TOP + plot_h - plot_h * k / 4, 2), fmt(top * k // 4))
                    for k in range(5)) if top else ()
    return Chart(title, width, height, tuple(rects), x_labels, y_ticks,
                 tuple((i, name) for i, (name, _) in enumerate(ranked)),
                 ("", *(name for name, _ in ranked), "total"),
                 tuple((b, *(fmt(v[i]) for _, v in ranked), fmt(totals[i]))
                       for i, b in enumerate(buckets)))


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above value (0 stays 0)."""
    if value <= 0:
        return 0
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= value:
            return factor * magnitude
    return 10 * magnitude


@dataclass(frozen=True)
class BudgetBar:
    """Spend and open reservations against a budget, as percentages of the bar's width."""

    spent: int
    reserved: int
    budget: int | None

    @property
    def spent_pct(self) -> float:
        return self._pct(self.spent)

    @property
    def reserved_pct(self) -> float:
        return min(self._pct(self.reserved), 100 - self.spent_pct)

    @property
    def over(self) -> bool:
        return self.budget is not None and self.spent + self.reserved >= self.budget

    @property
    def remaining(self) -> int | None:
        if self.budget is None:
            return None
        return max(self.budget - self.spent - self.reserved, 0)

    def _pct(self, part: int) -> float:
        if not self.budget:
            return 0.0 if self.budget is None else 100.0 * (part > 0)
        return round(min(100.0, 100.0 * max(part, 0) / self.budget), 2)

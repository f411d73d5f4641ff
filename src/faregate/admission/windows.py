"""A sliding one-minute window counted in one-second buckets, exact to the second."""

from __future__ import annotations

from collections import deque

from faregate.admission.demand import WINDOW_S


class SlidingWindow:
    __slots__ = ("_buckets", "_total")

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque()    # [second, amount], oldest first
        self._total = 0

    def used(self, now_s: int) -> int:
        buckets = self._buckets
        while buckets and buckets[0][0] <= now_s - WINDOW_S:
            self._total -= buckets.popleft()[1]
        return self._total

    def add(self, now_s: int, amount: int) -> None:
        if self._buckets and self._buckets[-1][0] == now_s:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([now_s, amount])
        self._total += amount

    def adjust(self, second: int, delta: int) -> None:
        """Settle a reservation booked at `second` (if still in the window) by `delta`."""
        for bucket in reversed(self._buckets):
            if bucket[0] == second:
                delta = max(delta, -bucket[1])
                bucket[1] += delta
                self._total += delta
                return
            if bucket[0] < second:
                return

    def reset_in(self, now_s: int) -> int:
        """Seconds until the oldest booked amount leaves the window."""
        return self._buckets[0][0] + WINDOW_S - now_s if self._buckets else 0

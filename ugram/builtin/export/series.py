"""The exposed series, one class a Prometheus type: what the supervisor keeps of each.

Each ``add`` folds in one worker's entry for a batch (see :class:`~.wire.Delta`) and
returns False, changing nothing, when the result could not be exposed (a sum overflowed to
infinity); the supervisor applies every batch whole, under its lock, so a scrape sees a
series as it was between two batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from . import sketch
from .wire import Profile

# How far apart in receive time two workers' gauge lines may reach the supervisor and still
# be put in order: older changes are folded into the value (and the count of changes kept
# one by one is bounded).
GAUGE_ORDER_NS = 10 * 10**9
GAUGE_CHANGES = 64


class Series:
    """One series (a family's name and one label set)."""

    __slots__ = ("dead", "labels", "updated_ns")

    def __init__(self, labels: tuple[tuple[str, str], ...]) -> None:
        self.labels = labels
        self.updated_ns = 0  # the latest receive time of a line applied
        self.dead = False  # dropped (TTL); a worker's id for it must be admitted again


class CounterSeries(Series):
    """Cumulative since the series appeared: the sum of ``value / sample_rate``."""

    __slots__ = ("value",)

    def __init__(self, labels: tuple[tuple[str, str], ...]) -> None:
        super().__init__(labels)
        self.value = 0.0

    def add(self, total: float) -> bool:
        new = self.value + total
        if not math.isfinite(new):
            return False
        self.value = new
        return True


class GaugeSeries(Series):
    """The last absolute value by receive time, plus the changes (``+N``/``-N``) received
    after it, from any worker.

    Changes are kept one by one (with their receive times) for :data:`GAUGE_ORDER_NS` and
    at most :data:`GAUGE_CHANGES` of them, so that an absolute value another worker's delta
    brings later still voids exactly the changes received before it; older ones are summed
    into ``folded``, which an absolute value voids only when it was received after the
    newest of them.
    """

    __slots__ = ("base", "base_ns", "changes", "folded", "folded_ns")

    def __init__(self, labels: tuple[tuple[str, str], ...]) -> None:
        super().__init__(labels)
        self.base, self.base_ns = 0.0, 0
        self.folded, self.folded_ns = 0.0, 0
        self.changes: list[tuple[int, float]] = []

    def add(self, at_ns: int, value: float, change_ns: int, change: float) -> bool:
        base, base_ns, changes, folded = self.base, self.base_ns, self.changes, self.folded
        if at_ns and at_ns >= base_ns:  # a later absolute value: earlier changes are void
            base, base_ns = value, at_ns
            changes = [c for c in changes if c[0] > at_ns]
            if at_ns >= self.folded_ns:
                folded = 0.0
        # >=: a change in the datagram that set the value (one receive time) comes after it
        if change_ns and change_ns >= base_ns:
            changes = [*changes, (change_ns, change)]
        if not math.isfinite(base + folded + sum(c for _, c in changes)):
            return False
        self.base, self.base_ns, self.changes, self.folded = base, base_ns, changes, folded
        self._fold()
        return True

    def _fold(self) -> None:
        changes = self.changes
        if not changes:
            return
        oldest = max(ns for ns, _ in changes) - GAUGE_ORDER_NS
        if len(changes) <= GAUGE_CHANGES and min(ns for ns, _ in changes) > oldest:
            return
        changes.sort()
        while changes and (len(changes) > GAUGE_CHANGES or changes[0][0] <= oldest):
            ns, change = changes.pop(0)
            self.folded += change
            self.folded_ns = max(self.folded_ns, ns)

    @property
    def value(self) -> float:
        return self.base + self.folded + sum(c for _, c in self.changes)


class HistogramSeries(Series):
    """Cumulative bucket counts, count and sum (each sample weighing ``1 / sample_rate``)."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, labels: tuple[tuple[str, str], ...], buckets: int) -> None:
        super().__init__(labels)
        self.counts = [0.0] * (buckets + 1)
        self.count = self.sum = 0.0

    def add(self, count: float, total: float, counts: Sequence[float]) -> bool:
        new_sum = self.sum + total
        if len(counts) != len(self.counts) or not math.isfinite(new_sum + count):
            return False
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.count += count
        self.sum = new_sum
        return True

    def cumulative(self) -> list[float]:
        """The count of each bucket and those below it (the last is ``+Inf``)."""
        out, running = [], 0.0
        for count in self.counts:
            running += count
            out.append(running)
        return out


class SummarySeries(Series):
    """Cumulative count and sum, and the sketches of the last ``age_buckets`` windows."""

    __slots__ = ("count", "sum", "windows")

    def __init__(self, labels: tuple[tuple[str, str], ...]) -> None:
        super().__init__(labels)
        self.count = self.sum = 0.0
        self.windows: dict[int, dict[int, float]] = {}

    def add(
        self, count: float, total: float, window: int, pairs: Iterable[tuple[int, float]], keep: int
    ) -> bool:
        new_sum = self.sum + total
        if not math.isfinite(new_sum + count):
            return False
        self.count += count
        self.sum = new_sum
        into = self.windows.setdefault(window, {})
        for k, weight in pairs:
            into[k] = into.get(k, 0.0) + weight
        for old in [w for w in self.windows if w <= max(self.windows) - keep]:
            del self.windows[old]
        return True

    def quantiles(self, qs: Sequence[float], window_now: int, keep: int) -> list[float]:
        """The quantiles of the samples of the windows not older than ``keep`` windows."""
        recent = [s for w, s in self.windows.items() if w > window_now - keep]
        return sketch.quantiles(sketch.merge(recent), qs)


class SetSeries(Series):
    """The distinct members of the current and the previous interval."""

    __slots__ = ("intervals",)

    def __init__(self, labels: tuple[tuple[str, str], ...]) -> None:
        super().__init__(labels)
        self.intervals: dict[int, set[str]] = {}

    def add(self, index: int, members: Iterable[str], cap: int) -> int:
        """Add members of interval ``index``; returns how many the cap refused."""
        into = self.intervals.setdefault(index, set())
        refused = 0
        for member in members:
            if cap and len(into) >= cap and member not in into:
                refused += 1
            else:
                into.add(member)
        for old in [i for i in self.intervals if i < max(self.intervals) - 1]:
            del self.intervals[old]
        return refused

    def count_in(self, index: int) -> int:
        """How many distinct members interval ``index`` had."""
        return len(self.intervals.get(index, ()))


AnySeries = CounterSeries | GaugeSeries | HistogramSeries | SummarySeries | SetSeries


def new_series(profile: Profile, labels: tuple[tuple[str, str], ...]) -> AnySeries:
    """An empty series of ``profile``'s kind."""
    if profile.kind == "counter":
        return CounterSeries(labels)
    if profile.kind == "gauge":
        return GaugeSeries(labels)
    if profile.kind == "histogram":
        return HistogramSeries(labels, len(profile.buckets))
    if profile.kind == "summary":
        return SummarySeries(labels)
    return SetSeries(labels)

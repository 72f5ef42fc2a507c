"""``totals.json``: the running totals, and folding one merged interval into them.

Series idle for ``series_ttl`` are pruned, and new ones admitted within the limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import msgspec

from .bucket import NO_LIMITS, SUMMARY_KINDS, Bucket, Limits, to_ns
from .keys import Key

_V = TypeVar("_V")


class CounterTotal(msgspec.Struct):
    """A counter summed over all intervals; ``updated``: the end (epoch seconds) of the last
    interval that added to it (0 in totals written before it was)."""

    name: str
    tags: list[str]
    value: float
    updated: float = 0.0


class GaugeTotal(msgspec.Struct):
    """A gauge's last value and when it was received: ``at`` in epoch seconds, ``at_ns`` in
    exact epoch nanoseconds (what orders two values; 0 in totals written before it was)."""

    name: str
    tags: list[str]
    value: float
    at: float
    at_ns: int = 0


class SetTotal(msgspec.Struct):
    """A set's distinct members over all intervals, and how many there are."""

    name: str
    tags: list[str]
    value: int
    members: list[str]
    updated: float = 0.0


class SummaryTotal(msgspec.Struct):
    """A histogram, timer or distribution over all intervals (no percentiles: those would
    need every sample ever received)."""

    name: str
    tags: list[str]
    count: float
    sum: float
    min: float
    max: float
    avg: float
    updated: float = 0.0


class Totals(msgspec.Struct, kw_only=True):
    """``totals.json``: everything aggregated since the directory was created.

    Counters are summed over intervals, gauges hold their last value (``+N``/``-N`` changes
    applied), sets their distinct
    members; ``flushes`` counts the interval records written. Within the limits: a series
    not updated for ``series_ttl`` is dropped (``pruned_series``); a new series when the
    totals hold ``max_series``, or an addition that would overflow, is refused (counted in
    ``refused_series`` with those refused in the intervals); so are set members past the
    member limits (``refused_members``). ``refused_lines`` and ``skipped_partials`` add up
    the intervals' counts. ``merged_partials`` names the partial files merged lately, so
    that a merge interrupted before it removed them does not merge them again, and a worker
    recovering a dead one's journal knows which of its partials were merged.
    """

    since: float | None = None
    until: float | None = None
    flushes: int = 0
    counters: list[CounterTotal] = []
    gauges: list[GaugeTotal] = []
    sets: list[SetTotal] = []
    histograms: list[SummaryTotal] = []
    timers: list[SummaryTotal] = []
    distributions: list[SummaryTotal] = []
    events: int = 0
    service_checks: int = 0
    lines: int = 0
    invalid_lines: int = 0
    refused_lines: int = 0
    refused_series: int = 0
    refused_members: int = 0
    pruned_series: int = 0
    skipped_partials: int = 0
    merged_partials: list[str] = []  # the partial files merged lately (see the aggregator)


def add_to_totals(totals: Totals, b: Bucket, interval: float, limits: Limits = NO_LIMITS) -> Totals:
    """Fold one merged interval into the running totals; returns the new totals.

    Series idle for ``limits.series_ttl`` are dropped first, then the interval's series are
    added within ``limits``.
    """
    fold = _Fold(totals, b.start + interval, limits)
    fold.prune()
    fold.add(b)
    return Totals(
        since=b.start if totals.since is None else min(totals.since, b.start),
        until=max(totals.until or 0.0, fold.end),
        flushes=totals.flushes + 1,
        counters=[
            CounterTotal(n, list(t), v, at) for (n, t), (v, at) in sorted(fold.counters.items())
        ],
        gauges=[
            GaugeTotal(n, list(t), v, at / 1e9, at)
            for (n, t), (at, v) in sorted(fold.gauges.items())
        ],
        sets=[
            SetTotal(n, list(t), len(m), sorted(m), at)
            for (n, t), (m, at) in sorted(fold.sets.items())
        ],
        events=totals.events + len(b.events),
        service_checks=totals.service_checks + len(b.checks),
        lines=totals.lines + b.lines,
        invalid_lines=totals.invalid_lines + b.invalid_lines,
        refused_lines=totals.refused_lines + b.refused_lines,
        refused_series=totals.refused_series + b.refused_series + fold.refused_series,
        refused_members=totals.refused_members + b.refused_members + fold.refused_members,
        pruned_series=totals.pruned_series + fold.pruned,
        skipped_partials=totals.skipped_partials + b.skipped_partials,
        histograms=fold.summary_list("h"),
        timers=fold.summary_list("ms"),
        distributions=fold.summary_list("d"),
    )


class _Fold:
    """The totals as dicts while one interval is folded in (see :func:`add_to_totals`)."""

    def __init__(self, totals: Totals, end: float, limits: Limits) -> None:
        self.end = end
        self.limits = limits
        # Series written before ``updated`` existed count as updated when the totals were.
        old = totals.until or end
        self.counters = {
            (c.name, tuple(c.tags)): (c.value, c.updated or old) for c in totals.counters
        }
        self.gauges = {
            (g.name, tuple(g.tags)): (g.at_ns or to_ns(g.at), g.value) for g in totals.gauges
        }
        self.sets = {
            (s.name, tuple(s.tags)): (set(s.members), s.updated or old) for s in totals.sets
        }
        self.summaries = {
            kind: {(s.name, tuple(s.tags)): s for s in getattr(totals, name)}
            for kind, name in SUMMARY_KINDS.items()
        }
        for by_key in self.summaries.values():
            for summary in by_key.values():
                summary.updated = summary.updated or old
        self.pruned = self.refused_series = self.refused_members = 0
        self.series = 0
        self.members = 0

    def prune(self) -> None:
        """Drop the series not updated for ``series_ttl``; count what is left."""
        if self.limits.series_ttl:
            cutoff = self.end - self.limits.series_ttl
            self.counters = self._fresh(self.counters, lambda v: v[1] >= cutoff)
            self.gauges = self._fresh(self.gauges, lambda v: v[0] / 1e9 >= cutoff)
            self.sets = self._fresh(self.sets, lambda v: v[1] >= cutoff)
            for kind, by_key in self.summaries.items():
                self.summaries[kind] = self._fresh(by_key, lambda s: s.updated >= cutoff)
        self.series = len(self.counters) + len(self.gauges) + len(self.sets)
        self.series += sum(map(len, self.summaries.values()))
        self.members = sum(len(m) for m, _ in self.sets.values())

    def _fresh(self, entries: dict[Key, _V], keep: Callable[[_V], bool]) -> dict[Key, _V]:
        kept = {key: value for key, value in entries.items() if keep(value)}
        self.pruned += len(entries) - len(kept)
        return kept

    def _admit(self, present: bool) -> bool:
        if present:
            return True
        if self.limits.max_series and self.series >= self.limits.max_series:
            self.refused_series += 1
            return False
        self.series += 1
        return True

    def add(self, b: Bucket) -> None:
        """Fold the interval's series in."""
        for key, value in b.counters.items():
            old = self.counters.get(key)
            new = (old[0] if old else 0.0) + value
            if not math.isfinite(new):
                self.refused_series += 1
            elif self._admit(old is not None):
                self.counters[key] = (new, self.end)
        for key in b.gauges.keys() | b.deltas.keys():
            current = self.gauges.get(key)
            if not self._admit(current is not None):
                continue
            at, value = current if current is not None else (-1, 0.0)
            self.gauges[key] = b.gauge_value(key, value, at)
        for key, members in b.sets.items():
            entry = self.sets.get(key)
            if self._admit(entry is not None):
                mine = entry[0] if entry else set()
                self._add_members(mine, members)
                self.sets[key] = (mine, self.end)
        for (kind, key), (values, weights) in b.samples.items():
            self._add_summary(kind, key, values, weights)

    def _add_members(self, target: set[str], new: set[str]) -> None:
        per_set, overall = self.limits.max_set_members, self.limits.max_members
        for member in new - target:
            if (per_set and len(target) >= per_set) or (overall and self.members >= overall):
                self.refused_members += 1
                continue
            target.add(member)
            self.members += 1

    def _add_summary(self, kind: str, key: Key, values: list[float], weights: list[float]) -> None:
        count = sum(weights)
        total = sum(v * w for v, w in zip(values, weights, strict=True))
        low, high = min(values), max(values)
        by_key = self.summaries[kind]
        old = by_key.get(key)
        if old is not None:
            count, total = count + old.count, total + old.sum
            low, high = min(low, old.min), max(high, old.max)
        if not (math.isfinite(count) and math.isfinite(total)):
            self.refused_series += 1
        elif self._admit(old is not None):
            by_key[key] = SummaryTotal(
                key[0], list(key[1]), count, total, low, high, total / count, self.end
            )

    def summary_list(self, kind: str) -> list[SummaryTotal]:
        by_key = self.summaries[kind]
        return [by_key[key] for key in sorted(by_key)]

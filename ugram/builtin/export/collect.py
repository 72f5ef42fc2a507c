"""One batch's contribution to the exposed series, in a worker (a :class:`~.wire.Delta`).

:meth:`Collector.add_packets` folds a ``handle_batch`` call's lines into one entry per
series: counters sum ``value / sample_rate``; a gauge keeps its last absolute value and the
sum of the changes (``+N``/``-N``) after it, with their receive times, so that the
supervisor orders them against other workers' lines; histogram and timer samples land in
their buckets (timers in seconds), summary samples in a sketch of their age window, each
weighing ``1 / sample_rate``; set members are kept per interval. Lines that are refused
(see :class:`~.resolve.Resolver`) or dropped by a mapping are counted by reason.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from ...codecs.statsd import Event, Line, Metric
from . import sketch
from .resolve import COUNTER, DROPPED, GAUGE, HISTOGRAM, REFUSED, SET, SUMMARY, Resolver, Target
from .wire import Delta

_sketch_key = sketch.key


class Collector:
    """The entries of one batch, by series id (cleared by :meth:`take`)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.counts: dict[str, int] = {}
        self._counters: dict[int, list[float]] = {}
        self._gauges: dict[int, list[float]] = {}
        self._histograms: dict[int, list[float]] = {}
        self._buckets: dict[int, list[float]] = {}
        self._summaries: dict[tuple[int, int], list[float]] = {}
        self._sketches: dict[tuple[int, int], dict[int, float]] = {}
        self._sets: dict[tuple[int, int], set[str]] = {}
        self._set_lines: dict[tuple[int, int], int] = {}

    def count(self, what: str, n: int = 1) -> None:
        """Add ``n`` to one of the worker's own counts."""
        self.counts[what] = self.counts.get(what, 0) + n

    def add_packets(self, packets: Sequence[Sequence[Line]], received_ns: Sequence[int]) -> None:
        """Fold every metric line of ``packets`` (each datagram's lines beside its receive
        time) into the entries; events and service checks are only counted."""
        resolve = self.resolver.resolve
        for packet, ns in zip(packets, received_ns, strict=True):
            for line in packet:
                if type(line) is not Metric:
                    self.count("events" if type(line) is Event else "service_checks")
                    continue
                target = resolve(line)
                if target.dropped:
                    self.count("dropped_tags", target.dropped)
                kind = target.kind
                if kind == COUNTER:
                    self._counter(target, line)
                elif kind == GAUGE:
                    self._gauge(target, line, ns)
                elif kind == HISTOGRAM:
                    self._histogram(target, line)
                elif kind == SUMMARY:
                    self._summary(target, line, ns)
                elif kind == SET:
                    self._set(target, line, ns)
                elif kind == REFUSED:
                    self.count("refused:" + target.reason)
                elif kind == DROPPED:
                    self.count("dropped")

    def _counter(self, target: Target, line: Metric) -> None:
        value = sum(line.values) / line.sample_rate
        if value < 0:  # a Prometheus counter never goes down (statsd_exporter refuses too)
            self.count("refused:negative_counter")
            return
        entry = self._counters.get(target.sid)
        if entry is None:
            self._counters[target.sid] = [1, value]
        else:
            entry[0] += 1
            entry[1] += value

    def _gauge(self, target: Target, line: Metric, ns: int) -> None:
        entry = self._gauges.get(target.sid)
        if entry is None:
            entry = self._gauges[target.sid] = [0, 0, 0.0, 0, 0.0]
        entry[0] += 1
        if line.relative:
            entry[3] = ns
            entry[4] += sum(line.values)
        else:  # what came before in this batch no longer counts
            entry[1], entry[2], entry[3], entry[4] = ns, line.values[-1], 0, 0.0

    def _histogram(self, target: Target, line: Metric) -> None:
        entry = self._histograms.get(target.sid)
        if entry is None:
            entry = self._histograms[target.sid] = [0, 0.0, 0.0]
            self._buckets[target.sid] = [0.0] * (len(target.bounds) + 1)
        counts, bounds = self._buckets[target.sid], target.bounds
        weight, scale = 1.0 / line.sample_rate, target.scale
        entry[0] += 1
        for raw in line.values:
            value = raw * scale
            counts[bisect_left(bounds, value)] += weight  # le: the first bound >= value
            entry[1] += weight
            entry[2] += value * weight

    def _summary(self, target: Target, line: Metric, ns: int) -> None:
        key = (target.sid, ns // target.window_ns)
        entry = self._summaries.get(key)
        if entry is None:
            entry = self._summaries[key] = [0, 0.0, 0.0]
            self._sketches[key] = {}
        sketch_of = self._sketches[key]
        weight, scale = 1.0 / line.sample_rate, target.scale
        entry[0] += 1
        for raw in line.values:
            value = raw * scale
            k = _sketch_key(value)
            sketch_of[k] = sketch_of.get(k, 0.0) + weight
            entry[1] += weight
            entry[2] += value * weight

    def _set(self, target: Target, line: Metric, ns: int) -> None:
        key = (target.sid, ns // target.interval_ns)
        members = self._sets.get(key)
        if members is None:
            members = self._sets[key] = set()
            self._set_lines[key] = 0
        self._set_lines[key] += 1
        members.update(line.members)

    def __bool__(self) -> bool:
        return bool(
            self.counts
            or self._counters
            or self._gauges
            or self._histograms
            or self._summaries
            or self._sets
            or self.resolver.new_series
        )

    def take(self) -> Delta:
        """The batch's delta (with the series and profiles first used in it); then empty."""
        r = self.resolver
        delta = Delta(
            profiles=r.new_profiles[:],
            series=r.new_series[:],
            counters=[(sid, int(e[0]), e[1]) for sid, e in self._counters.items()],
            gauges=[
                (sid, int(e[0]), int(e[1]), e[2], int(e[3]), e[4])
                for sid, e in self._gauges.items()
            ],
            histograms=[
                (sid, int(e[0]), e[1], e[2], self._buckets[sid])
                for sid, e in self._histograms.items()
            ],
            summaries=[
                (sid, int(e[0]), e[1], e[2], window, list(self._sketches[sid, window].items()))
                for (sid, window), e in self._summaries.items()
            ],
            sets=[
                (sid, self._set_lines[sid, index], index, sorted(members))
                for (sid, index), members in self._sets.items()
            ],
            counts=self.counts,
        )
        r.new_profiles.clear()
        r.new_series.clear()
        self._clear()
        return delta

    def _clear(self) -> None:
        self.counts = {}
        for table in (self._counters, self._gauges, self._histograms, self._buckets):
            table.clear()
        for by_window in (self._summaries, self._sketches, self._sets, self._set_lines):
            by_window.clear()

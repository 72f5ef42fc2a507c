"""One flush interval's aggregate (:class:`Bucket`), its limits, and how buckets merge."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from math import isfinite

from ...codecs.statsd import Event, Line, Metric, ServiceCheck
from .keys import MISSING, Key, SeriesKeys

SUMMARY_KINDS = {"h": "histograms", "ms": "timers", "d": "distributions"}


@dataclass(frozen=True)
class Limits:
    """How much one aggregate (an interval's, or the totals) may hold; 0 means no limit.

    Attributes:
        max_series: distinct series (a counter, gauge, set, histogram, timer or
            distribution of one name and tag set).
        max_set_members: distinct members of one set.
        max_members: set members of all sets together.
        series_ttl: seconds after which a series not updated is dropped from the totals.
        max_tags: distinct tags of one line (they are part of its series' key).
    """

    max_series: int = 0
    max_set_members: int = 0
    max_members: int = 0
    series_ttl: float = 0.0
    max_tags: int = 0


NO_LIMITS = Limits()


def to_ns(at: int | float) -> int:
    """A receive time in epoch nanoseconds (a float: epoch seconds, from an older ugram)."""
    return at if isinstance(at, int) else round(at * 1e9)


class Bucket:
    """What one process (or, merged, every process) received in one flush interval.

    Counters add ``value / sample_rate``; a gauge keeps the value received last (by the
    receiver's clock in exact nanoseconds, comparable across workers: two lines read in one
    batch differ by 1 ns, which a float of epoch seconds cannot tell apart), and the
    ``+N``/``-N`` changes received after it (or, with none, to add to the value the gauge
    had before the interval: :meth:`gauge_value`); a set keeps its
    distinct members; histogram,
    timer and distribution samples are kept with the weight ``1 / sample_rate``.

    Within ``limits``: a line of a new series past ``max_series``, with more than
    ``max_tags`` distinct tags, or whose value would make a sum overflow (infinite), is
    refused (``refused_lines``); so is, in :meth:`merge`,
    another process's series (``refused_series``); set members past ``max_set_members`` or
    ``max_members`` are refused (``refused_members``). ``skipped_partials`` counts the
    partial files of the interval that were not merged (see the aggregator).
    """

    def __init__(
        self, start: float, limits: Limits = NO_LIMITS, keys: SeriesKeys | None = None
    ) -> None:
        """``keys``: the series keys to share with other buckets of the same limits (an
        aggregator's intervals); a bucket of its own makes its own."""
        self.start = start
        self.limits = limits
        self.keys = keys if keys is not None else SeriesKeys(limits.max_tags, limits.max_series)
        self._cached_key = self.keys.cached  # the per-line lookup, bound once
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, tuple[int, float]] = {}  # (received_ns, value)
        # +N/-N gauge lines not superseded by a later absolute value here: (received_ns, N)
        self.deltas: dict[Key, list[tuple[int, float]]] = {}
        self.sets: dict[Key, set[str]] = {}
        self.samples: dict[tuple[str, Key], tuple[list[float], list[float]]] = {}
        self.events: list[tuple[int, Event]] = []  # (received_ns, event)
        self.checks: list[tuple[int, ServiceCheck]] = []
        self.lines = 0
        self.invalid_lines = 0
        self.series = 0  # entries of counters, gauges, sets and samples together
        self.members = 0  # members of all sets together
        self.refused_lines = 0
        self.refused_series = 0
        self.refused_members = 0
        self.skipped_partials = 0

    def add(self, line: Line, received_ns: int) -> None:
        """Aggregate one parsed line received at ``received_ns`` (epoch nanoseconds)."""
        self.add_packets(((line,),), (received_ns,), 0, 1)

    def add_packets(
        self,
        packets: Sequence[Sequence[Line]],
        received_ns: Sequence[int],
        start: int,
        stop: int,
    ) -> None:
        """Aggregate the lines of ``packets[start:stop]``, each datagram's received at its
        ``received_ns`` (one loop for a worker's batch: no call a line but its type's)."""
        cached, build, by_kind = self._cached_key, self.keys.key, _BY_KIND
        lines = refused = 0
        for packet, ns in zip(packets[start:stop], received_ns[start:stop], strict=True):
            lines += len(packet)
            for line in packet:
                if isinstance(line, Metric):
                    key = cached((line.name, line.tags), MISSING)
                    if key is MISSING:
                        key = build(line.name, line.tags)
                    # None: more than max_tags distinct tags
                    if key is None or not by_kind[line.type](self, key, line, ns):
                        refused += 1
                elif isinstance(line, Event):
                    self.events.append((ns, line))
                else:
                    self.checks.append((ns, line))
        self.lines += lines
        self.refused_lines += refused

    def add_metric(self, m: Metric, received_ns: int) -> bool:
        """Aggregate one metric line; False when it is refused (see the limits)."""
        key = self.keys.key(m.name, m.tags)
        # a key of thousands of one-byte tags would cost ~50 bytes each: refused
        return key is not None and _BY_KIND[m.type](self, key, m, received_ns)

    def _add_counter(self, key: Key, m: Metric, received_ns: int) -> bool:
        old = self.counters.get(key)
        new = (old or 0.0) + sum(m.values) / m.sample_rate
        if not isfinite(new) or (old is None and not self._admit(False)):
            return False
        self.counters[key] = new
        return True

    def _add_gauge(self, key: Key, m: Metric, received_ns: int) -> bool:
        current = self.gauges.get(key)
        if current is None and key not in self.deltas and not self._admit(False):
            return False
        if current is not None and received_ns < current[0]:  # a later value is there
            return True
        if m.relative:  # a change, applied to the value before it (statsd's +N/-N)
            self.deltas.setdefault(key, []).append((received_ns, math.fsum(m.values)))
            return True
        self.gauges[key] = (received_ns, m.values[-1])
        deltas = self.deltas.get(key)
        if deltas:  # what came before this value no longer counts
            kept = [d for d in deltas if d[0] > received_ns]
            if kept:
                self.deltas[key] = kept
            else:
                del self.deltas[key]
        return True

    def _add_set(self, key: Key, m: Metric, received_ns: int) -> bool:
        members = self.sets.get(key)
        if members is None:
            if not self._admit(False):
                return False
            members = self.sets[key] = set()
        self.add_members(members, m.members)
        return True

    def _add_samples(self, key: Key, m: Metric, received_ns: int) -> bool:
        """Keep a histogram, timer or distribution line's values with their weight."""
        values, weight = m.values, 1.0 / m.sample_rate
        largest = values[0] if len(values) == 1 else max(values, key=abs, default=0.0)
        if values and not isfinite(weight * largest):
            return False
        entry = self.samples.get((m.type, key))
        if entry is None:
            if not self._admit(False):
                return False
            entry = self.samples[m.type, key] = ([], [])
        if len(values) == 1:  # the usual line: no list built for it
            entry[0].append(values[0])
            entry[1].append(weight)
        else:
            entry[0].extend(values)
            entry[1].extend([weight] * len(values))
        return True

    def _admit(self, present: bool) -> bool:
        """Whether a series may be held: it is already, or there is room for one more."""
        if present:
            return True
        if self.limits.max_series and self.series >= self.limits.max_series:
            return False
        self.series += 1
        return True

    def add_members(self, target: set[str], new: Collection[str]) -> None:
        """Add ``new`` members to the set ``target``, within the member limits."""
        per_set, overall = self.limits.max_set_members, self.limits.max_members
        room = len(new)  # a line's members (few): when all fit, no member-by-member checks
        if (not per_set or len(target) + room <= per_set) and (
            not overall or self.members + room <= overall
        ):
            before = len(target)
            target.update(new)
            self.members += len(target) - before
            return
        for member in new:
            if member in target:
                continue
            if (per_set and len(target) >= per_set) or (overall and self.members >= overall):
                self.refused_members += 1
                continue
            target.add(member)
            self.members += 1

    def set_gauge(self, key: Key, at: int, value: float) -> None:
        """Keep ``value`` unless a later one is already there."""
        current = self.gauges.get(key)
        if current is None or at >= current[0]:
            self.gauges[key] = (at, value)

    def gauge_value(self, key: Key, before: float, before_at: int = -1) -> tuple[int, float]:
        """A gauge's (time, value) after this bucket, given its value ``before`` (received
        at ``before_at``): its last absolute value here, unless ``before`` is later (a late
        interval), with the changes received after that absolute value added."""
        absolute = self.gauges.get(key)
        at, value = before_at, before
        if absolute is not None and absolute[0] >= before_at:
            at, value = absolute
        since = absolute[0] if absolute is not None else -1
        for t, delta in self.deltas.get(key, ()):
            if t >= since:
                at, value = max(at, t), value + delta
        return at, value

    def merge(self, other: Bucket) -> None:
        """Add another process's aggregate of the same interval (within this one's limits)."""
        for key, value in other.counters.items():
            old = self.counters.get(key)
            new = (old or 0.0) + value
            if math.isfinite(new) and self._admit(old is not None):
                self.counters[key] = new
            else:
                self.refused_series += 1
        for key, (at, gauge) in other.gauges.items():
            if self._admit(key in self.gauges or key in self.deltas):
                self.set_gauge(key, at, gauge)
            else:
                self.refused_series += 1
        for key, changes in other.deltas.items():
            if key in self.deltas or key in self.gauges or self._admit(False):
                self.deltas.setdefault(key, []).extend(changes)
            elif key not in other.gauges:  # refused once, with its absolute value if any
                self.refused_series += 1
        for key, changes in self.deltas.items():
            current = self.gauges.get(key)
            if current is not None:  # only what came after the latest value counts
                changes[:] = [d for d in changes if d[0] >= current[0]]
        for key, members in other.sets.items():
            mine = self.sets.get(key)
            if mine is None:
                if not self._admit(False):
                    self.refused_series += 1
                    continue
                mine = self.sets[key] = set()
            self.add_members(mine, members)
        for skey, (values, weights) in other.samples.items():
            entry = self.samples.get(skey)
            if entry is None:
                if not self._admit(False):
                    self.refused_series += 1
                    continue
                entry = self.samples[skey] = ([], [])
            entry[0].extend(values)
            entry[1].extend(weights)
        self.events += other.events
        self.checks += other.checks
        self.lines += other.lines
        self.invalid_lines += other.invalid_lines
        self.refused_lines += other.refused_lines
        self.refused_series += other.refused_series
        self.refused_members += other.refused_members
        self.skipped_partials += other.skipped_partials

    def __bool__(self) -> bool:
        return bool(self.lines or self.invalid_lines)


# One method a metric type, each False when it refuses the line (plain functions: bound
# methods in the bucket would make each bucket a reference cycle, freed only by the GC).
_BY_KIND: dict[str, Callable[[Bucket, Key, Metric, int], bool]] = {
    "c": Bucket._add_counter,
    "g": Bucket._add_gauge,
    "s": Bucket._add_set,
    "h": Bucket._add_samples,
    "ms": Bucket._add_samples,
    "d": Bucket._add_samples,
}

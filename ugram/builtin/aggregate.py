"""DogStatsD aggregation: one flush interval's :class:`Bucket`, how buckets of several
workers merge, and the records written for an interval and for the running totals."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from math import isfinite
from typing import TypeVar

import msgspec

from ..codecs.statsd import Event, Line, Metric, ServiceCheck

Key = tuple[str, tuple[str, ...]]  # metric name, sorted distinct tags
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
_V = TypeVar("_V")


class Bucket:
    """What one process (or, merged, every process) received in one flush interval.

    Counters add ``value / sample_rate``; a gauge keeps the value received last (by the
    receiver's clock in exact nanoseconds, comparable across workers: two lines read in one
    batch differ by 1 ns, which a float of epoch seconds cannot tell apart); a set keeps its
    distinct members; histogram,
    timer and distribution samples are kept with the weight ``1 / sample_rate``.

    Within ``limits``: a line of a new series past ``max_series``, with more than
    ``max_tags`` distinct tags, or whose value would make a sum overflow (infinite), is
    refused (``refused_lines``); so is, in :meth:`merge`,
    another process's series (``refused_series``); set members past ``max_set_members`` or
    ``max_members`` are refused (``refused_members``). ``skipped_partials`` counts the
    partial files of the interval that were not merged (see the aggregator).
    """

    def __init__(self, start: float, limits: Limits = NO_LIMITS) -> None:
        self.start = start
        self.limits = limits
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, tuple[int, float]] = {}  # (received_ns, value)
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
        self.lines += 1
        if isinstance(line, Metric):
            if not self.add_metric(line, received_ns):
                self.refused_lines += 1
        elif isinstance(line, Event):
            self.events.append((received_ns, line))
        else:
            self.checks.append((received_ns, line))

    def add_metric(self, m: Metric, received_ns: int) -> bool:
        """Aggregate one metric line; False when it is refused (see the limits)."""
        tags = set(m.tags)
        if self.limits.max_tags and len(tags) > self.limits.max_tags:
            return False  # a key of thousands of one-byte tags would cost ~50 bytes each
        key = (m.name, tuple(sorted(tags)))
        if m.type == "c":
            old = self.counters.get(key)
            new = (old or 0.0) + sum(m.values) / m.sample_rate
            if not isfinite(new) or (old is None and not self._admit(False)):
                return False
            self.counters[key] = new
        elif m.type == "g":
            if key not in self.gauges and not self._admit(False):
                return False
            self.set_gauge(key, received_ns, m.values[-1])
        elif m.type == "s":
            members = self.sets.get(key)
            if members is None:
                if not self._admit(False):
                    return False
                members = self.sets[key] = set()
            self.add_members(members, m.members)
        else:
            weight = 1.0 / m.sample_rate
            if m.values and not isfinite(weight * max(m.values, key=abs)):
                return False
            entry = self.samples.get((m.type, key))
            if entry is None:
                if not self._admit(False):
                    return False
                entry = self.samples[m.type, key] = ([], [])
            entry[0].extend(m.values)
            entry[1].extend([weight] * len(m.values))
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
            if self._admit(key in self.gauges):
                self.set_gauge(key, at, gauge)
            else:
                self.refused_series += 1
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


class _Partial(msgspec.Struct, array_like=True):
    """A :class:`Bucket` as written to a partial file (msgpack). Receive times are integer
    nanoseconds; a float is epoch seconds, from a partial an older ugram left behind."""

    start: float
    counters: list[tuple[str, tuple[str, ...], float]]
    gauges: list[tuple[str, tuple[str, ...], int | float, float]]  # name, tags, received, value
    sets: list[tuple[str, tuple[str, ...], list[str]]]
    samples: list[tuple[str, str, tuple[str, ...], list[float], list[float]]]
    events: list[tuple[int | float, Event]]
    checks: list[tuple[int | float, ServiceCheck]]
    lines: int
    invalid_lines: int
    refused_lines: int = 0  # absent from the partials of an older ugram
    refused_series: int = 0
    refused_members: int = 0


def dump_bucket(b: Bucket) -> bytes:
    """Serialize a bucket for another process to merge."""
    return msgspec.msgpack.encode(
        _Partial(
            b.start,
            [(n, t, v) for (n, t), v in b.counters.items()],
            [(n, t, at, v) for (n, t), (at, v) in b.gauges.items()],
            [(n, t, sorted(m)) for (n, t), m in b.sets.items()],
            [(k, n, t, vs, ws) for (k, (n, t)), (vs, ws) in b.samples.items()],
            list(b.events),
            list(b.checks),
            b.lines,
            b.invalid_lines,
            b.refused_lines,
            b.refused_series,
            b.refused_members,
        )
    )


def _ns(at: int | float) -> int:
    """A receive time in epoch nanoseconds (a float: epoch seconds, from an older ugram)."""
    return at if isinstance(at, int) else round(at * 1e9)


def load_bucket(data: bytes) -> Bucket:
    """The inverse of :func:`dump_bucket`.

    Raises:
        msgspec.DecodeError: not a bucket (or samples without values).
    """
    p = msgspec.msgpack.decode(data, type=_Partial)
    if any(not vs or len(vs) != len(ws) for _, _, _, vs, ws in p.samples):
        raise msgspec.DecodeError("samples without values, or values and weights that differ")
    b = Bucket(p.start)
    b.counters = {(n, t): v for n, t, v in p.counters}
    b.gauges = {(n, t): (_ns(at), v) for n, t, at, v in p.gauges}
    b.sets = {(n, t): set(m) for n, t, m in p.sets}
    b.samples = {(k, (n, t)): (vs, ws) for k, n, t, vs, ws in p.samples}
    b.events = [(_ns(at), event) for at, event in p.events]
    b.checks = [(_ns(at), check) for at, check in p.checks]
    b.lines, b.invalid_lines = p.lines, p.invalid_lines
    b.refused_lines, b.refused_series = p.refused_lines, p.refused_series
    b.refused_members = p.refused_members
    b.series = len(b.counters) + len(b.gauges) + len(b.sets) + len(b.samples)
    b.members = sum(map(len, b.sets.values()))
    return b


# -- the statsd aggregator: what it writes ----------------------------------------------------


class CounterOut(msgspec.Struct):
    """A counter: the sum of ``value / sample_rate``, and that per second of the interval."""

    name: str
    tags: list[str]
    value: float
    rate: float


class ValueOut(msgspec.Struct):
    """A gauge (its last value) or a set (its number of distinct members)."""

    name: str
    tags: list[str]
    value: float


class SummaryOut(msgspec.Struct):
    """A histogram, timer or distribution. ``count`` and ``sum`` weigh each sample by
    ``1 / sample_rate``, ``avg = sum / count``; ``median`` and ``p95`` are over the samples
    received, interpolated linearly between the closest ranks (numpy's default)."""

    name: str
    tags: list[str]
    count: float
    sum: float
    min: float
    max: float
    avg: float
    median: float
    p95: float


class IntervalOut(msgspec.Struct):
    """One line of ``statsd.jsonl``: the aggregate of one flush interval, every worker merged.

    ``start``/``end`` are epoch seconds. ``lines`` counts the lines received that parsed,
    ``invalid_lines`` those that did not. ``refused_lines`` counts the lines left out of the
    aggregate: a new series past ``max_series``, more than ``max_tags`` distinct tags, or a
    value that would make a sum overflow;
    ``refused_series`` the series of a worker's aggregate left out when merging (the same
    reasons); ``refused_members`` the set members past ``max_set_members`` /
    ``max_members``; ``skipped_partials`` the workers' partial files not merged (not a
    regular file of the server's user with one link, or unreadable). A record for an
    interval already written can follow when a worker was late (behind, or stopping while
    others ran): add them up.
    """

    start: float
    end: float
    counters: list[CounterOut]
    gauges: list[ValueOut]
    sets: list[ValueOut]
    histograms: list[SummaryOut]
    timers: list[SummaryOut]
    distributions: list[SummaryOut]
    events: list[Event]
    service_checks: list[ServiceCheck]
    lines: int
    invalid_lines: int
    refused_lines: int = 0
    refused_series: int = 0
    refused_members: int = 0
    skipped_partials: int = 0


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linearly interpolated between closest ranks."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(key: Key, values: list[float], weights: list[float]) -> SummaryOut:
    count = sum(weights)
    total = sum(v * w for v, w in zip(values, weights, strict=True))
    ordered = sorted(values)
    return SummaryOut(
        key[0],
        list(key[1]),
        count,
        total,
        ordered[0],
        ordered[-1],
        total / count,
        quantile(ordered, 0.5),
        quantile(ordered, 0.95),
    )


def render_interval(b: Bucket, interval: float) -> IntervalOut:
    """The output record of a merged bucket."""
    summaries: dict[str, list[SummaryOut]] = {name: [] for name in SUMMARY_KINDS.values()}
    for (kind, key), (values, weights) in sorted(b.samples.items()):
        summaries[SUMMARY_KINDS[kind]].append(_summary(key, values, weights))
    return IntervalOut(
        start=b.start,
        end=b.start + interval,
        counters=[
            CounterOut(n, list(t), v, v / interval) for (n, t), v in sorted(b.counters.items())
        ],
        gauges=[ValueOut(n, list(t), v) for (n, t), (_, v) in sorted(b.gauges.items())],
        sets=[ValueOut(n, list(t), len(m)) for (n, t), m in sorted(b.sets.items())],
        events=[event for _, event in sorted(b.events, key=lambda pair: pair[0])],
        service_checks=[check for _, check in sorted(b.checks, key=lambda pair: pair[0])],
        lines=b.lines,
        invalid_lines=b.invalid_lines,
        refused_lines=b.refused_lines,
        refused_series=b.refused_series,
        refused_members=b.refused_members,
        skipped_partials=b.skipped_partials,
        histograms=summaries["histograms"],
        timers=summaries["timers"],
        distributions=summaries["distributions"],
    )


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

    Counters are summed over intervals, gauges hold their last value, sets their distinct
    members; ``flushes`` counts the interval records written. Within the limits: a series
    not updated for ``series_ttl`` is dropped (``pruned_series``); a new series when the
    totals hold ``max_series``, or an addition that would overflow, is refused (counted in
    ``refused_series`` with those refused in the intervals); so are set members past the
    member limits (``refused_members``). ``refused_lines`` and ``skipped_partials`` add up
    the intervals' counts.
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
            (g.name, tuple(g.tags)): (g.at_ns or _ns(g.at), g.value) for g in totals.gauges
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
        for key, (at, value) in b.gauges.items():
            current = self.gauges.get(key)
            if self._admit(current is not None) and (current is None or at >= current[0]):
                self.gauges[key] = (at, value)
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

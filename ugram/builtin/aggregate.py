"""DogStatsD aggregation: one flush interval's :class:`Bucket`, how buckets of several
workers merge, and the records written for an interval and for the running totals."""

from __future__ import annotations

import msgspec

from ..codecs.statsd import Event, Line, Metric, ServiceCheck

Key = tuple[str, tuple[str, ...]]  # metric name, sorted distinct tags
SUMMARY_KINDS = {"h": "histograms", "ms": "timers", "d": "distributions"}


class Bucket:
    """What one process (or, merged, every process) received in one flush interval.

    Counters add ``value / sample_rate``; a gauge keeps the value received last (by the
    receiver's clock in exact nanoseconds, comparable across workers: two lines read in one
    batch differ by 1 ns, which a float of epoch seconds cannot tell apart); a set keeps its
    distinct members; histogram,
    timer and distribution samples are kept with the weight ``1 / sample_rate``.
    """

    def __init__(self, start: float) -> None:
        self.start = start
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, tuple[int, float]] = {}  # (received_ns, value)
        self.sets: dict[Key, set[str]] = {}
        self.samples: dict[tuple[str, Key], tuple[list[float], list[float]]] = {}
        self.events: list[tuple[int, Event]] = []  # (received_ns, event)
        self.checks: list[tuple[int, ServiceCheck]] = []
        self.lines = 0
        self.invalid_lines = 0

    def add(self, line: Line, received_ns: int) -> None:
        """Aggregate one parsed line received at ``received_ns`` (epoch nanoseconds)."""
        self.lines += 1
        if isinstance(line, Metric):
            self.add_metric(line, received_ns)
        elif isinstance(line, Event):
            self.events.append((received_ns, line))
        else:
            self.checks.append((received_ns, line))

    def add_metric(self, m: Metric, received_ns: int) -> None:
        """Aggregate one metric line."""
        key = (m.name, tuple(sorted(set(m.tags))))
        if m.type == "c":
            self.counters[key] = self.counters.get(key, 0.0) + sum(m.values) / m.sample_rate
        elif m.type == "g":
            self.set_gauge(key, received_ns, m.values[-1])
        elif m.type == "s":
            self.sets.setdefault(key, set()).update(m.members)
        else:
            values, weights = self.samples.setdefault((m.type, key), ([], []))
            values.extend(m.values)
            weights.extend([1.0 / m.sample_rate] * len(m.values))

    def set_gauge(self, key: Key, at: int, value: float) -> None:
        """Keep ``value`` unless a later one is already there."""
        current = self.gauges.get(key)
        if current is None or at >= current[0]:
            self.gauges[key] = (at, value)

    def merge(self, other: Bucket) -> None:
        """Add another process's aggregate of the same interval."""
        for key, value in other.counters.items():
            self.counters[key] = self.counters.get(key, 0.0) + value
        for key, (at, gauge) in other.gauges.items():
            self.set_gauge(key, at, gauge)
        for key, members in other.sets.items():
            self.sets.setdefault(key, set()).update(members)
        for skey, (values, weights) in other.samples.items():
            mine = self.samples.setdefault(skey, ([], []))
            mine[0].extend(values)
            mine[1].extend(weights)
        self.events += other.events
        self.checks += other.checks
        self.lines += other.lines
        self.invalid_lines += other.invalid_lines

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
        )
    )


def _ns(at: int | float) -> int:
    """A receive time in epoch nanoseconds (a float: epoch seconds, from an older ugram)."""
    return at if isinstance(at, int) else round(at * 1e9)


def load_bucket(data: bytes) -> Bucket:
    """The inverse of :func:`dump_bucket`.

    Raises:
        msgspec.DecodeError: not a bucket.
    """
    p = msgspec.msgpack.decode(data, type=_Partial)
    b = Bucket(p.start)
    b.counters = {(n, t): v for n, t, v in p.counters}
    b.gauges = {(n, t): (_ns(at), v) for n, t, at, v in p.gauges}
    b.sets = {(n, t): set(m) for n, t, m in p.sets}
    b.samples = {(k, (n, t)): (vs, ws) for k, n, t, vs, ws in p.samples}
    b.events = [(_ns(at), event) for at, event in p.events]
    b.checks = [(_ns(at), check) for at, check in p.checks]
    b.lines, b.invalid_lines = p.lines, p.invalid_lines
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

    ``start``/``end`` are epoch seconds. ``lines`` counts the lines aggregated,
    ``invalid_lines`` those that did not parse. A record for an interval already written can
    follow when a worker was late (behind, or stopping while others ran): add them up.
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
        histograms=summaries["histograms"],
        timers=summaries["timers"],
        distributions=summaries["distributions"],
    )


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


class Totals(msgspec.Struct, kw_only=True):
    """``totals.json``: everything aggregated since the directory was created.

    Counters are summed over intervals, gauges hold their last value, sets their distinct
    members; ``flushes`` counts the interval records written.
    """

    since: float | None = None
    until: float | None = None
    flushes: int = 0
    counters: list[ValueOut] = []
    gauges: list[GaugeTotal] = []
    sets: list[SetTotal] = []
    histograms: list[SummaryTotal] = []
    timers: list[SummaryTotal] = []
    distributions: list[SummaryTotal] = []
    events: int = 0
    service_checks: int = 0
    lines: int = 0
    invalid_lines: int = 0


def add_to_totals(totals: Totals, b: Bucket, interval: float) -> Totals:
    """Fold one merged interval into the running totals; returns the new totals."""
    counters = {(c.name, tuple(c.tags)): c.value for c in totals.counters}
    for key, value in b.counters.items():
        counters[key] = counters.get(key, 0.0) + value
    gauges = {(g.name, tuple(g.tags)): (g.at_ns or _ns(g.at), g.value) for g in totals.gauges}
    for key, (at, value) in b.gauges.items():
        if key not in gauges or at >= gauges[key][0]:
            gauges[key] = (at, value)
    sets = {(s.name, tuple(s.tags)): set(s.members) for s in totals.sets}
    for key, members in b.sets.items():
        sets.setdefault(key, set()).update(members)
    return Totals(
        since=b.start if totals.since is None else min(totals.since, b.start),
        until=max(totals.until or 0.0, b.start + interval),
        flushes=totals.flushes + 1,
        counters=[ValueOut(n, list(t), v) for (n, t), v in sorted(counters.items())],
        gauges=[
            GaugeTotal(n, list(t), v, at / 1e9, at) for (n, t), (at, v) in sorted(gauges.items())
        ],
        sets=[SetTotal(n, list(t), len(m), sorted(m)) for (n, t), m in sorted(sets.items())],
        events=totals.events + len(b.events),
        service_checks=totals.service_checks + len(b.checks),
        lines=totals.lines + b.lines,
        invalid_lines=totals.invalid_lines + b.invalid_lines,
        histograms=_summary_totals(totals, b, "h"),
        timers=_summary_totals(totals, b, "ms"),
        distributions=_summary_totals(totals, b, "d"),
    )


def _summary_totals(totals: Totals, b: Bucket, kind: str) -> list[SummaryTotal]:
    name = SUMMARY_KINDS[kind]
    merged = {(s.name, tuple(s.tags)): s for s in getattr(totals, name)}
    for (k, key), (values, weights) in b.samples.items():
        if k != kind:
            continue
        count = sum(weights)
        total = sum(v * w for v, w in zip(values, weights, strict=True))
        low, high = min(values), max(values)
        old = merged.get(key)
        if old is not None:
            count, total = count + old.count, total + old.sum
            low, high = min(low, old.min), max(high, old.max)
        merged[key] = SummaryTotal(key[0], list(key[1]), count, total, low, high, total / count)
    return [merged[key] for key in sorted(merged)]

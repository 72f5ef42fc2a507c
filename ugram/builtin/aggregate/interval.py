"""The record of one flush interval, every worker merged: a line of ``statsd.jsonl``."""

from __future__ import annotations

import msgspec

from ...codecs.statsd import Event, ServiceCheck
from .bucket import SUMMARY_KINDS, Bucket
from .keys import Key


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


def render_interval(
    b: Bucket, interval: float, gauges: dict[Key, float] | None = None
) -> IntervalOut:
    """The output record of a merged bucket; ``gauges``: each gauge's value at the end of
    the interval (the totals', which a ``+N``/``-N`` change adds to), else the bucket's."""
    known = gauges or {}
    summaries: dict[str, list[SummaryOut]] = {name: [] for name in SUMMARY_KINDS.values()}
    for (kind, key), (values, weights) in sorted(b.samples.items()):
        summaries[SUMMARY_KINDS[kind]].append(_summary(key, values, weights))
    return IntervalOut(
        start=b.start,
        end=b.start + interval,
        counters=[
            CounterOut(n, list(t), v, v / interval) for (n, t), v in sorted(b.counters.items())
        ],
        gauges=[
            ValueOut(n, list(t), known.get((n, t), b.gauge_value((n, t), 0.0)[1]))
            for n, t in sorted(b.gauges.keys() | b.deltas.keys())
        ],
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

"""The merged series as prometheus-client metric families, for the supervisor's ``/metrics``.

Samples are built one by one (:class:`prometheus_client.samples.Sample`), each with its own
labels, so a family whose series have different label names is rendered as it is. The
``ugram_statsd_*`` families say what was aggregated and what was refused, by reason.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString as _go_float

from .series import CounterSeries, GaugeSeries, HistogramSeries, SetSeries, SummarySeries
from .state import SUPERVISOR_REASONS, WORKER_REASONS, Exposition, Family
from .wire import KINDS

_TYPES = {"counter": "counter", "gauge": "gauge", "set": "gauge", "histogram": "histogram"}
_TYPES["summary"] = "summary"


def families(state: Exposition, now_ns: int) -> list[Metric]:
    """Every exposed family, then ugram's own ``ugram_statsd_*`` ones (under the lock: a
    consistent view, between two batches)."""
    with state.lock:
        out = [_family(family, now_ns) for family in state.families.values()]
        out.extend(_own(state))
    return out


def _family(family: Family, now_ns: int) -> Metric:
    profile = family.profile
    metric = Metric(family.name, profile.help, _TYPES[profile.kind])
    add = metric.samples.append
    name = family.name
    if profile.kind == "counter":
        for s in family.series.values():
            assert isinstance(s, CounterSeries)
            add(Sample(name + "_total", dict(s.labels), s.value))
    elif profile.kind == "gauge":
        for s in family.series.values():
            assert isinstance(s, GaugeSeries)
            add(Sample(name, dict(s.labels), s.value))
    elif profile.kind == "set":
        index = now_ns // max(1, round(profile.interval * 1e9)) - 1  # the last whole interval
        for s in family.series.values():
            assert isinstance(s, SetSeries)
            add(Sample(name, dict(s.labels), float(s.count_in(index))))
    elif profile.kind == "histogram":
        bounds = [_text(b) for b in profile.buckets] + ["+Inf"]
        for s in family.series.values():
            assert isinstance(s, HistogramSeries)
            labels = dict(s.labels)
            for le, count in zip(bounds, s.cumulative(), strict=True):
                add(Sample(name + "_bucket", {**labels, "le": le}, count))
            add(Sample(name + "_count", labels, s.count))
            add(Sample(name + "_sum", labels, s.sum))
    else:
        _summary(metric, family, now_ns)
    return metric


def _summary(metric: Metric, family: Family, now_ns: int) -> None:
    profile, name, add = family.profile, family.name, metric.samples.append
    qs = [q for q, _ in profile.quantiles]
    window_ns = max(1, round(profile.max_age / max(1, profile.age_buckets) * 1e9))
    for s in family.series.values():
        assert isinstance(s, SummarySeries)
        labels = dict(s.labels)
        values = s.quantiles(qs, now_ns // window_ns, profile.age_buckets)
        for q, value in zip(qs, values, strict=True):
            add(Sample(name, {**labels, "quantile": _text(q)}, value))
        add(Sample(name + "_count", labels, s.count))
        add(Sample(name + "_sum", labels, s.sum))


def _own(state: Exposition) -> Iterator[Metric]:
    counts = state.counts
    lines = CounterMetricFamily(
        "ugram_statsd_lines",
        "Metric lines aggregated into the exposed series, by Prometheus type (set: a gauge).",
        labels=["type"],
    )
    for kind in KINDS:
        lines.add_metric([kind], counts.get("lines:" + kind, 0))
    yield lines
    refused = CounterMetricFamily(
        "ugram_statsd_refused_lines",
        "Metric lines left out of the exposition, by reason (see docs/handlers.md).",
        labels=["reason"],
    )
    for reason in WORKER_REASONS + SUPERVISOR_REASONS:
        refused.add_metric([reason], state.refused_lines[reason])
    yield refused
    series = CounterMetricFamily(
        "ugram_statsd_refused_series",
        "New series refused (each counted once per worker that asked), by reason.",
        labels=["reason"],
    )
    for reason in SUPERVISOR_REASONS:
        series.add_metric([reason], state.refused_series[reason])
    yield series
    yield from _simple(state)


def _simple(state: Exposition) -> Iterator[Metric]:
    counts = state.counts
    simple = (
        ("refused_members", "Set members past max_set_members.", state.refused_members),
        (
            "dropped_lines",
            "Metric lines a mapping's action: drop dropped.",
            counts.get("dropped", 0),
        ),
        (
            "dropped_tags",
            "Tags dropped: without a value (and no bare_tag_label), or with an empty key or value.",
            counts.get("dropped_tags", 0),
        ),
        ("events", "DogStatsD events received (not exposed).", counts.get("events", 0)),
        (
            "service_checks",
            "DogStatsD service checks received (not exposed).",
            counts.get("service_checks", 0),
        ),
        ("invalid_lines", "Lines that did not parse.", counts.get("invalid_lines", 0)),
        ("expired_series", "Series dropped after their ttl.", counts.get("expired", 0)),
        (
            "skipped_records",
            "Replayed records a replacement worker skipped: a dead worker had counted them.",
            counts.get("skipped_records", 0),
        ),
        ("corrupt_records", "Export-ring records that could not be read.", state.corrupt),
    )
    for name, text, value in simple:
        yield CounterMetricFamily("ugram_statsd_" + name, text, value=value)
    yield GaugeMetricFamily("ugram_statsd_series", "Series exposed.", value=state.series)
    mixed = sum(1 for family in state.families.values() if family.label_sets > 1)
    yield GaugeMetricFamily(
        "ugram_statsd_mixed_label_families",
        "Families whose series have different sets of label names (each exposed as it is).",
        value=mixed,
    )


def _text(value: float) -> str:
    """A bound or quantile as Prometheus' Go clients write it (``0.5``, ``+Inf``)."""
    text: str = _go_float(value)  # type: ignore[no-untyped-call]
    return text

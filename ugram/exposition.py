"""Prometheus families for what handlers declared (:mod:`ugram.handler_stats`), and the
bucket layout every histogram of ``/metrics`` shares; :mod:`ugram.metrics` serves them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString as _untyped_go_float

from .handler_stats import Reading


def handler_families(readings: Sequence[Reading], reserved: frozenset[str]) -> Iterator[Metric]:
    """One family per declared name (a label set is a sample of it); a name in ``reserved``
    (one of ugram's own) is left out."""
    families: dict[str, Metric] = {}
    for r in readings:
        name = r.name.removesuffix("_total") if r.kind == "counter" else r.name
        if name in reserved:
            continue
        labels = sorted(r.labels)
        family = families.get(name)
        if family is None:
            family = families[name] = _family(name, r.kind, r.help, labels)
        values = [r.labels[label] for label in labels]
        if r.kind == "histogram":
            assert isinstance(family, HistogramMetricFamily)
            family.add_metric(values, buckets(r.bounds, r.counts), sum_value=r.sum)
        else:
            assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
            family.add_metric(values, r.value)
    yield from families.values()


def _family(name: str, kind: str, text: str, labels: list[str]) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, text, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, text, labels=labels)
    if kind == "alarm":
        text = f"Seconds this has held (0: it does not): {text}."
    return GaugeMetricFamily(name, text, labels=labels)


def buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from per-bucket counts (the last above every bound)."""
    cumulative, out = 0, []
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        text: str = _untyped_go_float(bound)  # type: ignore[no-untyped-call]
        out.append((text, float(cumulative)))
    out.append(("+Inf", float(sum(counts))))
    return out

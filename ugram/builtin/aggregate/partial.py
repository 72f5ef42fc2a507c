"""A :class:`~.bucket.Bucket` as a worker writes it to its partial file, and read back."""

from __future__ import annotations

import msgspec

from ...codecs.statsd import Event, ServiceCheck
from .bucket import Bucket, to_ns


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
    gauge_deltas: list[tuple[str, tuple[str, ...], list[tuple[int, float]]]] = []


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
            [(n, t, changes) for (n, t), changes in b.deltas.items()],
        )
    )


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
    b.gauges = {(n, t): (to_ns(at), v) for n, t, at, v in p.gauges}
    b.sets = {(n, t): set(m) for n, t, m in p.sets}
    b.samples = {(k, (n, t)): (vs, ws) for k, n, t, vs, ws in p.samples}
    b.events = [(to_ns(at), event) for at, event in p.events]
    b.checks = [(to_ns(at), check) for at, check in p.checks]
    b.lines, b.invalid_lines = p.lines, p.invalid_lines
    b.refused_lines, b.refused_series = p.refused_lines, p.refused_series
    b.refused_members = p.refused_members
    b.deltas = {(n, t): [(at, d) for at, d in changes] for n, t, changes in p.gauge_deltas}
    b.series = len(b.counters) + len(b.gauges) + len(b.sets) + len(b.samples)
    b.series += len(b.deltas.keys() - b.gauges.keys())
    b.members = sum(map(len, b.sets.values()))
    return b

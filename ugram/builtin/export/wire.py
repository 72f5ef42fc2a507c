"""What a worker publishes into its slot's export ring, and the supervisor applies.

Each ring record is one :data:`PREFIX` (the batch's position in the worker's own ring, its
last receive time, the record's kind) and, for a delta, a chunk of one msgpack-encoded
:class:`Delta`: the contribution of one ``handle_batch`` call, by series. A delta larger
than a quarter of the ring is cut into several records (``PART`` ... ``PART``, ``FINAL``),
and the supervisor applies a delta only once its ``FINAL`` record arrived, all of it at
once. A ``HELLO`` record starts the worker's tables (series ids, profiles) afresh and
throws away the parts of a delta whose worker died before its ``FINAL``.

Why the position: the worker acknowledges a batch in its own ring only after its delta
is in the export ring. A worker killed in between leaves the batch to be replayed, and its
replacement finds the position of the last ``FINAL`` published (in the export ring, or in
the notes the supervisor keeps of the last one it applied) and skips the replayed records
up to it: a record counts once, whenever the worker dies.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

PREFIX = struct.Struct("<qqqI4x")  # ring resets, batch end, last receive ns, kind
HELLO, PART, FINAL = 0, 1, 2

Kind = Literal["counter", "gauge", "histogram", "summary", "set"]
KINDS: tuple[Kind, ...] = ("counter", "gauge", "histogram", "summary", "set")


class Profile(msgspec.Struct, frozen=True, array_like=True):
    """How the series of one mapping (or of no mapping) are exposed.

    Attributes:
        kind: the Prometheus type (``set``: a gauge of the distinct members per interval).
        help: the family's help text.
        buckets: a histogram's upper bounds, ascending (``+Inf`` implied).
        quantiles: a summary's ``(quantile, error)`` pairs (the error is statsd_exporter's
            and only documented: the sketch's error is relative, see :mod:`.sketch`).
        max_age: seconds of samples a summary's quantiles cover.
        age_buckets: how many windows of ``max_age / age_buckets`` those are kept in.
        ttl: seconds after which a series no line updated is dropped (0: never).
        interval: seconds per interval of a set.
    """

    kind: Kind
    help: str
    buckets: tuple[float, ...] = ()
    quantiles: tuple[tuple[float, float], ...] = ()
    max_age: float = 600.0
    age_buckets: int = 5
    ttl: float = 0.0
    interval: float = 10.0


class Limits(msgspec.Struct, frozen=True, array_like=True):
    """The caps a worker's options set; the supervisor applies the latest it was sent."""

    max_series: int = 0
    max_series_per_metric: int = 0
    max_set_members: int = 0


class Hello(msgspec.Struct, frozen=True, array_like=True):
    """A worker (re)starts its tables: what a ``HELLO`` record holds."""

    limits: Limits


class SeriesDef(msgspec.Struct, frozen=True, array_like=True):
    """A series id's meaning, sent with the first delta that uses it."""

    sid: int
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted by label name
    profile: int


class Delta(msgspec.Struct, array_like=True, kw_only=True):
    """One batch's contribution. Each entry starts ``(sid, lines)``: the series and the
    lines that went into it; ``counts`` holds what the worker counted itself (lines by
    statsd type, refusals by reason, events, service checks, invalid lines)."""

    profiles: list[tuple[int, Profile]] = []
    series: list[SeriesDef] = []
    counters: list[tuple[int, int, float]] = []  # sid, lines, sum
    # sid, lines, last absolute value's receive ns (0: none), that value, the receive ns
    # of the last change after it (0: none), the changes' sum
    gauges: list[tuple[int, int, int, float, int, float]] = []
    # sid, lines, count, sum, count per bucket (the last above every bound)
    histograms: list[tuple[int, int, float, float, list[float]]] = []
    # sid, lines, count, sum, window index, (sketch key, weight) pairs
    summaries: list[tuple[int, int, float, float, int, list[tuple[int, float]]]] = []
    sets: list[tuple[int, int, int, list[str]]] = []  # sid, lines, interval index, members
    counts: dict[str, int] = {}


_ENCODER = msgspec.msgpack.Encoder()
_DELTA = msgspec.msgpack.Decoder(Delta)
_HELLO = msgspec.msgpack.Decoder(Hello)


def encode(message: Delta | Hello) -> bytes:
    """The msgpack bytes of a delta or a hello."""
    return _ENCODER.encode(message)


def decode_delta(data: bytes) -> Delta:
    """Read a delta back.

    Raises:
        msgspec.DecodeError: not a delta (a corrupt record).
    """
    return _DELTA.decode(data)


def decode_hello(data: bytes) -> Hello:
    """Read a hello back.

    Raises:
        msgspec.DecodeError: not a hello.
    """
    return _HELLO.decode(data)

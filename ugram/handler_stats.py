"""Counters a handler defines, in shared memory the supervisor reads: its own ``/metrics``.

The supervisor creates one table with a block per worker slot, as it does for
:mod:`ugram.stats`, and reads it without locks; a worker writes only its slot's block. A
handler (``ugram.forward`` is the first) declares its metrics in ``setup()`` through
:func:`registry`: counters, gauges, histograms, and alarms that turn ``/healthz`` unhealthy
when a condition has lasted too long. Declared names are exposed on ``/metrics`` summed over
the workers (gauges by their ``merge``), listed by ``ugram stats``, and included in
``ugram stats --json`` under ``handler_metrics``.

Layout of a block (:data:`BLOCK_BYTES`)::

    u64 slot 0       generation: odd while the schema below is being written, else even;
                     0: nothing declared
    u64 slot 1       length of the schema in bytes
    [64, 6144)       the schema: msgpack list of :class:`Spec`, each naming its value slots
    [6144, 8192)     the values: u64 slots (:data:`VALUE_SLOTS`)

Race safety. One writer per block (the worker of that slot), and within the worker one
writer thread per metric (a ``+=`` from two threads may lose an increment). Values are
aligned 8-byte stores through a ``memoryview.cast("Q")`` element, which readers never see
torn (see :mod:`ugram.stats`); a histogram or a set of counters read while being updated may
be one observation apart, as the rest of the stats may. The schema is guarded like a
seqlock: a reader that finds the generation odd, or changed while it copied the schema,
ignores the block this once.

Before the worker binds its block (:func:`bind`, after ``setup()`` and, for a SIGHUP
replacement, after it took over its slot) and in a process that is not a worker at all,
metrics count into private memory that no one reads. A worker that replaces a dead one and
declares the same metrics in the same order continues its predecessor's counts.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import re
from collections.abc import Sequence
from typing import Literal

import msgspec

from .shm import create_shared_fd

BLOCK_BYTES = 8192
SCHEMA_AT, SCHEMA_MAX = 64, 6144 - 64
VALUES_AT = 6144
VALUE_SLOTS = (BLOCK_BYTES - VALUES_AT) // 8
_GENERATION, _LENGTH = 0, 1
_BASE = VALUES_AT // 8  # the first value slot, as a u64 index
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Kind = Literal["counter", "gauge", "histogram", "alarm"]


class Spec(msgspec.Struct, frozen=True, array_like=True):
    """One declared metric (one label set of it).

    Attributes:
        name: as exposed (a counter's with its ``_total`` suffix).
        kind: ``counter``, ``gauge``, ``histogram`` or ``alarm``.
        help: one line for ``/metrics``; for an alarm, what ``/healthz`` says has lasted.
        labels: label names and values (one Spec per label set).
        slot: the first value slot.
        bounds: a histogram's bucket upper bounds, in the exposed unit.
        scale: exposed value = stored integer x scale (a histogram's sum, a gauge).
        merge: how a gauge combines over workers: ``sum`` or ``max``.
        threshold: an alarm's seconds before ``/healthz`` turns unhealthy.
    """

    name: str
    kind: Kind
    help: str
    labels: dict[str, str]
    slot: int
    bounds: tuple[float, ...] = ()
    scale: float = 1.0
    merge: Literal["sum", "max"] = "sum"
    threshold: float = 0.0

    @property
    def width(self) -> int:
        """How many value slots it takes: a histogram's buckets, overflow and sum."""
        return len(self.bounds) + 2 if self.kind == "histogram" else 1

    def same_as(self, other: Spec) -> bool:
        """Declares the same metric in the same place (its values may be carried over)."""
        return msgspec.structs.astuple(self) == msgspec.structs.astuple(other)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[Spec])


# -- the writer's side ---------------------------------------------------------------------------


class Registry:
    """The metrics one process declares, and the block they count in."""

    def __init__(self) -> None:
        """Start with a private block (no one reads it until :meth:`bind`)."""
        self._mm: mmap.mmap | None = None
        self.block = memoryview(bytearray(BLOCK_BYTES)).cast("Q")
        self.specs: list[Spec] = []
        self._next = 0

    def declare(self, spec: Spec) -> Spec:
        """Add a metric; returns it with its slot.

        Raises:
            ValueError: a name Prometheus refuses, a label set declared twice, or no room
                left in the block.
        """
        if not _NAME.fullmatch(spec.name) or not all(map(_NAME.fullmatch, spec.labels)):
            raise ValueError(f"not a valid metric or label name: {spec.name} {spec.labels}")
        if any(s.name == spec.name and s.labels == spec.labels for s in self.specs):
            raise ValueError(f"metric {spec.name}{spec.labels} is declared already")
        placed = msgspec.structs.replace(spec, slot=self._next)
        if placed.slot + placed.width > VALUE_SLOTS:
            raise ValueError(f"no room for {spec.name}: {VALUE_SLOTS} value slots per worker")
        self._next += placed.width
        self.specs.append(placed)
        self._write_schema()
        return placed

    def bind(self, block: memoryview) -> None:
        """Count in ``block`` (this worker's, in the shared table) from now on.

        Metrics the block's previous writer declared identically, in the same order, keep
        their counts (a counter or histogram adds what was counted privately; a gauge or
        alarm takes its private value); the rest of the block starts at zero.
        """
        previous = _read_schema(block) or []
        carried = 0
        while carried < min(len(previous), len(self.specs)):
            if not self.specs[carried].same_as(previous[carried]):
                break
            carried += 1
        kept = {
            at
            for spec in self.specs[:carried]
            if spec.kind in ("counter", "histogram")
            for at in range(_BASE + spec.slot, _BASE + spec.slot + spec.width)
        }
        private = self.block
        generation = _begin(block)
        for at in range(_BASE, len(block)):
            block[at] = (int(block[at]) if at in kept else 0) + int(private[at])
        self.block = block
        self._write_schema(generation)

    def _write_schema(self, generation: int | None = None) -> None:
        data = _ENCODER.encode(self.specs)
        if len(data) > SCHEMA_MAX:
            raise ValueError(f"the metrics' schema takes {len(data)} bytes (> {SCHEMA_MAX})")
        block = self.block
        if generation is None:
            generation = _begin(block)
        block.cast("B")[SCHEMA_AT : SCHEMA_AT + len(data)] = data
        block[_LENGTH] = len(data)
        block[_GENERATION] = generation + 1  # even: stable again


def _begin(block: memoryview) -> int:
    """Mark ``block``'s schema as being written (odd); returns the odd generation."""
    generation = int(block[_GENERATION]) | 1
    block[_GENERATION] = generation
    return generation


def _read_schema(block: memoryview) -> list[Spec] | None:
    """The schema in ``block``, or None when none is there or it is being written."""
    generation = int(block[_GENERATION])
    if not generation or generation & 1:
        return None
    length = int(block[_LENGTH])
    if length > SCHEMA_MAX:
        return None
    data = bytes(block.cast("B")[SCHEMA_AT : SCHEMA_AT + length])
    if int(block[_GENERATION]) != generation:
        return None
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


_REGISTRY = Registry()


def registry() -> Registry:
    """This process's registry (a worker's is bound to its slot's block once set up)."""
    return _REGISTRY


def bind(block: memoryview) -> None:
    """Bind this process's registry to ``block`` (the worker does, once per process)."""
    _REGISTRY.bind(block)


class Counter:
    """A monotonic count (exposed as ``<name>``, which ends in ``_total``)."""

    def __init__(
        self,
        name: str,
        help: str,
        labels: dict[str, str] | None = None,
        *,
        registry: Registry | None = None,
    ) -> None:
        """Declare it in ``registry`` (default: this process's).

        Raises:
            ValueError: see :meth:`Registry.declare`.
        """
        self._registry = registry if registry is not None else _REGISTRY
        spec = Spec(name, "counter", help, labels or {}, 0)
        self._at = _BASE + self._registry.declare(spec).slot

    def inc(self, amount: int = 1) -> None:
        """Add ``amount`` (>= 0)."""
        self._registry.block[self._at] += amount

    @property
    def value(self) -> int:
        """The count so far (this process's view)."""
        return int(self._registry.block[self._at])


class Gauge:
    """A value that goes up and down, stored as an integer (exposed x ``scale``)."""

    def __init__(
        self,
        name: str,
        help: str,
        *,
        merge: Literal["sum", "max"] = "sum",
        scale: float = 1.0,
        kind: Kind = "gauge",
        threshold: float = 0.0,
        registry: Registry | None = None,
    ) -> None:
        """Declare it in ``registry`` (default: this process's).

        Raises:
            ValueError: see :meth:`Registry.declare`.
        """
        self._registry = registry if registry is not None else _REGISTRY
        spec = Spec(name, kind, help, {}, 0, scale=scale, merge=merge, threshold=threshold)
        self._at = _BASE + self._registry.declare(spec).slot

    def set(self, value: int) -> None:
        """Store ``value`` (>= 0)."""
        self._registry.block[self._at] = value

    @property
    def value(self) -> int:
        """The stored value."""
        return int(self._registry.block[self._at])


class Alarm(Gauge):
    """A condition's start, as ``time.monotonic_ns()`` (0: it does not hold).

    Exposed as a gauge of the seconds it has held (the largest over the workers);
    ``/healthz`` is unhealthy while it has held for more than ``threshold`` seconds.
    """

    def __init__(
        self, name: str, help: str, threshold: float, *, registry: Registry | None = None
    ) -> None:
        """Declare it; ``help`` says what holds ("the broker is unreachable").

        Raises:
            ValueError: see :meth:`Registry.declare`.
        """
        super().__init__(
            name, help, merge="max", kind="alarm", threshold=threshold, registry=registry
        )

    def raise_at(self, since_ns: int) -> None:
        """The condition holds since ``since_ns`` (kept if it already held)."""
        if not self.value:
            self.set(max(1, since_ns))

    def clear(self) -> None:
        """The condition no longer holds."""
        if self.value:
            self.set(0)


class Histogram:
    """Observations counted in fixed buckets (stored in integer units x ``scale``)."""

    def __init__(
        self,
        name: str,
        help: str,
        bounds: Sequence[float],
        scale: float,
        *,
        registry: Registry | None = None,
    ) -> None:
        """Declare it: ``bounds`` in the exposed unit, ascending; an observation ``v``
        (integer units) goes to the first bucket with ``v * scale <= bound``.

        Raises:
            ValueError: see :meth:`Registry.declare`.
        """
        self._registry = registry if registry is not None else _REGISTRY
        spec = Spec(name, "histogram", help, {}, 0, bounds=tuple(bounds), scale=scale)
        self._at = _BASE + self._registry.declare(spec).slot
        self._limits = [bound / scale for bound in bounds]

    def observe(self, value: int) -> None:
        """Count one observation of ``value`` integer units."""
        block, at = self._registry.block, self._at
        block[at + bisect.bisect_left(self._limits, value)] += 1  # past the last: overflow
        block[at + len(self._limits) + 1] += max(0, value)


# -- the supervisor's side -----------------------------------------------------------------------


class Table:
    """The shared table: one block per worker slot."""

    def __init__(self, fd: int) -> None:
        """Map the table in ``fd`` (made by :meth:`create`)."""
        self.fd = fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size)
        self._all = memoryview(self._mm).cast("Q")
        self.blocks = len(self._all) * 8 // BLOCK_BYTES

    @classmethod
    def create(cls, blocks: int) -> Table:
        """A zeroed table of ``blocks`` blocks (shared memory is allocated when touched)."""
        return cls(create_shared_fd(blocks * BLOCK_BYTES))

    def block(self, index: int) -> memoryview:
        """The u64 slots of block ``index``."""
        per = BLOCK_BYTES // 8
        return self._all[index * per : (index + 1) * per]

    def close(self) -> None:
        """Unmap the table (views from :meth:`block` must be released first)."""
        self._all.release()
        # A block view may still be alive: then the mapping goes with the process.
        with contextlib.suppress(BufferError):
            self._mm.close()


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One declared metric, combined over the workers, as ``ugram stats --json`` shows it.

    ``value`` is a counter's or gauge's value (an alarm's: seconds it has held); a
    histogram has ``counts`` per bucket (the last above every bound) and ``sum``.
    """

    name: str
    kind: str
    help: str
    labels: dict[str, str] = {}
    value: float = 0.0
    bounds: list[float] = []
    counts: list[int] = []
    sum: float = 0.0
    threshold: float = 0.0


def read(table: Table, indices: Sequence[int], now_ns: int) -> list[Reading]:
    """Every metric declared in the blocks of ``indices``, combined (in declaration order).

    A metric declared differently by two workers (kind or buckets) is read from the first.
    """
    combined: dict[tuple[str, tuple[tuple[str, str], ...]], Reading] = {}
    for index in indices:
        block = table.block(index)
        try:
            for spec in _read_schema(block) or []:
                key = (spec.name, tuple(sorted(spec.labels.items())))
                reading = _reading(spec, block, now_ns)
                old = combined.get(key)
                combined[key] = reading if old is None else _combine(spec, old, reading)
        finally:
            block.release()
    return list(combined.values())


def _reading(spec: Spec, block: memoryview, now_ns: int) -> Reading:
    at = _BASE + spec.slot
    if spec.kind == "histogram":
        n = len(spec.bounds)
        counts = [int(block[at + i]) for i in range(n + 1)]
        return Reading(
            name=spec.name,
            kind=spec.kind,
            help=spec.help,
            labels=spec.labels,
            bounds=list(spec.bounds),
            counts=counts,
            sum=int(block[at + n + 1]) * spec.scale,
        )
    raw = int(block[at])
    value = raw * spec.scale
    if spec.kind == "alarm":
        value = max(0.0, (now_ns - raw) / 1e9) if raw else 0.0
    return Reading(
        name=spec.name,
        kind=spec.kind,
        help=spec.help,
        labels=spec.labels,
        value=value,
        threshold=spec.threshold,
    )


def _combine(spec: Spec, old: Reading, new: Reading) -> Reading:
    if old.kind != new.kind or old.bounds != new.bounds:
        return old
    if spec.kind == "histogram":
        counts = [a + b for a, b in zip(old.counts, new.counts, strict=True)]
        return msgspec.structs.replace(old, counts=counts, sum=old.sum + new.sum)
    if spec.kind == "alarm" or spec.merge == "max":
        return old if old.value >= new.value else new
    return msgspec.structs.replace(old, value=old.value + new.value)


def alarms(readings: Sequence[Reading]) -> list[str]:
    """What ``/healthz`` says of the alarms that have held past their threshold."""
    return [
        f"{r.help} for more than {r.threshold:g}s ({r.value:.0f}s)"
        for r in readings
        if r.kind == "alarm" and r.value > r.threshold
    ]

"""Every worker's exposed series, merged in the supervisor: what ``/metrics`` renders.

The supervisor's consumer thread (:mod:`ugram.supervisor.exports`) hands each export-ring
record to :meth:`Exposition.apply`, which applies a delta whole under :attr:`Exposition.lock`
(a scrape renders under it too: it never sees half a batch). Series are keyed by family
name and label set, whichever worker's lines they came from, so the workers' contributions
add up (a gauge's by receive time); a SIGHUP or a dead worker changes nothing here.

What is refused is counted (never a failed scrape, never an unbounded one):

* a new series past ``max_series`` (all families) or ``max_series_per_metric`` (one);
* a name taken by a family of another type, or of the same type with other buckets,
  quantiles, windows or interval (``type_conflict``), or whose exposed sample names
  (``_total``, ``_bucket``, ``_count``, ``_sum``) another family already has
  (``name_conflict``);
* a batch's addition that would overflow a sum to infinity (``overflow``).

A family whose series have different sets of label names is exposed as it is, one sample a
label set (Prometheus takes that; it is statsd_exporter's #114); ``mixed_label_families``
says how many there are. A series that no line updated for its profile's ``ttl`` is dropped
(:meth:`Exposition.expire`), and a family without series goes with its last one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec

from ...logs import RateLimited
from . import wire
from .series import (
    AnySeries,
    CounterSeries,
    GaugeSeries,
    HistogramSeries,
    SetSeries,
    SummarySeries,
    new_series,
)
from .wire import FINAL, HELLO, PART, PREFIX, Delta, Limits, Profile

_S = TypeVar(
    "_S", bound="CounterSeries | GaugeSeries | HistogramSeries | SummarySeries | SetSeries"
)

log = logging.getLogger("ugram.builtin.statsd")
_warn = RateLimited(log)

MAX_PENDING = 256 * 1024 * 1024  # bytes of one delta's parts before its FINAL (a bound)
# The worker's own counts that are exposed (anything else in a delta is not trusted).
WORKER_REASONS = ("invalid_name", "empty_name", "reserved_name", "max_tags", "negative_counter")
SUPERVISOR_REASONS = (
    "max_series",
    "max_series_per_metric",
    "type_conflict",
    "name_conflict",
    "overflow",
    "unknown_series",
)
WORKER_COUNTS = (
    "events",
    "service_checks",
    "dropped",
    "dropped_tags",
    "invalid_lines",
    "skipped_records",
)
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "set": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def family_name(name: str, kind: str) -> str:
    """The family a series name belongs to (a counter's without ``_total``, as
    prometheus-client names it)."""
    return name.removesuffix("_total") if kind == "counter" else name


def layout(profile: Profile) -> tuple[object, ...]:
    """What two profiles of one family must agree on (help and ttl may differ)."""
    p = profile
    return (p.kind, p.buckets, p.quantiles, p.max_age, p.age_buckets, p.interval)


@dataclass(eq=False)
class Family:
    """One exposed metric family and its series by label set."""

    name: str
    profile: Profile
    series: dict[tuple[tuple[str, str], ...], AnySeries] = field(default_factory=dict)

    @property
    def label_sets(self) -> int:
        """How many different sets of label names its series have."""
        return len({tuple(k for k, _ in labels) for labels in self.series})


@dataclass(eq=False)
class _Id:
    """What one worker's series id stands for, and the series it feeds (None: refused)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    profile: Profile | None
    series: AnySeries | None = None
    refused: str = ""  # why, when refused
    checked: int = -1  # the registry generation its admission was decided in


@dataclass(eq=False)
class _Slot:
    """One worker slot's tables (since its worker's latest hello)."""

    profiles: dict[int, Profile] = field(default_factory=dict)
    ids: dict[int, _Id] = field(default_factory=dict)
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0


class Exposition:
    """The merged series and the ``ugram_statsd_*`` counts (see the module)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.families: dict[str, Family] = {}
        self.limits = Limits()
        self.series = 0
        self.counts: dict[str, float] = {}  # worker counts, lines:<kind>, expired, ...
        self.refused_lines: dict[str, int] = dict.fromkeys(WORKER_REASONS + SUPERVISOR_REASONS, 0)
        self.refused_series: dict[str, int] = dict.fromkeys(SUPERVISOR_REASONS, 0)
        self.refused_members = 0
        self.corrupt = 0
        self._samples: dict[str, str] = {}  # exposed sample name -> its family
        self._slots: dict[int, _Slot] = {}
        self._generation = 0  # bumped when series go: refused ids may fit again
        self._last_ns = 0

    def count(self, what: str, n: float = 1) -> None:
        """Add to one of the counts."""
        self.counts[what] = self.counts.get(what, 0) + n

    # -- applying ---------------------------------------------------------------------------

    def apply(self, slot: int, payload: bytes) -> tuple[int, int] | None:
        """Apply one export-ring record of worker slot ``slot``.

        Returns:
            The ``(resets, end)`` position of a delta applied whole (what the consumer notes
            for a replacement worker), or None for a hello or a part.
        """
        if len(payload) < PREFIX.size:
            self._corrupt(slot, "a record shorter than its prefix")
            return None
        resets, end, last_ns, kind = PREFIX.unpack_from(payload)
        body = payload[PREFIX.size :]
        tables = self._slots.setdefault(slot, _Slot())
        if kind == HELLO:
            self._hello(slot, tables, body)
            return None
        if kind == PART:
            if tables.pending_bytes + len(body) > MAX_PENDING:
                self._corrupt(slot, "a delta of more than 256 MiB")
                tables.pending.clear()
                tables.pending_bytes = 0
            tables.pending.append(body)
            tables.pending_bytes += len(body)
            return None
        if kind != FINAL:
            self._corrupt(slot, f"a record of kind {kind}")
            return None
        data = b"".join([*tables.pending, body]) if tables.pending else body
        tables.pending.clear()
        tables.pending_bytes = 0
        try:
            delta = wire.decode_delta(data)
        except msgspec.DecodeError as exc:
            self._corrupt(slot, f"a delta that does not decode ({exc})")
            return resets, end
        with self.lock:
            self._apply(tables, delta, last_ns)
        return resets, end

    def _hello(self, slot: int, tables: _Slot, body: bytes) -> None:
        try:
            hello = wire.decode_hello(body)
        except msgspec.DecodeError as exc:
            self._corrupt(slot, f"a hello that does not decode ({exc})")
            return
        self._slots[slot] = _Slot()
        with self.lock:
            self.limits = hello.limits

    def _corrupt(self, slot: int, what: str) -> None:
        self.corrupt += 1
        _warn.warning("statsd exposition: worker %d's export ring held %s: skipped", slot, what)

    def _apply(self, tables: _Slot, delta: Delta, last_ns: int) -> None:
        self._last_ns = last_ns
        for pid, profile in delta.profiles:
            tables.profiles[pid] = profile
        for d in delta.series:
            tables.ids[d.sid] = _Id(d.name, d.labels, tables.profiles.get(d.profile))
        self._apply_counters(tables, delta)
        self._apply_gauges(tables, delta)
        self._apply_histograms(tables, delta)
        self._apply_summaries(tables, delta)
        self._apply_sets(tables, delta)
        for what, n in delta.counts.items():
            reason = what.removeprefix("refused:")
            if reason != what and reason in WORKER_REASONS:
                self.refused_lines[reason] += n
            elif what in WORKER_COUNTS:
                self.count(what, n)

    def _target(self, tables: _Slot, sid: int, lines: int, kind: type[_S]) -> _S | None:
        """The series a worker's id feeds, admitted if need be; None (lines counted) when
        it is refused."""
        entry = tables.ids.get(sid)
        if entry is None:
            self.refused_lines["unknown_series"] += lines
            return None
        series = entry.series
        if series is None or series.dead:
            series = self._admit(entry)
            if series is None:
                self.refused_lines[entry.refused] += lines
                return None
        if not isinstance(series, kind):  # a delta that does not match its id: corrupt
            self.refused_lines["unknown_series"] += lines
            return None
        series.updated_ns = self._last_ns
        assert entry.profile is not None  # admitted
        self.count("lines:" + entry.profile.kind, lines)
        return series

    def _refuse(self, lines: int) -> None:
        self.refused_lines["overflow"] += lines

    def _apply_counters(self, tables: _Slot, delta: Delta) -> None:
        for sid, lines, total in delta.counters:
            series = self._target(tables, sid, lines, CounterSeries)
            if series is not None and not series.add(total):
                self._refuse(lines)

    def _apply_gauges(self, tables: _Slot, delta: Delta) -> None:
        for sid, lines, at_ns, value, change_ns, change in delta.gauges:
            series = self._target(tables, sid, lines, GaugeSeries)
            if series is not None and not series.add(at_ns, value, change_ns, change):
                self._refuse(lines)

    def _apply_histograms(self, tables: _Slot, delta: Delta) -> None:
        for sid, lines, count, total, counts in delta.histograms:
            series = self._target(tables, sid, lines, HistogramSeries)
            if series is not None and not series.add(count, total, counts):
                self._refuse(lines)

    def _apply_summaries(self, tables: _Slot, delta: Delta) -> None:
        for sid, lines, count, total, window, pairs in delta.summaries:
            series = self._target(tables, sid, lines, SummarySeries)
            if series is None:
                continue
            profile = tables.ids[sid].profile
            keep = profile.age_buckets if profile is not None else 1
            if not series.add(count, total, window, pairs, keep):
                self._refuse(lines)

    def _apply_sets(self, tables: _Slot, delta: Delta) -> None:
        cap = self.limits.max_set_members
        for sid, lines, index, members in delta.sets:
            series = self._target(tables, sid, lines, SetSeries)
            if series is not None:
                self.refused_members += series.add(index, members, cap)

    # -- admission --------------------------------------------------------------------------

    def _admit(self, entry: _Id) -> AnySeries | None:
        """The series for a worker's id: found, created within the caps, or None (refused,
        ``entry.refused`` says why; decided again only once series went)."""
        if entry.refused and entry.checked == self._generation:
            return None
        entry.checked = self._generation
        reason, series = self._place(entry)
        if series is None:
            if entry.refused != reason:
                self.refused_series[reason] += 1
                _warn.warning(
                    "statsd exposition: refused series %s%s: %s",
                    entry.name,
                    dict(entry.labels),
                    reason,
                )
            entry.refused = reason
        else:
            entry.refused = ""
        entry.series = series
        return series

    def _place(self, entry: _Id) -> tuple[str, AnySeries | None]:
        profile = entry.profile
        if profile is None:
            return "unknown_series", None
        name = family_name(entry.name, profile.kind)
        family = self.families.get(name)
        if family is None:
            return self._new_family(name, profile, entry.labels)
        if layout(family.profile) != layout(profile):
            return "type_conflict", None
        series = family.series.get(entry.labels)
        if series is not None:
            return "", series
        limits = self.limits
        if limits.max_series and self.series >= limits.max_series:
            return "max_series", None
        if limits.max_series_per_metric and len(family.series) >= limits.max_series_per_metric:
            return "max_series_per_metric", None
        return "", self._add(family, profile, entry.labels)

    def _new_family(
        self, name: str, profile: Profile, labels: tuple[tuple[str, str], ...]
    ) -> tuple[str, AnySeries | None]:
        samples = [name + suffix for suffix in _SUFFIXES[profile.kind]]
        if any(sample in self._samples for sample in samples):
            return "name_conflict", None
        if self.limits.max_series and self.series >= self.limits.max_series:
            return "max_series", None
        family = self.families[name] = Family(name, profile)
        for sample in samples:
            self._samples[sample] = name
        return "", self._add(family, profile, labels)

    def _add(
        self, family: Family, profile: Profile, labels: tuple[tuple[str, str], ...]
    ) -> AnySeries:
        series = family.series[labels] = new_series(profile, labels)
        self.series += 1
        return series

    # -- expiry -----------------------------------------------------------------------------

    def expire(self, now_ns: int) -> int:
        """Drop the series no line updated for their family's ``ttl``; returns how many."""
        dropped = 0
        with self.lock:
            for name, family in list(self.families.items()):
                ttl = family.profile.ttl
                if not ttl:
                    continue
                cutoff = now_ns - ttl * 1e9
                for labels, series in list(family.series.items()):
                    if series.updated_ns < cutoff:
                        series.dead = True
                        del family.series[labels]
                        dropped += 1
                if not family.series:
                    self._drop_family(name, family)
            if dropped:
                self.series -= dropped
                self._generation += 1
                self.count("expired", dropped)
        return dropped

    def _drop_family(self, name: str, family: Family) -> None:
        del self.families[name]
        for suffix in _SUFFIXES[family.profile.kind]:
            self._samples.pop(name + suffix, None)

    def expires(self) -> bool:
        """Whether any family has a ttl (else :meth:`expire` has nothing to do)."""
        return any(family.profile.ttl for family in self.families.values())

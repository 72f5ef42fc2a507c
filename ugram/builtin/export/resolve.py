"""From a statsd line's name, type and tags to the series it feeds (in a worker).

A :class:`Resolver` maps each distinct ``(name, type, tags)`` once: through the mapping
rules (:class:`ugram.builtin.mapping.Mapper`), or by escaping the name
(:func:`.names.escape`); its tags become labels (:class:`.names.TagLabels`); its type and
profile say how it is exposed. The answer is a :class:`Target`, cached, with a series id
(``sid``) that names the series in the deltas this worker publishes: the first delta to
use an id carries its definition.
"""

from __future__ import annotations

from msgspec.structs import replace

from ...codecs.statsd import Metric
from ..mapping import Mapped, Mapper
from .names import RESERVED_PREFIX, TagLabels, escape
from .wire import Profile, SeriesDef

COUNTER, GAUGE, HISTOGRAM, SUMMARY, SET, REFUSED, DROPPED = range(7)
_CODES = {"counter": COUNTER, "gauge": GAUGE, "histogram": HISTOGRAM, "summary": SUMMARY}
_CODES["set"] = SET
# statsd's type -> statsd_exporter's (what a mapping's match_metric_type names)
STATSD_TYPES = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer"}
STATSD_TYPES |= {"d": "observer", "s": "set"}


class Target:
    """What the lines of one ``(name, type, tags)`` do: feed series ``sid`` of ``kind``,
    or be refused (``reason``) or dropped by a mapping."""

    __slots__ = ("bounds", "dropped", "interval_ns", "kind", "reason", "scale", "sid", "window_ns")

    def __init__(self, kind: int, sid: int = -1, reason: str = "") -> None:
        self.kind, self.sid, self.reason = kind, sid, reason
        self.scale = 1.0  # timers: milliseconds to seconds
        self.bounds: list[float] = []  # a histogram's
        self.window_ns = 0  # a summary's age bucket
        self.interval_ns = 0  # a set's interval
        self.dropped = 0  # tags each line drops (see TagLabels)


# statsd_exporter's default quantiles' errors, carried along (only documented: see .sketch)
QUANTILE_ERRORS = {0.5: 0.05, 0.9: 0.01, 0.99: 0.001}


class Resolver:
    """Maps lines to :class:`Target` s, remembering each answer and the series ids."""

    def __init__(
        self,
        defaults: Profile,
        timer_type: str,
        mapper: Mapper | None = None,
        bare_tag_label: str = "",
        max_tags: int = 0,
        max_ids: int = 100_000,
    ) -> None:
        """``defaults``: the profile of unmapped lines (its kind is ignored); ``timer_type``:
        ``histogram`` or ``summary`` for timers, histograms and distributions; ``mapper``:
        a mapping file's rules (None: names are only escaped); ``max_ids``:
        the most distinct series ids kept before the tables start afresh (:meth:`full`)."""
        self.defaults, self.timer_type, self.mapper = defaults, timer_type, mapper
        self.tags = TagLabels(bare_tag_label)
        self.max_tags, self.max_ids = max_tags, max_ids
        self.cache: dict[tuple[str, str, tuple[str, ...]], Target] = {}
        self.new_series: list[SeriesDef] = []
        self.new_profiles: list[tuple[int, Profile]] = []
        self._sids: dict[tuple[str, tuple[tuple[str, str], ...], int], int] = {}
        self._profiles: dict[Profile, int] = {}

    def full(self) -> bool:
        """True when the tables hold ``max_ids`` series: start them afresh (:meth:`reset`)."""
        return len(self.cache) >= self.max_ids or len(self._sids) >= self.max_ids

    def reset(self) -> None:
        """Forget every id and profile (the supervisor is told by a hello)."""
        self.cache.clear()
        self._sids.clear()
        self._profiles.clear()
        self.new_series.clear()
        self.new_profiles.clear()

    def resolve(self, line: Metric) -> Target:
        """The target of ``line``'s name, type and tags (cached)."""
        key = (line.name, line.type, line.tags)
        target = self.cache.get(key)
        if target is None:
            target = self.cache[key] = self._resolve(line)
        return target

    def _resolve(self, line: Metric) -> Target:
        mapped = None
        if self.mapper is not None:
            mapped = self.mapper.map(line.name, line.type)
            if mapped is None:  # action: drop
                return Target(DROPPED)
            if not mapped.name:  # a template whose references were all empty
                return Target(REFUSED, reason="empty_name")
        profile = self._profile(line.type, mapped)
        name = escape(mapped.name) if mapped is not None else escape(line.name)
        if not name:
            return Target(REFUSED, reason="invalid_name")
        if name.startswith(RESERVED_PREFIX):
            return Target(REFUSED, reason="reserved_name")
        if self.max_tags and len(set(line.tags)) > self.max_tags:
            return Target(REFUSED, reason="max_tags")
        labels, dropped = self.tags.labels(line.tags, profile.kind)
        if mapped is not None:
            for label, value in mapped.labels:
                if value and not (mapped.honor_labels and label in labels):
                    labels[label] = value  # an empty value: no label, as in Prometheus
        target = self._target(line, name, labels, profile)
        if mapped is not None and mapped.scale is not None and target.kind in (HISTOGRAM, SUMMARY):
            target.scale *= mapped.scale  # observers only, as statsd_exporter
        target.dropped = dropped
        return target

    def _profile(self, statsd_type: str, mapped: Mapped | None) -> Profile:
        kind = STATSD_TYPES[statsd_type]
        if kind == "observer":
            kind = (mapped.observer if mapped is not None else None) or self.timer_type
        profile = replace(self.defaults, kind=kind)
        if mapped is None:
            return profile
        quantiles = profile.quantiles
        if mapped.quantiles:
            quantiles = tuple((q, QUANTILE_ERRORS.get(q, 0.01)) for q in mapped.quantiles)
        return replace(
            profile,
            help=mapped.help or profile.help,
            buckets=mapped.buckets or profile.buckets,
            quantiles=quantiles,
            ttl=profile.ttl if mapped.ttl is None else mapped.ttl,
        )

    def _target(self, line: Metric, name: str, labels: dict[str, str], p: Profile) -> Target:
        pid = self._profiles.get(p)
        if pid is None:
            pid = self._profiles[p] = len(self._profiles)
            self.new_profiles.append((pid, p))
        items = tuple(sorted(labels.items()))
        sid = self._sids.get((name, items, pid))
        if sid is None:
            sid = self._sids[name, items, pid] = len(self._sids)
            self.new_series.append(SeriesDef(sid, name, items, pid))
        target = Target(_CODES[p.kind], sid)
        if line.type == "ms":
            target.scale = 0.001  # statsd's milliseconds, Prometheus' seconds
        target.bounds = list(p.buckets)
        target.window_ns = max(1, round(p.max_age / max(1, p.age_buckets) * 1e9))
        target.interval_ns = max(1, round(p.interval * 1e9))
        return target

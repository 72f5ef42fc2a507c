"""Series keys, built once for each metric name and tag list seen, not once a line."""

from __future__ import annotations

import sys

Key = tuple[str, tuple[str, ...]]  # metric name, sorted distinct tags
MISSING: Key = ("", ())  # never a cached value (a key's name is never empty)

ENTRIES = 65_536
"""The most (name, tags as sent) pairs a :class:`SeriesKeys` holds when the series are not
limited; with ``max_series``, twice that (tags in another order are another pair)."""


class SeriesKeys:
    """Each line's series key: its name and its distinct tags, sorted, as one tuple shared
    by every line (and every interval) of the series.

    A line's name and tag tuple come new from the parser each time; building the key from
    them (a set, a sort, two tuples) cost more than aggregating the line. Here a dict from
    (name, tags as sent) gives the key built the first time, its strings interned so that
    the series held share them. A tag list with more distinct tags than ``max_tags`` maps to
    None (the line is refused). The dict is emptied when it reaches its bound (many series,
    or a flood of new ones): keys are then built again, never grown without bound.
    """

    __slots__ = ("_keys", "_max_tags", "_most", "cached")

    def __init__(self, max_tags: int = 0, max_series: int = 0) -> None:
        self._max_tags = max_tags
        self._most = max(1024, 2 * max_series) if max_series else ENTRIES
        self._keys: dict[tuple[str, tuple[str, ...]], Key | None] = {}
        # cached((name, tags), MISSING): the key already built (or None), else MISSING; a
        # caller saves the call to key() a line. The dict is emptied, never replaced.
        self.cached = self._keys.get

    def key(self, name: str, tags: tuple[str, ...]) -> Key | None:
        """The series key of a line, None when it has more than ``max_tags`` distinct tags."""
        key = self._keys.get((name, tags), MISSING)
        if key is MISSING:
            key = self._build(name, tags)
        return key

    def _build(self, name: str, tags: tuple[str, ...]) -> Key | None:
        distinct = set(tags)
        key: Key | None = None
        if not self._max_tags or len(distinct) <= self._max_tags:
            key = (sys.intern(name), tuple(sorted(map(sys.intern, distinct))))
        if len(self._keys) >= self._most:
            self._keys.clear()
        self._keys[name, tags] = key
        return key

"""Prometheus names from statsd names and DogStatsD tags, as statsd_exporter makes them.

:func:`escape` is statsd_exporter's ``EscapeMetricName``: every character but ASCII
letters, digits and ``_`` becomes ``_`` (a ``--`` keeps one ``_``), and a leading digit gets
a ``_`` in front: ``api.request-time`` is ``api_request_time``. Tag keys become label names
the same way. Where Prometheus reserves a label name, ugram renames it (statsd_exporter does
not, and its scrape then fails): ``__x`` becomes ``tag__x``, and ``le`` on a histogram or
``quantile`` on a summary becomes ``exported_le`` / ``exported_quantile``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_DOUBLE_DASH = re.compile(r"-(-)+")
_VALID = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_PREFIX = "ugram_"  # ugram's own families: an application's may not take it


def escape(name: str) -> str:
    """``name`` with every character Prometheus refuses replaced (see the module)."""
    if _VALID.fullmatch(name):
        return name
    # statsd_exporter: in a run of dashes only the first is replaced (the rest skipped)
    out = _INVALID.sub("_", _DOUBLE_DASH.sub("-", name))
    return "_" + out if out[:1].isdigit() else out


def label_name(key: str, kind: str) -> str:
    """The label a tag key becomes on a series of ``kind`` ("" when nothing is left)."""
    name = escape(key)
    if name.startswith("__"):
        return "tag" + name
    if (kind == "histogram" and name == "le") or (kind == "summary" and name == "quantile"):
        return "exported_" + name
    return name


class TagLabels:
    """Turns a line's tags into labels: ``key:value`` gives ``key="value"``; a tag without a
    value (or with an empty one) is dropped and counted, unless ``bare_label`` is set: then
    the bare tags, sorted and comma-joined, become that label's value."""

    def __init__(self, bare_label: str) -> None:
        """``bare_label``: the label bare tags go to ("" drops them)."""
        self.bare_label = bare_label

    def labels(self, tags: Iterable[str], kind: str) -> tuple[dict[str, str], int]:
        """The labels, and how many tags were dropped (empty key or value, bare)."""
        labels: dict[str, str] = {}
        bare: list[str] = []
        dropped = 0
        for tag in tags:
            key, colon, value = tag.partition(":")
            if not colon:
                bare.append(tag)
                continue
            name = label_name(key, kind) if key else ""
            if not name or not value:
                dropped += 1
                continue
            labels[name] = value  # a key given twice: the last value, as statsd_exporter
        if bare:
            if self.bare_label:
                labels[self.bare_label] = ",".join(sorted(set(bare)))
            else:
                dropped += len(bare)
        return labels, dropped

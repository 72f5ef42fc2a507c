"""Quantiles of a summary from a mergeable log-scale sketch (DDSketch's idea).

A sample ``v`` is counted under the key ``ceil(log(|v|) / log(GAMMA))`` (negated for a
negative ``v``; 0 for zero and for ``|v|`` below :data:`SMALLEST`), so sketches of several
workers merge by adding their weights key by key, and a quantile read back is within
:data:`RELATIVE_ERROR` (1 %) of a sample of that rank. Keys are bounded: a float's exponent
gives at most a few tens of thousands of them, and a series holds only the keys its samples
fell in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(GAMMA)
SMALLEST = 1e-9  # below it (in magnitude) a sample counts as zero
_OFFSET = 1 - math.floor(math.log(SMALLEST) / _LOG_GAMMA)  # every kept key is >= 1


def key(value: float) -> int:
    """The sketch key of one sample."""
    magnitude = abs(value)
    if magnitude < SMALLEST:
        return 0
    k = math.ceil(math.log(magnitude) / _LOG_GAMMA) + _OFFSET
    return k if value > 0 else -k


def value_of(k: int) -> float:
    """The value a key stands for (the middle of its range, relative error <= 1 %)."""
    if k == 0:
        return 0.0
    magnitude = 2 * GAMMA ** (abs(k) - _OFFSET) / (GAMMA + 1)
    return magnitude if k > 0 else -magnitude


def merge(sketches: Iterable[Mapping[int, float]]) -> dict[int, float]:
    """The weights of several sketches, key by key."""
    merged: dict[int, float] = {}
    for sketch in sketches:
        for k, weight in sketch.items():
            merged[k] = merged.get(k, 0.0) + weight
    return merged


def quantiles(sketch: Mapping[int, float], qs: Iterable[float]) -> list[float]:
    """The value at each quantile in ``qs`` (NaN for an empty sketch, as Prometheus'
    clients answer for a summary without samples in its window)."""
    items = sorted((value_of(k), w) for k, w in sketch.items() if w > 0)
    total = sum(w for _, w in items)
    out = []
    for q in qs:
        if not items:
            out.append(math.nan)
            continue
        rank, seen = q * total, 0.0
        chosen = items[-1][0]
        for value, weight in items:
            seen += weight
            if seen >= rank:
                chosen = value
                break
        out.append(chosen)
    return out

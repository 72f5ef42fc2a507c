"""What ugram's bench handlers share with the rest of the bench: the per-record work the
single-process baselines also do, and the names of the ``UGBENCH_*`` variables and the
percentile function the runner reads their reports with.

Kept apart from ``bench.handlers`` (which imports ugram) so that the runner and the baselines
never import ugram: they keep working whatever state the ugram tree is in.
"""

from __future__ import annotations

import os
import time
from array import array

import msgspec

OUT_ENV = "UGBENCH_OUT"
READY_ENV = "UGBENCH_READY"
LATENCY_DIR_ENV = "UGBENCH_LAT_DIR"
CPU_ITERS_ENV = "UGBENCH_CPU_ITERS"
CPU_TARGET_US = 50.0


class Record(msgspec.Struct):
    """The JSON payload ``bench/c/sender --json`` sends."""

    seq: int
    name: str
    value: float
    tags: list[str]
    pad: str


def make_decoder() -> msgspec.json.Decoder[Record]:
    """Build the decoder once per process; reuse it for every record."""
    return msgspec.json.Decoder(Record)


def burn(iters: int, seed: int) -> int:
    """Pure-Python busy work: ``iters`` steps of a linear congruential generator."""
    x = seed
    for _ in range(iters):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def calibrate(target_us: float = CPU_TARGET_US) -> int:
    """Iterations of ``burn`` that take ``target_us`` microseconds on this machine (best of 5)."""
    probe = 20_000
    best = min(_time_burn(probe) for _ in range(5))
    return max(1, round(probe * target_us * 1e-6 / best))


def _time_burn(iters: int) -> float:
    t0 = time.perf_counter()
    burn(iters, 1)
    return time.perf_counter() - t0


def cpu_iters() -> int:
    """Iterations per record for ``cpu_work``, calibrated once and shared through the env.

    The first call (in the runner, before any child starts) calibrates and stores the result in
    ``$UGBENCH_CPU_ITERS``; child processes inherit it, so every process — baseline or
    ugram worker — runs the same number of iterations whatever the load when it started.
    """
    value = os.environ.get(CPU_ITERS_ENV)
    if value:
        return int(value)
    iters = calibrate()
    os.environ[CPU_ITERS_ENV] = str(iters)
    return iters


def cpu_work(data: bytes | memoryview, iters: int) -> int:
    """The ``cpu`` handler's per-record work (about 50 µs with ``iters = cpu_iters()``)."""
    return burn(iters, len(data))


PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)


def percentiles(values: array[int] | list[int]) -> dict[str, int]:
    """Nearest-rank percentiles of ``values`` (``p50`` … ``p100``), empty when no values."""
    ordered = sorted(values)
    if not ordered:
        return {}
    result: dict[str, int] = {}
    for p in PERCENTILES:
        rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
        result[f"p{p:g}"] = ordered[int(rank) - 1]
    return result

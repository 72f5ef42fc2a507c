"""Benchmark handlers for ugram, and the per-record work the Python baselines share.

Every handler does exactly the work of one of the functions below, so ugram and the baselines
in ``bench.baselines`` are compared on identical per-record cost:

* ``Count``: count only;
* ``JsonCount``: decode each payload into ``Record`` with one ``msgspec.json.Decoder``;
* ``CpuCount``: ``cpu_work``: about 50 µs of pure-Python arithmetic per record.

Handlers append ``"<pid> <count>\\n"`` to the file named by ``$UGBENCH_OUT`` on teardown, so
a harness can check that every datagram was handled exactly once across all workers.
"""

from __future__ import annotations

import os
import time

import msgspec

OUT_ENV = "UGBENCH_OUT"
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

    The first call (in the harness, before any child starts) calibrates and stores the result in
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


def report_count(count: int) -> None:
    """Append ``"<pid> <count>\\n"`` to ``$UGBENCH_OUT`` (if set) in one atomic write."""
    path = os.environ.get(OUT_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {count}\n".encode())
    finally:
        os.close(fd)


class Count:
    """Counts records; reports the count on teardown."""

    def __init__(self) -> None:
        self.count = 0

    def setup(self) -> None:
        self.count = 0

    def handle(self, data: bytes) -> None:
        self.count += 1

    def teardown(self) -> None:
        report_count(self.count)


class JsonCount(Count):
    """Decodes each record into ``Record``, counts; reports the count on teardown."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = make_decoder()

    def handle(self, data: bytes) -> None:
        self.decoder.decode(data)
        self.count += 1


class CpuCount(Count):
    """Runs ``cpu_work`` on each record (~50 µs), counts; reports the count on teardown."""

    def __init__(self) -> None:
        super().__init__()
        self.iters = cpu_iters()

    def handle(self, data: bytes) -> None:
        cpu_work(data, self.iters)
        self.count += 1

"""The bench's ugram handlers.

Every handler does exactly the work of one of the functions in ``bench.work``, so ugram and
the baselines in ``bench.receivers`` are compared on identical per-record cost:

* ``Count``: count only;
* ``JsonCount``: decode each payload into ``Record`` with one ``msgspec.json.Decoder``;
* ``CpuCount``: ``cpu_work``: about 50 µs of pure-Python arithmetic per record.

``JsonStruct`` does ``JsonCount``'s work the way a ugram user writes it: the handler declares
``msg: Record`` and ugram decodes (run it with ``--codec json``). ``BatchCount`` and
``BatchJsonStruct`` do ``Count``'s and ``JsonStruct``'s work in ``handle_batch``.
``Latency`` records, per record, receive→handler latency (``dgram.received_at``) and, when
the payload starts with a send time stamp (``bench/c/paced``, ``bench.pysend paced``),
send→handler latency.

Handlers append ``"<pid> <count> <last> <cpu>\\n"`` to the file named by ``$UGBENCH_OUT`` on
teardown, ``<last>`` being the ``time.monotonic()`` at which the process handled its last
record (0 if none) and ``<cpu>`` the CPU seconds the process used from ``setup()`` to
``teardown()``, so the runner can check that every datagram was handled exactly once across all
workers, time the run without the shutdown, and tell the CPU cost per record. ``setup()``
creates an empty file named by the pid in the directory ``$UGBENCH_READY`` (if set): the
runner starts sending only once every worker is ready.
"""

from __future__ import annotations

import os
import time
from array import array
from time import monotonic

import ugram
from bench.work import (
    LATENCY_DIR_ENV,
    OUT_ENV,
    READY_ENV,
    Record,
    cpu_iters,
    cpu_work,
    make_decoder,
)

SEND_STAMP_MIN = 10**18  # a u64 this large at the start of a payload is a time.time_ns() stamp


def report_count(count: int, last: float = 0.0, cpu: float = 0.0) -> None:
    """Append ``"<pid> <count> <last> <cpu>\\n"`` to ``$UGBENCH_OUT`` (if set) atomically."""
    path = os.environ.get(OUT_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {count} {last:.6f} {cpu:.6f}\n".encode())
    finally:
        os.close(fd)


def mark_ready() -> None:
    """Create ``$UGBENCH_READY/<pid>`` (if the variable is set): this worker can handle."""
    directory = os.environ.get(READY_ENV)
    if directory:
        with open(os.path.join(directory, str(os.getpid())), "w"):
            pass


class Reporting:
    """Base of the handlers: ``setup()`` marks the worker ready, ``teardown()`` reports."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.cpu0 = 0.0

    def setup(self) -> None:
        self.count = 0
        self.cpu0 = time.process_time()
        mark_ready()

    def teardown(self) -> None:
        report_count(self.count, self.last, time.process_time() - self.cpu0)


class Count(Reporting):
    """Counts records and notes when it handled the last one; reports both on teardown."""

    def handle(self, data: bytes) -> None:
        self.count += 1
        self.last = monotonic()


class JsonCount(Count):
    """Decodes each record into ``Record``, counts; reports the count on teardown."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = make_decoder()

    def handle(self, data: bytes) -> None:
        self.decoder.decode(data)
        super().handle(data)


class JsonStruct(Reporting):
    """Takes each record decoded by ugram into ``Record`` (``--codec json``), counts."""

    def handle(self, msg: Record) -> None:
        self.count += 1
        self.last = monotonic()


class BatchCount(Reporting):
    """``Count`` as a batch handler: counts each batch's records."""

    def handle_batch(self, messages: list[bytes]) -> None:
        self.count += len(messages)
        self.last = monotonic()


class BatchJsonStruct(Reporting):
    """``JsonStruct`` as a batch handler: ugram decodes each record into ``Record``."""

    def handle_batch(self, messages: list[Record]) -> None:
        self.count += len(messages)
        self.last = monotonic()


class CpuCount(Count):
    """Runs ``cpu_work`` on each record (~50 µs), counts; reports the count on teardown."""

    def __init__(self) -> None:
        super().__init__()
        self.iters = cpu_iters()

    def handle(self, data: bytes) -> None:
        cpu_work(data, self.iters)
        super().handle(data)


class Latency(Reporting):
    """Records receive→handler (and send→handler) latency in ns for every record.

    On teardown it writes, into ``$UGBENCH_LAT_DIR`` (if set), ``<pid>.recv`` and
    ``<pid>.send`` (raw native int64 arrays, for exact percentiles across workers), and
    reports its count like ``Count``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recv_ns: array[int] = array("q")
        self.send_ns: array[int] = array("q")

    def handle(self, data: bytes, dgram: ugram.Datagram) -> None:
        now = time.time_ns()
        self.recv_ns.append(now - round(dgram.received_at * 1e9))
        if len(data) >= 8:
            sent = int.from_bytes(data[:8], "little")
            if sent > SEND_STAMP_MIN:
                self.send_ns.append(now - sent)
        self.count += 1
        self.last = monotonic()

    def teardown(self) -> None:
        directory = os.environ.get(LATENCY_DIR_ENV)
        if directory:
            base = os.path.join(directory, str(os.getpid()))
            for suffix, values in (("recv", self.recv_ns), ("send", self.send_ns)):
                with open(f"{base}.{suffix}", "wb") as f:
                    values.tofile(f)
        super().teardown()

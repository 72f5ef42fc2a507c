"""The supervisor's consumer of the workers' export rings: the statsd exposition.

Where the server serves ``/metrics``, each worker slot has an export ring
(:class:`~ugram.supervisor.resources.Resources`) that a ``StatsdAggregator`` worker
publishes its batches' deltas into; this thread applies them to one
:class:`~ugram.builtin.export.state.Exposition`, then notes the last one applied and
acknowledges it (in that order: see :func:`~ugram.builtin.export.publish.committed`), and
drops expired series. The workers keep nothing that a SIGKILL could take: a batch's delta
is in the ring before its records are acknowledged, and its records are skipped when
replayed (:mod:`ugram.builtin.export.wire`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from ..builtin.export import render
from ..builtin.export.publish import write_note
from ..builtin.export.state import Exposition
from ..errors import RingCorruptError
from ..ring import Ring

log = logging.getLogger("ugram.supervisor")

POLL = 0.02  # seconds between looks at idle rings
EXPIRE_EVERY = 1.0  # seconds between TTL sweeps
BATCH = 256  # records taken from one ring at a time


class ExportConsumer:
    """Applies every export ring's records in a daemon thread; a prometheus-client
    collector of the result."""

    def __init__(self, rings: list[Ring]) -> None:
        self.rings = rings
        self.state = Exposition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broken: set[int] = set()

    def start(self) -> None:
        """Start consuming."""
        self._thread = threading.Thread(target=self._run, name="ugram-exports", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop consuming (before the rings are unmapped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def collect(self) -> Iterator[Metric]:
        """The exposed families (prometheus-client's collector protocol)."""
        yield from render.families(self.state, time.time_ns())

    def _run(self) -> None:
        next_expiry = time.monotonic() + EXPIRE_EVERY
        while not self._stop.is_set():
            busy = self.drain()
            if time.monotonic() >= next_expiry:
                if self.state.expires():
                    self.state.expire(time.time_ns())
                next_expiry = time.monotonic() + EXPIRE_EVERY
            if not busy:
                self._stop.wait(POLL)

    def drain(self) -> bool:
        """Apply what every ring holds now; True if anything was there."""
        busy = False
        for index, ring in enumerate(self.rings):
            if index not in self._broken:
                busy |= self._drain_one(index, ring)
        return busy

    def _drain_one(self, index: int, ring: Ring) -> bool:
        try:
            batch = ring.take_batch(BATCH)
        except RingCorruptError as exc:
            self._broken.add(index)
            ring.mark_corrupt()  # the worker's next put fails: counted as handler errors
            log.error("worker %d's export ring is corrupt (%s): no longer read", index, exc)
            return False
        if not batch:
            return False
        noted = None
        for record, _ in batch:
            noted = self.state.apply(index, record.payload) or noted
        if noted is not None:
            write_note(ring, noted)
        ring.finish(batch[-1][1])
        return True

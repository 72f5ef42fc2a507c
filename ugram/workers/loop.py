"""The worker process: take records from its ring, run the handler, acknowledge.

The tail is advanced (acknowledged) only after the handler returned or raised, so a worker
killed mid-record leaves that record for its replacement: at-least-once delivery.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import time

import setproctitle

from .. import logs
from ..datagram import Datagram
from ..errors import EXIT_HANDLER_IMPORT, EXIT_WORKER_BOOT, HandlerImportError
from ..ring import Record, Ring
from ..spec import ChildSpec, parent_alive, spec_from_argv
from ..stats import Slot, State, Stats
from ..wake import clear_wake, signal_wake
from .handler import DECODE_ERRORS, Handler, load_handler

log = logging.getLogger("ugram.worker")

SLEEP_TIMEOUT = 0.05  # bounded sleep: a lost wake-up costs at most this much latency
SPINS = 200  # empty polls before going to sleep


class Worker:
    """Runs the handler over one ring until the receiver closes it and it is empty."""

    def __init__(self, spec: ChildSpec, handler: Handler) -> None:
        self.index = spec.index
        self.handler = handler
        self.ring = Ring(spec.ring_fds[0])
        self.wake_fd = spec.wake_fds[0]
        self.space_fd = spec.space_fd
        self.sock = socket.socket(fileno=spec.socket_fd) if handler.wants_datagram else None
        self.counters = Stats(spec.stats_fd).block(spec.stats_block)
        self._ppid = os.getppid()
        self._invalid = logs.RateLimited(log)
        self._errors = logs.RateLimited(log)

    def run(self) -> None:
        """Process records until drained; replays what a predecessor left in hand."""
        c = self.counters
        replayed = self.ring.rewind()
        if replayed:
            c[Slot.REPLAYED] += replayed
            log.warning("worker %d: replaying %d unacknowledged record(s)", self.index, replayed)
        c[Slot.PID] = os.getpid()
        c[Slot.STATE] = State.RUNNING
        try:
            self._loop()
        finally:
            c[Slot.STATE] = State.DRAINING
            if self.handler.teardown is not None:
                try:
                    self.handler.teardown()
                except Exception:
                    log.exception("worker %d: handler teardown() failed", self.index)
            c[Slot.STATE] = State.STOPPED

    def _loop(self) -> None:
        ring, c = self.ring, self.counters
        idle = 0
        while True:
            record = ring.take()
            if record is None:
                if ring.is_drained() or not parent_alive(self._ppid):
                    return
                idle += 1
                if idle > SPINS:
                    self._sleep()
                    idle = 0
                continue
            idle = 0
            c[Slot.PROGRESS] += 1
            c[Slot.BUSY_SINCE_NS] = time.monotonic_ns()
            self._process(record)
            c[Slot.BUSY_SINCE_NS] = 0
            if ring.ack():
                signal_wake(self.space_fd)

    def _process(self, record: Record) -> None:
        handler, c = self.handler, self.counters
        try:
            message = record.payload if handler.decode is None else handler.decode(record.payload)
        except DECODE_ERRORS as exc:
            c[Slot.INVALID] += 1
            self._invalid.warning("worker %d: undecodable datagram (%s)", self.index, exc)
            return
        try:
            if handler.mode == "data":
                handler.call(message)
            else:
                dgram = Datagram(
                    record.payload, record.recv_ns, record.address, self.sock, _creds(record)
                )
                if handler.mode == "dgram":
                    handler.call(dgram)
                else:
                    handler.call(message, dgram)
        except Exception:
            c[Slot.HANDLER_ERRORS] += 1
            self._errors.warning("worker %d: handler raised", self.index, exc_info=True)
        c[Slot.HANDLED] += 1

    def _sleep(self) -> None:
        ring = self.ring
        ring.set_sleeping(True)
        # Re-check after announcing the sleep: a record published in between is not missed.
        if not ring.has_unread() and not ring.is_drained():
            select.select([self.wake_fd], [], [], SLEEP_TIMEOUT)
            clear_wake(self.wake_fd)
        ring.set_sleeping(False)


def _creds(record: Record) -> tuple[int, int, int] | None:
    return None if record.uid == -1 and record.gid == -1 else (record.pid, record.uid, record.gid)


def main(argv: list[str]) -> int:
    """Worker process entry point: exit code 4 when the handler cannot be imported."""
    spec = spec_from_argv(argv)
    # The supervisor coordinates shutdown: Ctrl-C and SIGTERM sent to the whole process group
    # must not cut a worker off before the receiver has closed its ring and it is drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setproctitle.setproctitle(f"ugram: worker {spec.index}")
    logs.configure(spec.config.log_level, f"worker-{spec.index}")
    counters = Stats(spec.stats_fd).block(spec.stats_block)
    counters[Slot.STATE] = State.BOOTING
    try:
        handler = load_handler(spec.config)
    except HandlerImportError as exc:
        print(f"ugram: {exc}", file=sys.stderr)
        return EXIT_HANDLER_IMPORT
    worker = Worker(spec, handler)
    if handler.setup is not None:
        try:
            handler.setup()
        except Exception:
            log.exception("worker %d: handler setup() failed", spec.index)
            return EXIT_WORKER_BOOT
    worker.run()
    return 0

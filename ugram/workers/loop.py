"""The worker process: take records from its ring, run the handler, acknowledge.

The tail is advanced (acknowledged) only after the handler returned or raised, so a worker
killed mid-record leaves that record for its replacement: at-least-once delivery, with at
most one duplicate per killed worker (the record it had in hand). How a batch reaches the
handler, and how it is counted, is in :mod:`ugram.workers.dispatch`; when a worker retires
itself, in :mod:`ugram.workers.recycling`. This module keeps the loop around them: replay
after a predecessor's death, liveness, sleeping on an empty ring, and the process's entry.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import signal
import socket
import sys
import time

import setproctitle

from .. import context, handler_stats, logs, speedups
from ..errors import EXIT_HANDLER_IMPORT, EXIT_WORKER_BOOT, HandlerImportError, RingCorruptError
from ..ring import ATTEMPTS, CORRUPT, IN_HAND, RESETS, Ring, mark_corrupt_fd, note_cost
from ..spec import ChildSpec, parent_alive, spec_from_argv
from ..stats import COMMAND_RETIRE, JOURNALED, Slot, State, Stats
from ..wake import clear_wake, signal_wake
from .deadletter import write_dead_letter
from .dispatch import Dispatcher
from .handler import Handler, load_handler
from .recycling import Recycler
from .standby import called_off, stand_by

log = logging.getLogger("ugram.worker")

SLEEP_TIMEOUT = 0.05  # bounded sleep: a lost wake-up costs at most this much latency
SLEEP_TIMEOUT_MS = round(SLEEP_TIMEOUT * 1000)
# Empty polls before sleeping. Spinning only pays where a core is free for it: on two cores
# a spinning worker takes the CPU the receiver and the senders need.
SPINS = 100 if len(os.sched_getaffinity(0)) > 2 else 0
_COMMAND, _CORRUPT = int(Slot.COMMAND), CORRUPT
COST_EVERY = 8  # batches: one in so many is timed for the receiver's placement (note_cost)


class Worker:
    """Runs the handler over one ring until the receiver closes it and it is empty."""

    def __init__(self, spec: ChildSpec, handler: Handler) -> None:
        self.index = spec.index
        self.config = spec.config
        self.handler = handler
        self.ring = Ring(spec.ring_fds[0], use_speedups=self.config.speedups)
        self.wake_fd = spec.wake_fds[0]
        # poll(), not select(): an embedding application with many open files hands its
        # children fds numbered past FD_SETSIZE (1024), which select() refuses.
        self._waker = select.poll()
        self._waker.register(self.wake_fd, select.POLLIN)
        self.space_fd = spec.space_fd
        self.counters = Stats(spec.stats_fd).block(spec.stats_block)
        self.recycler = Recycler(self.index, self.config)
        self.dispatcher = Dispatcher(
            self.index,
            handler,
            self.ring,
            self.counters,
            self.recycler,
            speedups.native(self.config.speedups),
            socket.socket(fileno=spec.socket_fd) if handler.wants_datagram else None,
            self.config.allow_abstract_replies,
        )
        self.careful_until = 0
        self.ring_corrupt = False  # found corrupt here: marked, and this worker stops
        self._ppid = os.getppid()
        self._spec = spec

    def attach(self) -> None:
        """Take the slot's shared state (after ``setup()``; a SIGHUP replacement once it
        took over): the handlers' counters block, and what names this slot's records."""
        spec = self._spec
        if spec.handler_stats_fd >= 0:
            handler_stats.bind(handler_stats.Table(spec.handler_stats_fd).block(self.index))
        context.bind_worker(
            self.index, spec.server_id, self.counters, self.ring.used_bytes, self.ring.set_shedding
        )
        context.bind_ring(lambda: int(self.ring.ctl[RESETS]))
        if spec.server_id:
            # Read once: the ring is reset (positions from 0 again) only with no worker on it.
            self.dispatcher.origin = f"{spec.server_id}-{self.index}-{int(self.ring.ctl[RESETS])}"

    def recover(self) -> None:
        """Settle a dead predecessor's counts, replay what it left unacknowledged, and
        quarantine the tail record if it is poison. A corrupt ring is marked, not raised."""
        try:
            self._recover()
        except RingCorruptError as exc:
            self._give_up_ring(exc)

    def _recover(self) -> None:
        self.ring.settle_journal(self.counters, JOURNALED)
        attempts = self.ring.note_failed_attempt()
        if attempts:
            self.careful_until = int(self.ring.ctl[IN_HAND])
        replayed = self.ring.rewind()
        if replayed > 1:
            # The predecessor died holding a whole batch: the tail record is not known to be
            # the culprit. Blame no one yet; careful mode goes one record at a time, so the
            # next death (if any) is pinned on the record that causes it.
            self.ring.ctl[ATTEMPTS] -= 1
            attempts = 0
        if attempts >= self.config.poison_attempts:
            self._quarantine(attempts)
            replayed -= 1
        if replayed:
            self.counters[Slot.REPLAYED] += replayed
            log.warning("worker %d: replaying %d unacknowledged record(s)", self.index, replayed)

    def _quarantine(self, attempts: int) -> None:
        record = self.ring.take()
        assert record is not None  # the predecessor had it in hand
        reason = f"the worker died {attempts} times handling it"
        path = self.config.dead_letter_path
        try:
            write_dead_letter(path, record, reason, attempts, self.config.dead_letter_max_bytes)
            log.error(
                "worker %d: moved a %d-byte poison record to %s (%s)",
                self.index,
                len(record.payload),
                path,
                reason,
            )
        except OSError as exc:
            log.error(
                "worker %d: dropped a poison record (%s); dead-letter file %s: %s",
                self.index,
                reason,
                path,
                exc,
            )
        self.counters[Slot.QUARANTINED] += 1
        self._ack()

    def run(self) -> None:
        """Process records until drained, retired, recycled, or orphaned; then teardown."""
        c = self.counters
        c[Slot.PID] = os.getpid()
        c[Slot.HEARTBEAT_NS] = time.monotonic_ns()
        c[Slot.STATE] = State.RUNNING
        try:
            if not self.ring_corrupt:
                self._loop()
        except RingCorruptError as exc:
            self._give_up_ring(exc)
        finally:
            c[Slot.STATE] = State.DRAINING
            if self.handler.teardown is not None:
                try:
                    self.handler.teardown()
                except Exception:
                    log.exception("worker %d: handler teardown() failed", self.index)
            c[Slot.STATE] = State.STOPPED

    def _give_up_ring(self, exc: RingCorruptError) -> None:
        """The ring is corrupt: mark it (the supervisor resets it once this worker is gone and
        starts a new one) and stop, instead of crashing and being restarted onto it."""
        self.ring.mark_corrupt()
        self.ring_corrupt = True
        log.error(
            "worker %d: its ring is corrupt (%s): exiting; the supervisor empties the ring "
            "(what it held is counted as lost) and starts a new worker",
            self.index,
            exc,
        )

    def _loop(self) -> None:
        ring, c, handler, ctl = self.ring, self.counters, self.handler, self.ring.ctl
        step, recycler, monotonic_ns = self.dispatcher.step, self.recycler, time.monotonic_ns
        next_tick = time.monotonic() + handler.tick_interval if handler.tick else float("inf")
        idle = batches = 0
        while True:
            if ctl[_CORRUPT]:  # marked by the receiver: exit; the supervisor resets the ring
                log.error("worker %d: its ring was found corrupt: exiting", self.index)
                return
            if c[_COMMAND] == COMMAND_RETIRE or (recycler.active and recycler.due()):
                return
            if handler.tick is not None and time.monotonic() >= next_tick:
                self.dispatcher.tick()
                next_tick = time.monotonic() + handler.tick_interval
            batch = ring.take_batch(self._batch_limit(), self.config.batch_bytes)
            if batch:
                idle = 0
                # The receiver places by it: how much this worker takes before it is behind.
                # Timed one batch in COST_EVERY, the first one included: it moves slowly.
                timed, batches = not batches % COST_EVERY, batches + 1
                started = monotonic_ns() if timed else 0
                done = step(batch)
                if timed:
                    note_cost(ring, monotonic_ns() - started, done)
                if ring.end_batch():
                    signal_wake(self.space_fd)
                if done < len(batch):
                    return  # retired or recycled mid-batch: the rest stays for the successor
                continue
            if ring.is_drained():
                return
            idle += 1
            if idle > SPINS:
                if not parent_alive(self._ppid):  # a syscall: only when about to sleep
                    return
                self._sleep()
                idle = 0

    def _batch_limit(self) -> int:
        # In records; take_batch bounds their payload bytes too (batch_bytes: what a batch
        # decodes into grows with its bytes, a 1-byte msgpack [] into a 56-byte list).
        # After a death in the middle of a batch, go one record at a time through what the
        # dead worker had taken: the record that kills is then the one counted as poison.
        if self.ring.read_position < self.careful_until:
            return 1
        return self.handler.batch_size or self.config.batch_size

    def _ack(self) -> None:
        if self.ring.ack():
            signal_wake(self.space_fd)

    def _sleep(self) -> None:
        ring = self.ring
        self.counters[Slot.HEARTBEAT_NS] = time.monotonic_ns()
        logs.flush_held()  # idle: a good moment to say what the rate limits held back
        ring.set_sleeping(True)
        # Re-check after announcing the sleep: a record published in between is not missed.
        if not ring.has_unread() and not ring.is_drained():
            self._waker.poll(SLEEP_TIMEOUT_MS)
            clear_wake(self.wake_fd)
        ring.set_sleeping(False)


def main(argv: list[str]) -> int:
    """Worker process entry point: exit code 4 when the handler cannot be imported."""
    spec = spec_from_argv(argv)
    # The supervisor coordinates shutdown: Ctrl-C and SIGTERM sent to the whole process group
    # must not cut a worker off before the receiver has closed its ring and it is drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The supervisor sends SIGUSR1 before killing a stuck worker: its traceback is logged.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    setproctitle.setproctitle(f"ugram: worker {spec.index}")
    logs.configure_from(spec.config, f"worker-{spec.index}", strict=False)
    ppid = os.getppid()
    standby = spec.standby_block >= 0  # a SIGHUP replacement: boots beside the old worker
    counters = Stats(spec.stats_fd).block(spec.standby_block if standby else spec.stats_block)
    counters[Slot.STATE] = State.BOOTING
    context.bind_export(spec.export_fd)  # the handler may ask at import whether there is one
    try:
        handler = load_handler(spec.config)
    except HandlerImportError as exc:
        print(f"ugram: {exc}", file=sys.stderr)
        return EXIT_HANDLER_IMPORT
    try:
        worker = Worker(spec, handler)
    except RingCorruptError as exc:  # its header overwritten: say so, as _give_up_ring does
        mark_corrupt_fd(spec.ring_fds[0])
        log.error("worker %d: its ring is corrupt (%s): exiting", spec.index, exc)
        return 0
    if handler.setup is not None:
        try:
            handler.setup()
        except Exception:
            log.exception("worker %d: handler setup() failed", spec.index)
            return EXIT_WORKER_BOOT
    if standby and not stand_by(counters, spec.index, ppid):
        called_off(handler, counters, spec.index)
        return 0
    worker.attach()
    worker.recover()
    try:
        worker.run()
    finally:
        logs.flush_held(final=True)
    return 0

"""The worker process: take records from its ring, run the handler, acknowledge.

The tail is advanced (acknowledged) only after the handler returned or raised, so a worker
killed mid-record leaves that record for its replacement: at-least-once delivery, with at
most one duplicate per killed worker (the record it had in hand).

Counting. A record's counts (handled, handler errors, invalid, the ring's ACKED) go first to
the ring's journal, then the tail is stored, then the counts are copied from the journal; a
replacement settles them from the journal (:meth:`ugram.ring.Ring.settle_journal` says why
that is exact under a SIGKILL between any two stores). ``_process`` and the C helper's loops
count into the journal, never into the counters directly.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import select
import signal
import socket
import sys
import time
from typing import Any

import psutil
import setproctitle

from .. import logs, speedups
from ..config import Config
from ..datagram import Datagram
from ..errors import EXIT_HANDLER_IMPORT, EXIT_WORKER_BOOT, HandlerImportError, RingCorruptError
from ..escaping import printable
from ..ring import (
    ACKED,
    ATTEMPTS,
    CORRUPT,
    IN_HAND,
    J_ACKED,
    J_ERRORS,
    J_HANDLED,
    J_INVALID,
    JOURNAL,
    TAIL,
    Record,
    Ring,
    mark_corrupt_fd,
)
from ..spec import ChildSpec, parent_alive, spec_from_argv
from ..stats import (
    COMMAND_RETIRE,
    JOURNALED,
    LATENCY_BUCKETS,
    LATENCY_FIRST,
    LATENCY_SUM_NS,
    Slot,
    State,
    Stats,
    observe_latency,
)
from ..wake import clear_wake, signal_wake
from .deadletter import write_dead_letter
from .handler import DECODE_ERRORS, Handler, load_handler
from .standby import called_off, stand_by

log = logging.getLogger("ugram.worker")

SLEEP_TIMEOUT = 0.05  # bounded sleep: a lost wake-up costs at most this much latency
SLEEP_TIMEOUT_MS = round(SLEEP_TIMEOUT * 1000)
# Empty polls before sleeping. Spinning only pays where a core is free for it: on two cores
# a spinning worker takes the CPU the receiver and the senders need.
SPINS = 100 if len(os.sched_getaffinity(0)) > 2 else 0
# Plain ints for the hot path: indexing with an IntEnum member costs an __index__ call.
_COMMAND, _PROGRESS, _BUSY_SINCE_NS = int(Slot.COMMAND), int(Slot.PROGRESS), int(Slot.BUSY_SINCE_NS)
_HANDLED, _HANDLER_ERRORS, _INVALID = int(Slot.HANDLED), int(Slot.HANDLER_ERRORS), int(Slot.INVALID)
# Memory is checked once at least this many records, or this long, passed since the last
# check (psutil costs ~20 µs): a batch handler or the C loop moves the record count in steps,
# so "a multiple of N" would rarely be hit exactly.
RSS_CHECK_EVERY = 1024
RSS_CHECK_SECONDS = 1.0
_J_ACKED, _J_HANDLED, _J_ERRORS, _J_INVALID = J_ACKED, J_HANDLED, J_ERRORS, J_INVALID
_CORRUPT = CORRUPT
_SETTLED = tuple(zip(JOURNALED, JOURNAL, strict=True))  # (counter, its journal slot)
# The counter slots the C helper's record loop writes (ugram/_speedups.c: run_records).
_NATIVE_SLOTS = (
    _COMMAND,
    COMMAND_RETIRE,
    _PROGRESS,
    _BUSY_SINCE_NS,
    _HANDLED,
    _HANDLER_ERRORS,
    _INVALID,
    LATENCY_FIRST,
    LATENCY_BUCKETS,
    LATENCY_SUM_NS,
)
_LATENCY_SLOTS = (LATENCY_FIRST, LATENCY_BUCKETS, LATENCY_SUM_NS)  # and its observe_batch


class Worker:
    """Runs the handler over one ring until the receiver closes it and it is empty."""

    def __init__(self, spec: ChildSpec, handler: Handler) -> None:
        self.index = spec.index
        self.config: Config = spec.config
        self.handler = handler
        self.ring = Ring(spec.ring_fds[0], use_speedups=self.config.speedups)
        self.ctl = self.ring.ctl  # the ring's control block: in-hand, tail, the journal
        self._native = speedups.native(self.config.speedups)
        # What the C record loop calls: the handler itself for plain data handlers, else
        # _process (which builds the Datagram the handler wants).
        plain = handler.mode == "data"
        self._native_call = handler.call if plain else None
        self._native_decode = handler.decode if plain else None
        self.wake_fd = spec.wake_fds[0]
        # poll(), not select(): an embedding application with many open files hands its
        # children fds numbered past FD_SETSIZE (1024), which select() refuses.
        self._waker = select.poll()
        self._waker.register(self.wake_fd, select.POLLIN)
        self.space_fd = spec.space_fd
        self.sock = socket.socket(fileno=spec.socket_fd) if handler.wants_datagram else None
        self.counters = Stats(spec.stats_fd).block(spec.stats_block)
        self.record_limit = _jittered(self.config.max_records)
        self.careful_until = 0
        self.recycling = bool(self.record_limit or self.config.max_rss)
        self.records = 0
        self.ring_corrupt = False  # found corrupt here: marked, and this worker stops
        self._rss_checked_at = 0  # records, and monotonic time, of the last memory check
        self._rss_checked_time = time.monotonic()
        self._ppid = os.getppid()
        self._invalid = logs.RateLimited(log)
        self._errors = logs.RateLimited(log)

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
        ring, c, handler, ctl = self.ring, self.counters, self.handler, self.ctl
        step = self._batch_step if handler.batch else self._record_step
        next_tick = time.monotonic() + handler.tick_interval if handler.tick else float("inf")
        idle = 0
        while True:
            if ctl[_CORRUPT]:  # marked by the receiver: exit; the supervisor resets the ring
                log.error("worker %d: its ring was found corrupt: exiting", self.index)
                return
            if c[_COMMAND] == COMMAND_RETIRE or (self.recycling and self._recycle_due()):
                return
            if handler.tick is not None and time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + handler.tick_interval
            batch = ring.take_batch(self._batch_limit(), self.config.batch_bytes)
            if batch:
                idle = 0
                done = step(batch)
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
        return self.config.batch_size

    def _record_step(self, batch: list[tuple[Record, int]]) -> int:
        """One handler call per record, each bracketed by in-hand and acknowledge stores.

        Returns how many records were handled: fewer than the batch when the worker was
        told to retire or is due for recycling (checked before each record).
        """
        if self._native is not None:
            return self._native_record_step(batch)
        ctl, c, process, recycling = self.ctl, self.counters, self._process, self.recycling
        monotonic_ns, time_ns = time.monotonic_ns, time.time_ns
        acked = int(ctl[ACKED])
        done = 0
        for record, end in batch:
            if done and (c[_COMMAND] == COMMAND_RETIRE or (recycling and self._recycle_due())):
                break
            ctl[IN_HAND] = end
            c[_PROGRESS] += 1
            c[_BUSY_SINCE_NS] = monotonic_ns()
            rare = process(record)  # counted in the journal
            observe_latency(c, time_ns() - record.recv_ns)
            acked += 1
            ctl[_J_ACKED] = acked
            ctl[TAIL] = end  # acknowledged: never replayed; then the counts, from the journal
            ctl[ACKED] = acked
            c[_HANDLED] = ctl[_J_HANDLED]
            if rare:
                c[_HANDLER_ERRORS] = ctl[_J_ERRORS]
                c[_INVALID] = ctl[_J_INVALID]
            done += 1
            self.records += 1
        c[_BUSY_SINCE_NS] = 0
        if done < len(batch):
            self.ring.rewind_to(int(ctl[TAIL]))
        return done

    def _native_record_step(self, batch: list[tuple[Record, int]]) -> int:
        """:meth:`_record_step` with the loop in the C helper (same stores, same order)."""
        assert self._native is not None
        c, run = self.counters, self._native.run_records
        done, total = 0, len(batch)
        while True:
            handled: int = run(
                batch[done:] if done else batch,
                self.ctl,
                c,
                _NATIVE_SLOTS,
                self._process,
                self._native_call,
                self._native_decode,
                DECODE_ERRORS,
                self._report_invalid,
                self._report_error,
                self._allowance(),
            )
            done += handled
            self.records += handled
            if done == total or c[_COMMAND] == COMMAND_RETIRE:
                break
            if self.recycling and self._recycle_due():
                break
        c[_BUSY_SINCE_NS] = 0
        if done < total:
            self.ring.rewind_to(int(self.ctl[TAIL]))
        return done

    def _allowance(self) -> int:
        """Records the C loop may handle before the recycling limits must be looked at."""
        if not self.recycling:
            return sys.maxsize
        room = sys.maxsize
        if self.record_limit:
            room = min(room, self.record_limit - self.records)
        if self.config.max_rss:
            room = min(room, RSS_CHECK_EVERY - (self.records - self._rss_checked_at))
        return max(1, room)

    def _report_invalid(self, exc: BaseException) -> None:
        # msgspec's message may quote the payload (an unknown field's name): escaped.
        self._invalid.warning(
            "worker %d: undecodable datagram (%s)", self.index, printable(str(exc))
        )

    def _report_error(self, exc: BaseException) -> None:
        self._errors.warning("worker %d: handler raised", self.index, exc_info=exc)

    def _batch_step(self, batch: list[tuple[Record, int]]) -> int:
        """One handle_batch call for the whole batch, acknowledged together."""
        c, ctl, handler, end = self.counters, self.ctl, self.handler, batch[-1][1]
        self.ring.start(end)
        c[Slot.PROGRESS] += len(batch)
        c[Slot.BUSY_SINCE_NS] = time.monotonic_ns()
        messages, dgrams = self._decode_batch(batch)  # the invalid ones counted in the journal
        if messages:
            try:
                if handler.mode == "both":
                    handler.call(messages, dgrams)
                else:
                    handler.call(messages)
            except Exception:
                ctl[_J_ERRORS] += len(messages)
                self._errors.warning("worker %d: batch handler raised", self.index, exc_info=True)
            ctl[_J_HANDLED] += len(messages)
        now = time.time_ns()
        if self._native is not None:
            self._native.observe_batch(batch, now, c, _LATENCY_SLOTS)
        else:
            for record, _ in batch:
                observe_latency(c, now - record.recv_ns)
        ctl[_J_ACKED] = acked = int(ctl[ACKED]) + len(batch)
        self.ring.finish(end)  # acknowledged; then the counts, from the journal
        ctl[ACKED] = acked
        for slot, journal in _SETTLED:
            c[slot] = ctl[journal]
        c[Slot.BUSY_SINCE_NS] = 0
        self.records += len(batch)
        return len(batch)

    def _decode_batch(self, batch: list[tuple[Record, int]]) -> tuple[list[Any], list[Datagram]]:
        """The messages of a batch (undecodable ones counted and left out), and with
        ``mode == "both"`` their Datagrams."""
        handler = self.handler
        make = self._datagram if handler.mode == "both" else None
        if self._native is not None:
            decoded: tuple[list[Any], list[Datagram]] = self._native.decode_batch(
                batch,
                handler.decode,
                DECODE_ERRORS,
                self._report_invalid,
                make,
                self.ctl,
                _J_INVALID,
            )
            return decoded
        messages: list[Any] = []
        dgrams: list[Datagram] = []
        for record, _ in batch:
            try:
                message = (
                    record.payload if handler.decode is None else handler.decode(record.payload)
                )
            except DECODE_ERRORS as exc:
                self.ctl[_J_INVALID] += 1
                self._report_invalid(exc)
                continue
            messages.append(message)
            if make is not None:
                dgrams.append(make(record))
        return messages, dgrams

    def _tick(self) -> None:
        assert self.handler.tick is not None
        try:
            self.handler.tick()
        except Exception:
            self._errors.warning("worker %d: handler tick() raised", self.index, exc_info=True)

    def _ack(self) -> None:
        if self.ring.ack():
            signal_wake(self.space_fd)

    def _recycle_due(self) -> bool:
        if self.record_limit and self.records >= self.record_limit:
            log.info("worker %d: recycling after %d records", self.index, self.records)
            return True
        if self.config.max_rss and self._rss_check_due():
            self._rss_checked_at, self._rss_checked_time = self.records, time.monotonic()
            rss = psutil.Process().memory_info().rss
            if rss > self.config.max_rss * 1024 * 1024:
                log.info(
                    "worker %d: recycling at %d MiB resident after %d records",
                    self.index,
                    rss >> 20,
                    self.records,
                )
                return True
        return False

    def _rss_check_due(self) -> bool:
        since = self.records - self._rss_checked_at
        if since >= RSS_CHECK_EVERY:
            return True
        return since > 0 and time.monotonic() - self._rss_checked_time >= RSS_CHECK_SECONDS

    def _process(self, record: Record) -> bool:
        """Decode and handle one record, counting it in the journal (not the counters).

        Returns:
            True when it was counted as invalid or as a handler error, not only as handled.
        """
        handler, ctl = self.handler, self.ctl
        try:
            message = record.payload if handler.decode is None else handler.decode(record.payload)
        except DECODE_ERRORS as exc:
            ctl[_J_INVALID] += 1
            self._report_invalid(exc)
            return True
        try:
            if handler.mode == "data":
                handler.call(message)
            else:
                dgram = self._datagram(record)
                if handler.mode == "dgram":
                    handler.call(dgram)
                else:
                    handler.call(message, dgram)
        except Exception:
            ctl[_J_ERRORS] += 1
            ctl[_J_HANDLED] += 1
            self._errors.warning("worker %d: handler raised", self.index, exc_info=True)
            return True
        ctl[_J_HANDLED] += 1
        return False

    def _datagram(self, record: Record) -> Datagram:
        return Datagram(
            record.payload,
            record.recv_ns,
            record.address,
            self.sock,
            _creds(record),
            self._count_reply_error,
            allow_abstract=self.config.allow_abstract_replies,
        )

    def _count_reply_error(self) -> None:
        self.counters[Slot.REPLY_ERRORS] += 1

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


def _jittered(limit: int) -> int:
    # Up to 10% more, so workers started together do not all recycle at the same moment.
    return limit + random.randint(0, limit // 10) if limit else 0


def _creds(record: Record) -> tuple[int, int, int] | None:
    return None if record.uid == -1 and record.gid == -1 else (record.pid, record.uid, record.gid)


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
    worker.recover()
    try:
        worker.run()
    finally:
        logs.flush_held(final=True)
    return 0

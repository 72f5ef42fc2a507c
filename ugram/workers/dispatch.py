"""Handing the records a worker took from its ring to the handler, and acknowledging them.

Counting. A record's counts (handled, handler errors, invalid, the ring's ACKED) go first to
the ring's journal, then the tail is stored, then the counts are copied from the journal; a
replacement settles them from the journal (:meth:`ugram.ring.Ring.settle_journal` says why
that is exact under a SIGKILL between any two stores). :meth:`Dispatcher.process` and the C
helper's loops count into the journal, never into the counters directly.

The control block is read from ``ring.ctl`` at each step, never kept: a test may watch it by
putting a wrapper there (tests/apps/killpoints.py).
"""

from __future__ import annotations

import logging
import socket
import time
from types import ModuleType
from typing import Any

from .. import context, logs
from ..datagram import Datagram
from ..escaping import printable
from ..ring import (
    ACKED,
    IN_HAND,
    J_ACKED,
    J_ERRORS,
    J_HANDLED,
    J_INVALID,
    JOURNAL,
    TAIL,
    Record,
    Ring,
)
from ..stats import (
    COMMAND_RETIRE,
    JOURNALED,
    LATENCY_BUCKETS,
    LATENCY_FIRST,
    LATENCY_SUM_NS,
    Slot,
    observe_latency,
)
from .handler import DECODE_ERRORS, Handler
from .recycling import Recycler

log = logging.getLogger("ugram.worker")

Batch = list[tuple[Record, int]]  # what Ring.take_batch returns: (record, its end)

# Plain ints for the hot path: indexing with an IntEnum member costs an __index__ call.
_COMMAND, _PROGRESS, _BUSY_SINCE_NS = int(Slot.COMMAND), int(Slot.PROGRESS), int(Slot.BUSY_SINCE_NS)
_HEARTBEAT_NS = int(Slot.HEARTBEAT_NS)
_HANDLED, _HANDLER_ERRORS, _INVALID = int(Slot.HANDLED), int(Slot.HANDLER_ERRORS), int(Slot.INVALID)
_J_ACKED, _J_HANDLED, _J_ERRORS, _J_INVALID = J_ACKED, J_HANDLED, J_ERRORS, J_INVALID
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


def _batch_done(counters: memoryview) -> None:
    """No batch in hand any more: say so, and that the worker is alive at this moment.

    The heartbeat first: between two batches the watchdog judges a worker by its progress
    counter and heartbeat, and after a batch that took long on purpose (``keep_alive``,
    e.g. waiting out a broker outage) both are older than worker_timeout; without a fresh
    beat it would be killed as frozen in the instant before it takes the next batch.
    """
    counters[_HEARTBEAT_NS] = time.monotonic_ns()
    counters[_BUSY_SINCE_NS] = 0


class Dispatcher:
    """Runs the handler over the batches a worker takes: one call per record, or one
    ``handle_batch`` call per batch; counts in the journal and acknowledges."""

    def __init__(
        self,
        index: int,
        handler: Handler,
        ring: Ring,
        counters: memoryview,
        recycler: Recycler,
        native: ModuleType | None,
        reply_sock: socket.socket | None,
        allow_abstract_replies: bool,
    ) -> None:
        self.index = index
        self.handler = handler
        self.ring = ring
        self.counters = counters
        self.recycler = recycler
        self._native = native
        self._sock = reply_sock
        self._allow_abstract = allow_abstract_replies
        # What the C record loop calls: the handler itself for plain data handlers, else
        # process (which builds the Datagram the handler wants).
        plain = handler.mode == "data"
        self._native_call = handler.call if plain else None
        self._native_decode = handler.decode if plain else None
        # What a batch handler gets beside each message: a Datagram, the record, or nothing.
        self._beside = {"both": self.datagram, "record": _same}.get(handler.mode)
        self._invalid = logs.RateLimited(log)
        self._errors = logs.RateLimited(log)
        # Datagram.id: "<server>-<slot>-<ring resets>"; set by the worker once it owns the
        # ring. A batch's positions, by record, while datagrams are made for it.
        self.origin: str | None = None
        self._positions: dict[int, int] | None = None
        self.step = self.batch_step if handler.batch else self.record_step

    def record_step(self, batch: Batch) -> int:
        """One handler call per record, each bracketed by in-hand and acknowledge stores.

        Returns how many records were handled: fewer than the batch when the worker was
        told to retire or is due for recycling (checked before each record).
        """
        if self._native is not None:
            return self._native_record_step(batch)
        ctl, c, process, recycler = self.ring.ctl, self.counters, self.process, self.recycler
        recycling, due = recycler.active, recycler.due
        monotonic_ns, time_ns = time.monotonic_ns, time.time_ns
        acked = int(ctl[ACKED])
        done = 0
        for record, end in batch:
            if done and (c[_COMMAND] == COMMAND_RETIRE or (recycling and due())):
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
            recycler.records += 1
        _batch_done(c)
        if done < len(batch):
            self.ring.rewind_to(int(ctl[TAIL]))
        return done

    def _native_record_step(self, batch: Batch) -> int:
        """:meth:`record_step` with the loop in the C helper (same stores, same order)."""
        assert self._native is not None
        c, ctl, run, recycler = (
            self.counters,
            self.ring.ctl,
            self._native.run_records,
            self.recycler,
        )
        done, total = 0, len(batch)
        while True:
            handled: int = run(
                batch[done:] if done else batch,
                ctl,
                c,
                _NATIVE_SLOTS,
                self.process,
                self._native_call,
                self._native_decode,
                DECODE_ERRORS,
                self._report_invalid,
                self._report_error,
                recycler.allowance(),
            )
            done += handled
            recycler.records += handled
            if done == total or c[_COMMAND] == COMMAND_RETIRE:
                break
            if recycler.active and recycler.due():
                break
        _batch_done(c)
        if done < total:
            self.ring.rewind_to(int(ctl[TAIL]))
        return done

    def batch_step(self, batch: Batch) -> int:
        """One handle_batch call for the whole batch, acknowledged together."""
        c, ctl, handler, end = self.counters, self.ring.ctl, self.handler, batch[-1][1]
        self.ring.start(end)
        c[Slot.PROGRESS] += len(batch)
        c[Slot.BUSY_SINCE_NS] = time.monotonic_ns()
        if handler.mode == "both" and self.origin is not None:
            self._positions = {id(record): at for record, at in batch}
        try:
            messages, dgrams = self.decode_batch(batch)  # the invalid counted in the journal
        finally:
            self._positions = None
        if messages:
            context.hand_over(batch)
            try:
                if handler.mode == "data":
                    handler.call(messages)
                else:
                    handler.call(messages, dgrams)
            except Exception:
                ctl[_J_ERRORS] += len(messages)
                self._errors.warning("worker %d: batch handler raised", self.index, exc_info=True)
            ctl[_J_HANDLED] += len(messages)
        self._observe_batch(batch)
        ctl[_J_ACKED] = acked = int(ctl[ACKED]) + len(batch)
        self.ring.finish(end)  # acknowledged; then the counts, from the journal
        ctl[ACKED] = acked
        for slot, journal in _SETTLED:
            c[slot] = ctl[journal]
        _batch_done(c)
        self.recycler.records += len(batch)
        return len(batch)

    def _observe_batch(self, batch: Batch) -> None:
        """Each record's latency, from its receipt to the end of the handler call."""
        now, c = time.time_ns(), self.counters
        if self._native is not None:
            self._native.observe_batch(batch, now, c, _LATENCY_SLOTS)
        else:
            for record, _ in batch:
                observe_latency(c, now - record.recv_ns)

    def decode_batch(self, batch: Batch) -> tuple[list[Any], list[Any]]:
        """The messages of a batch (undecodable ones counted and left out), and with
        ``mode == "both"`` their Datagrams, with ``"record"`` their records."""
        handler, ctl = self.handler, self.ring.ctl
        make = self._beside
        if self._native is not None:
            decoded: tuple[list[Any], list[Any]] = self._native.decode_batch(
                batch,
                handler.decode,
                DECODE_ERRORS,
                self._report_invalid,
                make,
                ctl,
                _J_INVALID,
            )
            return decoded
        messages: list[Any] = []
        dgrams: list[Any] = []
        for record, _ in batch:
            try:
                message = (
                    record.payload if handler.decode is None else handler.decode(record.payload)
                )
            except DECODE_ERRORS as exc:
                ctl[_J_INVALID] += 1
                self._report_invalid(exc)
                continue
            messages.append(message)
            if make is not None:
                dgrams.append(make(record))
        return messages, dgrams

    def tick(self) -> None:
        """Call the handler's ``tick()``; what it raises is logged, never fatal."""
        assert self.handler.tick is not None
        try:
            self.handler.tick()
        except Exception:
            self._errors.warning("worker %d: handler tick() raised", self.index, exc_info=True)

    def process(self, record: Record) -> bool:
        """Decode and handle one record, counting it in the journal (not the counters).

        Returns:
            True when it was counted as invalid or as a handler error, not only as handled.
        """
        handler, ctl = self.handler, self.ring.ctl
        try:
            message = record.payload if handler.decode is None else handler.decode(record.payload)
        except DECODE_ERRORS as exc:
            ctl[_J_INVALID] += 1
            self._report_invalid(exc)
            return True
        try:
            if handler.mode == "data":
                handler.call(message)
            elif handler.mode == "record":
                handler.call(message, record)
            else:
                dgram = self.datagram(record)
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

    def datagram(self, record: Record) -> Datagram:
        """The :class:`Datagram` a handler receives for ``record`` (the record in hand, or
        one of the batch being decoded)."""
        positions = self._positions
        end = positions[id(record)] if positions is not None else int(self.ring.ctl[IN_HAND])
        return Datagram(
            record.payload,
            record.recv_ns,
            record.address,
            self._sock,
            _creds(record),
            self._count_reply_error,
            allow_abstract=self._allow_abstract,
            origin=self.origin,
            position=end,
        )

    def _count_reply_error(self) -> None:
        self.counters[Slot.REPLY_ERRORS] += 1

    def _report_invalid(self, exc: BaseException) -> None:
        # msgspec's message may quote the payload (an unknown field's name): escaped.
        self._invalid.warning(
            "worker %d: undecodable datagram (%s)", self.index, printable(str(exc))
        )

    def _report_error(self, exc: BaseException) -> None:
        self._errors.warning("worker %d: handler raised", self.index, exc_info=exc)


def _same(record: Record) -> Record:
    return record  # a "record" handler's second argument: no object a record


def _creds(record: Record) -> tuple[int, int, int] | None:
    return None if record.uid == -1 and record.gid == -1 else (record.pid, record.uid, record.gid)

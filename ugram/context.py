"""What a handler may know of the worker that runs it, and tell it.

A handler that waits on purpose inside ``handle_batch`` (``ugram.forward`` waiting for a
broker's acknowledgements during an outage) calls :func:`keep_alive` while it waits, so that
the liveness check (``worker_timeout``) does not take it for a handler stuck on a record and
kill it: a replacement would only replay the batch and wait again, and after
``poison_attempts`` deaths the record would be moved to the dead-letter file. Outside a
worker (a test calling the handler directly) every function here answers as for a worker
with nothing in its ring.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .stats import Slot

_BUSY = int(Slot.BUSY_SINCE_NS)


class _Worker:
    counters: memoryview | None = None
    backlog: Callable[[], int] | None = None
    set_shedding: Callable[[bool], None] | None = None
    index = -1
    server_id = ""
    ppid = 0
    export_fd = -1
    resets: Callable[[], int] | None = None
    batch: Sequence[tuple[Any, int]] = ()
    ends: dict[int, int] | None = None


_worker = _Worker()
_shedders: set[object] = set()
_shedders_lock = threading.Lock()


def bind_worker(
    index: int,
    server_id: str,
    counters: memoryview,
    backlog: Callable[[], int],
    set_shedding: Callable[[bool], None] | None = None,
) -> None:
    """Called once by the worker process before it handles records (not by handlers)."""
    _worker.index, _worker.server_id = index, server_id
    _worker.counters, _worker.backlog = counters, backlog
    _worker.ppid = os.getppid()
    with _shedders_lock:
        _worker.set_shedding = set_shedding
        if set_shedding is not None and _shedders:  # asked before the slot was ours
            set_shedding(True)


def bind_export(fd: int) -> None:
    """Called by the worker process before the handler is imported (not by handlers):
    ``fd`` is its slot's export ring (-1: none)."""
    _worker.export_fd = fd


def bind_ring(resets: Callable[[], int]) -> None:
    """Called by the worker once it owns its ring (not by handlers): ``resets`` reads it."""
    _worker.resets = resets


def hand_over(batch: Sequence[tuple[Any, int]]) -> None:
    """Called by the worker before each ``handle_batch`` (not by handlers): the ring's
    ``(record, end)`` pairs of the batch."""
    _worker.batch, _worker.ends = batch, None


def export_fd() -> int:
    """The shared-memory ring this worker slot publishes exposed metrics through, read by
    the supervisor that serves ``/metrics`` (:mod:`ugram.builtin.export`); -1 when the server
    serves no ``/metrics``, or outside a worker. Only the slot's current worker may write
    it: use it from ``handle_batch`` or ``tick``, never from ``setup`` (a SIGHUP
    replacement runs ``setup`` while the worker it replaces still writes)."""
    return _worker.export_fd


def record_end(record: object) -> int:
    """Where ``record`` (one of the batch ``handle_batch`` got) ends in this worker's ring:
    a byte position that only grows while the ring is not reset (see :func:`ring_resets`),
    and the same when the record is replayed. -1 outside a worker or for another record."""
    ends = _worker.ends
    if ends is None:
        ends = _worker.ends = {id(r): end for r, end in _worker.batch}
    return ends.get(id(record), -1)


def batch_end() -> int:
    """Where the batch ``handle_batch`` got ends in this worker's ring (its records that did
    not decode included); -1 outside a worker."""
    return _worker.batch[-1][1] if _worker.batch else -1


def ring_resets() -> int:
    """How many times this worker's ring was emptied for corruption (positions restart at 0
    after each); 0 outside a worker."""
    return _worker.resets() if _worker.resets is not None else 0


def keep_alive() -> None:
    """Say that the records in hand are still being worked on (call from the thread that
    runs the handler, at least every ``worker_timeout`` seconds while waiting)."""
    counters = _worker.counters
    if counters is not None and counters[_BUSY]:
        counters[_BUSY] = time.monotonic_ns()


def backlog_bytes() -> int:
    """Bytes in this worker's ring that are not acknowledged yet (the batch in hand
    included): what would be replayed if the worker died now. 0 outside a worker."""
    return _worker.backlog() if _worker.backlog is not None else 0


def shed_new(who: object, shedding: bool) -> None:
    """Ask the receiver to drop new datagrams for this worker (``shedding``), counted as
    ``shed``, instead of holding them while the ring cannot take them; or stop asking.

    For a sink that can no longer deliver and must not make senders wait (a forwarding
    sink's ``drop_newest``). ``who`` names the asker: the receiver sheds while any asker
    of this process does. The records already in the ring are not affected. Outside a
    worker it does nothing.
    """
    with _shedders_lock:
        was = bool(_shedders)
        if shedding:
            _shedders.add(who)
        else:
            _shedders.discard(who)
        now = bool(_shedders)
        if now != was and _worker.set_shedding is not None:
            _worker.set_shedding(now)


def worker_index() -> int:
    """This worker's slot (0-based), or -1 outside a worker."""
    return _worker.index


def server_id() -> str:
    """The random id drawn when the server started ("" outside a worker)."""
    return _worker.server_id


def orphaned() -> bool:
    """True when the supervisor that started this worker is gone (its rings with it): a
    handler waiting on something should give up and let the process exit."""
    return bool(_worker.ppid) and os.getppid() != _worker.ppid

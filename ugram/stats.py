"""Counters in shared memory: one block per process, written only by its owner.

The supervisor reads every block without locks. Values are u64 slots written through a
``memoryview.cast("Q")`` element: an aligned 8-byte store that readers never see torn
(``struct.pack_into`` zeroes the field first, so a concurrent reader can see 0).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from enum import IntEnum

import msgspec

from .ring import create_shared_fd

SLOTS_PER_BLOCK = 64
BLOCK_BYTES = SLOTS_PER_BLOCK * 8
RECEIVER_BLOCK = 0


def worker_block(index: int) -> int:
    """The stats block of worker ``index``."""
    return index + 1


def supervisor_block(max_workers: int) -> int:
    """The supervisor's own block, after the receiver's and every worker slot's."""
    return max_workers + 1


class Slot(IntEnum):
    """The u64 slots of a process's block (a receiver and a worker use different ones)."""

    STATE = 0
    PID = 1
    RECEIVED = 2  # receiver: datagrams read from the socket
    BYTES = 3  # receiver: payload bytes read
    HANDLED = 4  # worker: records whose handler returned or raised
    HANDLER_ERRORS = 5  # worker: handler raised
    INVALID = 6  # receiver (no route key) and worker (undecodable)
    OVERSIZED = 7  # receiver: larger than max_datagram (never passed on truncated)
    UNAUTHORIZED = 8
    RATE_LIMITED = 9
    SHED = 10
    REPLAYED = 11  # worker: records read again after a predecessor died
    QUARANTINED = 12
    BLOCKED_NS = 13  # receiver: time spent waiting for ring space
    PROGRESS = 14  # worker: records started (liveness)
    BUSY_SINCE_NS = 15  # worker: monotonic start of the current record, 0 when idle
    REPLY_ERRORS = 16
    RESTARTS = 17  # supervisor block: processes restarted after a crash or recycling
    LOST = 18  # supervisor block: datagrams a killed receiver had read but not yet written
    HEARTBEAT_NS = 19  # worker: monotonic time of its last idle-loop pass
    COMMAND = 20  # worker: written by the supervisor (1 = finish this record and exit)
    ACTIVE = 21  # supervisor block: workers the receiver routes to
    ACTIVE_SEEN = 22  # receiver: the ACTIVE value it routes with now
    WORKER_TIMEOUTS = 23  # supervisor block: workers killed by the liveness check
    RECYCLED = 24  # supervisor block: workers replaced after max_records/max_rss/HUP
    BOOT_FAILURES = 25  # supervisor block: workers that died before running
    POSSIBLY_LOST = 26  # supervisor block: receiver deaths that may have cost one datagram


COMMAND_RETIRE = 1


class State(IntEnum):
    """Life stage of a process, written by the process itself."""

    EMPTY = 0
    BOOTING = 1
    RUNNING = 2
    DRAINING = 3
    STOPPED = 4


REJECT_REASONS = ("invalid", "oversized", "unauthorized", "rate_limited", "shed")


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Server-wide totals at one instant."""

    received: int
    bytes: int
    handled: int
    handler_errors: int
    invalid: int
    oversized: int
    unauthorized: int
    rate_limited: int
    shed: int
    replayed: int
    quarantined: int
    reply_errors: int
    blocked_seconds: float
    restarts: int
    lost: int
    possibly_lost: int
    worker_timeouts: int
    recycled: int

    @property
    def rejected(self) -> int:
        """Datagrams counted under a named reason instead of being handled."""
        return self.invalid + self.oversized + self.unauthorized + self.rate_limited + self.shed


class Stats:
    """The shared counter table: block 0 is the receiver's, block ``i + 1`` worker ``i``'s."""

    def __init__(self, fd: int) -> None:
        """Map the table in ``fd`` (made by :meth:`create`)."""
        self.fd = fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size)
        self._all = memoryview(self._mm).cast("Q")
        self.blocks = len(self._all) // SLOTS_PER_BLOCK

    @classmethod
    def create(cls, blocks: int) -> Stats:
        """Create a zeroed table with room for ``blocks`` processes."""
        return cls(create_shared_fd(blocks * BLOCK_BYTES))

    def block(self, index: int) -> memoryview:
        """The u64 slots of block ``index``, indexed by :class:`Slot`."""
        return self._all[index * SLOTS_PER_BLOCK : (index + 1) * SLOTS_PER_BLOCK]

    def total(self, slot: Slot) -> int:
        """Sum one slot over every block."""
        return sum(int(self._all[i * SLOTS_PER_BLOCK + slot]) for i in range(self.blocks))

    def snapshot(self) -> Snapshot:
        """Return the server-wide totals."""
        t = self.total
        return Snapshot(
            received=t(Slot.RECEIVED),
            bytes=t(Slot.BYTES),
            handled=t(Slot.HANDLED),
            handler_errors=t(Slot.HANDLER_ERRORS),
            invalid=t(Slot.INVALID),
            oversized=t(Slot.OVERSIZED),
            unauthorized=t(Slot.UNAUTHORIZED),
            rate_limited=t(Slot.RATE_LIMITED),
            shed=t(Slot.SHED),
            replayed=t(Slot.REPLAYED),
            quarantined=t(Slot.QUARANTINED),
            reply_errors=t(Slot.REPLY_ERRORS),
            blocked_seconds=t(Slot.BLOCKED_NS) / 1e9,
            restarts=t(Slot.RESTARTS),
            lost=t(Slot.LOST),
            possibly_lost=t(Slot.POSSIBLY_LOST),
            worker_timeouts=t(Slot.WORKER_TIMEOUTS),
            recycled=t(Slot.RECYCLED),
        )

    def close(self) -> None:
        """Unmap the table (views handed out by :meth:`block` must be released first)."""
        self._all.release()
        # A block view may still be alive: then the mapping goes with the process.
        with contextlib.suppress(BufferError):
            self._mm.close()

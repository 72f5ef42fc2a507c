"""Counters in shared memory: one block per process, written only by its owner.

The supervisor reads every block without locks. Values are u64 slots reached through
:func:`ugram.ordering.words`: an aligned 8-byte store that readers never see torn
(``struct.pack_into`` zeroes the field first, so a concurrent reader can see 0), a release
store and an acquire load (plain ones under x86-64's total store order, the compiled
helper's elsewhere: see :mod:`ugram.ordering`, record 9). A block is 512 bytes, so no two
processes' blocks share a cache line (64 or 128 bytes).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from enum import IntEnum

import msgspec

from .ordering import words
from .shm import create_shared_fd

SLOTS_PER_BLOCK = 64
BLOCK_BYTES = SLOTS_PER_BLOCK * 8
RECEIVER_BLOCK = 0


def worker_block(index: int) -> int:
    """The stats block of worker ``index``."""
    return index + 1


def supervisor_block(max_workers: int) -> int:
    """The supervisor's own block, after the receiver's and every worker slot's."""
    return max_workers + 1


def standby_block(max_workers: int) -> int:
    """The block of a SIGHUP replacement while it boots (one at a time), after the
    supervisor's; once it takes over a slot it writes that slot's block instead."""
    return max_workers + 2


class Slot(IntEnum):
    """The u64 slots of a process's block (a receiver and a worker use different ones).

    Slots 0-31 hold counters and state; slots 32-63 of a worker block hold its
    handling-latency histogram (see :func:`observe_latency`). :data:`SLOT_DOCS` says who
    writes each slot and what it counts; ``docs/reference.md`` is checked against it.
    """

    STATE = 0
    PID = 1
    RECEIVED = 2
    BYTES = 3
    HANDLED = 4
    HANDLER_ERRORS = 5
    INVALID = 6
    OVERSIZED = 7
    UNAUTHORIZED = 8
    RATE_LIMITED = 9
    SHED = 10
    REPLAYED = 11
    QUARANTINED = 12
    BLOCKED_NS = 13
    PROGRESS = 14
    BUSY_SINCE_NS = 15
    REPLY_ERRORS = 16
    RESTARTS = 17
    LOST = 18
    HEARTBEAT_NS = 19
    COMMAND = 20
    ACTIVE = 21
    ACTIVE_SEEN = 22
    WORKER_TIMEOUTS = 23
    RECYCLED = 24
    BOOT_FAILURES = 25
    POSSIBLY_LOST = 26
    DRAIN = 27
    FDS_CLOSED = 28
    CORRUPT_RINGS = 29


# A worker's counts that go through its ring's journal, in the order of ugram.ring.JOURNAL
# (ugram.ring.Ring.settle_journal: exact under a SIGKILL between two stores).
JOURNALED = (int(Slot.HANDLED), int(Slot.HANDLER_ERRORS), int(Slot.INVALID))

# Who writes each slot, and what it holds. "receiver", "worker" and "supervisor" name the
# block; the supervisor also writes STATE/COMMAND/BUSY_SINCE_NS of a child's block before
# starting it, and COMMAND of a worker's block to retire it.
SLOT_DOCS: dict[Slot, tuple[str, str]] = {
    Slot.STATE: ("all", "life stage written by the process itself (see State)"),
    Slot.PID: ("receiver, worker", "the process id of the block's current process"),
    Slot.RECEIVED: ("receiver", "datagrams read from the socket, accepted or rejected"),
    Slot.BYTES: ("receiver", "payload bytes of the datagrams that passed admission"),
    Slot.HANDLED: ("worker", "records whose handler returned or raised"),
    Slot.HANDLER_ERRORS: ("worker", "records whose handler raised"),
    Slot.INVALID: (
        "receiver, worker",
        "rejected as invalid: no route field (receiver) or undecodable (worker)",
    ),
    Slot.OVERSIZED: ("receiver", "rejected: larger than max_datagram (never passed truncated)"),
    Slot.UNAUTHORIZED: ("receiver", "rejected: sender not in allow_uid / allow_gid"),
    Slot.RATE_LIMITED: ("receiver", "rejected: sender over rate_limit"),
    Slot.SHED: (
        "receiver",
        "rejected: shed by a drop policy: a new datagram for a worker whose forwarding sink "
        "(policy drop_newest) fails to deliver with a backlog over its limit",
    ),
    Slot.REPLAYED: ("worker", "records read again after a predecessor died holding them"),
    Slot.QUARANTINED: ("worker", "poison records moved to the dead-letter file"),
    Slot.BLOCKED_NS: ("receiver", "nanoseconds spent waiting for ring space (backpressure)"),
    Slot.PROGRESS: ("worker", "records started (liveness: the supervisor watches it move)"),
    Slot.BUSY_SINCE_NS: (
        "worker",
        "monotonic start of the record in hand, 0 when idle (liveness: stuck on one record)",
    ),
    Slot.REPLY_ERRORS: (
        "worker",
        "Datagram.reply() calls that failed (an uncaught ReplyError also counts as a "
        "handler error)",
    ),
    Slot.RESTARTS: ("supervisor", "processes restarted after a crash"),
    Slot.LOST: (
        "supervisor",
        "datagrams a killed receiver had read but not yet written, and records in a ring "
        "emptied because it was corrupt",
    ),
    Slot.HEARTBEAT_NS: (
        "worker, receiver",
        "monotonic time of its last idle-loop (worker) or housekeeping (receiver) pass",
    ),
    Slot.COMMAND: (
        "supervisor",
        "order to the worker: 1 = finish this record and exit; to a booted SIGHUP "
        "replacement: 2 = take over the slot",
    ),
    Slot.ACTIVE: ("supervisor", "how many workers the receiver routes to"),
    Slot.ACTIVE_SEEN: ("receiver", "the ACTIVE value the receiver routes with now"),
    Slot.WORKER_TIMEOUTS: ("supervisor", "workers killed by the liveness check"),
    Slot.RECYCLED: ("supervisor", "workers replaced after max_records, max_rss or SIGHUP"),
    Slot.BOOT_FAILURES: ("supervisor", "workers that died before running"),
    Slot.POSSIBLY_LOST: (
        "supervisor",
        "receiver deaths that may have cost one datagram (killed inside recv)",
    ),
    Slot.DRAIN: ("supervisor", "1 once shutdown began: the receiver drains the socket, exits"),
    Slot.FDS_CLOSED: (
        "receiver",
        "file descriptors senders passed (SCM_RIGHTS) that the receiver closed unused; their "
        "datagrams go on. Only on kernels before Linux 6.16 (later ones refuse them at "
        "sendmsg: SO_PASSRIGHTS) and while credentials are collected (credentials, "
        "allow_uid, allow_gid, rate_limit, or a handler that may reply): otherwise the "
        "kernel closes them unseen",
    ),
    Slot.CORRUPT_RINGS: (
        "supervisor",
        "rings found corrupt (by their worker or the receiver) and emptied; what they held "
        "is counted in LOST",
    ),
}

# The handling-latency histogram: time from the receiver reading a datagram to the worker
# finishing it, in fixed log-scale buckets (a factor of 2 apart, 1 us to ~537 s). Slot
# LATENCY_FIRST + i counts latencies in (2**(i-1), 2**i] microseconds (bucket 0: <= 1 us);
# then one overflow bucket and the sum. Counts are per bucket, not cumulative.
LATENCY_FIRST = 32
LATENCY_BUCKETS = 30
LATENCY_OVERFLOW = LATENCY_FIRST + LATENCY_BUCKETS  # slot 62: above the last bound
LATENCY_SUM_NS = 63
LATENCY_BOUNDS: tuple[float, ...] = tuple(2**i / 1e6 for i in range(LATENCY_BUCKETS))


def observe_latency(block: memoryview, ns: int) -> None:
    """Count one record that took ``ns`` nanoseconds from receipt to handled.

    Called by the worker that owns ``block`` once per record, so it is kept to plain int
    arithmetic (~0.3 us); a clock step backwards counts as 0.
    """
    if ns > 0:
        index = ((ns - 1) // 1000).bit_length()  # smallest i with ns <= 2**i us
        block[_LATENCY_FIRST + (index if index < _LATENCY_BUCKETS else _LATENCY_BUCKETS)] += 1
        block[_LATENCY_SUM_NS] += ns
    else:
        block[_LATENCY_FIRST] += 1


# Plain ints for the hot path: indexing with an IntEnum member costs a __index__ call.
_LATENCY_FIRST, _LATENCY_BUCKETS, _LATENCY_SUM_NS = LATENCY_FIRST, LATENCY_BUCKETS, LATENCY_SUM_NS

COMMAND_RETIRE = 1
COMMAND_TAKE_OVER = 2  # to a booted SIGHUP replacement: the old worker is gone, take its slot


class State(IntEnum):
    """Life stage of a process, written by the process itself."""

    EMPTY = 0
    BOOTING = 1
    RUNNING = 2
    DRAINING = 3
    STOPPED = 4
    READY = 5  # a SIGHUP replacement, booted, waiting to take over its slot


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
    boot_failures: int = 0
    fds_closed: int = 0
    corrupt_rings: int = 0

    @property
    def rejected(self) -> int:
        """Datagrams counted under a named reason instead of being handled."""
        return self.invalid + self.oversized + self.unauthorized + self.rate_limited + self.shed


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """A handling-latency histogram: ``counts[i]`` records took at most ``bounds[i]`` seconds
    (and more than ``bounds[i - 1]``); the last count is above every bound.
    """

    bounds: list[float]
    counts: list[int]
    sum_seconds: float

    @property
    def count(self) -> int:
        """Records observed."""
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None: no records, or above
        the last bound).
        """
        if not self.count:
            return None
        rank, seen = max(1, math.ceil(q * self.count)), 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            seen += count
            if seen >= rank:
                return bound
        return None


class Stats:
    """The shared counter table: block 0 is the receiver's, block ``i + 1`` worker ``i``'s,
    then the supervisor's and a booting SIGHUP replacement's (:func:`standby_block`)."""

    def __init__(self, fd: int) -> None:
        """Map the table in ``fd`` (made by :meth:`create`)."""
        self.fd = fd
        self._mm = mmap.mmap(fd, os.fstat(fd).st_size)
        self._all = words(self._mm)
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
            boot_failures=t(Slot.BOOT_FAILURES),
            fds_closed=t(Slot.FDS_CLOSED),
            corrupt_rings=t(Slot.CORRUPT_RINGS),
        )

    def latency(self) -> Latency:
        """The handling-latency histogram summed over every worker block."""
        counts = [0] * (LATENCY_BUCKETS + 1)
        total_ns = 0
        for index in range(1, self.blocks - 1):  # worker blocks only
            base = index * SLOTS_PER_BLOCK
            for bucket in range(LATENCY_BUCKETS + 1):
                counts[bucket] += int(self._all[base + LATENCY_FIRST + bucket])
            total_ns += int(self._all[base + LATENCY_SUM_NS])
        return Latency(bounds=list(LATENCY_BOUNDS), counts=counts, sum_seconds=total_ns / 1e9)

    def close(self) -> None:
        """Unmap the table (views handed out by :meth:`block` must be released first)."""
        self._all.release()
        # A block view may still be alive: then the mapping goes with the process.
        with contextlib.suppress(BufferError):
            self._mm.close()

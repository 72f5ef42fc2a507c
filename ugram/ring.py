"""The single-producer / single-consumer byte ring in shared memory, one per worker.

Layout of the shared file (a memfd created by the supervisor, passed to children by fd)::

    [0, C)               control block of u64 slots, C = CONTROL_SIZE: one page of this
                         machine (4 KiB on x86-64, 16 KiB on Apple Silicon, 64 KiB on some
                         arm64 Linux), at least 4 KiB; the header says which (DATA_AT).
                         Producer, consumer, supervisor and journal slots sit on separate
                         128-byte lines (Apple M-series cache lines; others have 64 bytes)
    [C, C + cap)         records: 32-byte header, sender address, payload, padded to 8 bytes

Corruption (a stray write into the shared memory, a bug) must cost that one ring, never the
server: a consumer that reads an impossible head or record, or a producer that finds an
impossible head or tail, marks the ring (:meth:`Ring.mark_corrupt`); the receiver stops
routing to it and says so, the worker exits, and the supervisor empties it
(:meth:`Ring.reset`, its records counted as lost) and starts a new worker. Reads are bounded
by the head and by each record's checked length, so a corrupt ring can never make a reader
loop or read outside the ring.

Head and tail are monotonic byte counters. The consumer advances the tail only after the
handler returned (acknowledge), so ``[tail, head)`` is exactly what a replacement worker must
replay if its predecessor died. A record never wraps: when it does not fit before the end of
the buffer, the producer writes a pad marker and starts the record at offset 0.

Memory ordering. The producer writes the record bytes, then stores the head (a release
store); the consumer loads the head (an acquire load), then reads the record. Every slot of
the control block is reached through :func:`ugram.ordering.words`: a plain memoryview on
x86-64 (total store order makes its stores release and its loads acquire), the compiled
helper's release/acquire ``Words`` elsewhere; :mod:`ugram.ordering` gives the argument slot
by slot, and refuses to start (32-bit, or no helper off x86-64) instead of corrupting
silently.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from typing import NamedTuple, cast

from . import speedups
from .errors import RingCorruptError, RingFullError
from .ordering import check_memory_ordering, full_fence, words
from .shm import create_shared_fd

# The page size of this machine (os.sysconf("SC_PAGE_SIZE")): the control block fills one
# page, so the records start on a page of their own. 4 KiB at least: the slots need it.
PAGE_SIZE = mmap.PAGESIZE
CONTROL_SIZE = max(4096, PAGE_SIZE)
MAGIC = 0x5547_5241_4D31_0002  # "UGRAM1", version 2 (128-byte lines, DATA_AT)

# u64 slot indices in the control block, 16 to a 128-byte line.
# header line (offset 0): written by the supervisor before any child exists.
_MAGIC, _CAPACITY, _DATA_AT = 0, 1, 2
# producer line (offset 128): written only by the receiver (CLOSED: the supervisor)
HEAD, PUBLISHED, CLOSED, PRODUCER_WAITING = 16, 17, 18, 19
# consumer line (offset 256): written only by the worker (SHEDDING: also by the supervisor
# once the worker is gone; see Ring.set_shedding)
TAIL, ACKED, IN_HAND, CONSUMER_WAITING, SPACE_SIGNALLED, SHEDDING = 32, 33, 34, 35, 36, 37
# The consumer's recent wall time per record, in ns (0: not known yet): how the producer
# judges how much a ring may take before its consumer falls behind (see room).
COST_NS = 38
# The consumer's own notes, on its line: nothing in this module reads or writes them. A ring
# that runs the other way (a worker producing, the supervisor consuming: the statsd
# exposition's export ring) keeps there what its consumer applied last.
NOTES = (40, 41, 42)
# supervisor line (offset 384): poison accounting, written by the worker at start-up; and
# the corruption mark (see Ring.mark_corrupt): 0, MARKED (by the worker or the receiver) or
# QUIESCED (the receiver stopped writing to it), back to 0 by the supervisor's reset. RESETS
# counts the resets: positions start again at 0 after one, so (RESETS, position) names a
# record for the ring's whole life (ugram.Datagram.id).
ATTEMPT_POS, ATTEMPTS, CORRUPT, RESETS = 48, 49, 50, 51
MARKED, QUIESCED = 1, 2
# journal line (offset 512), written only by the worker: what ACKED and the worker's
# handled / handler-error / invalid counters will say once the record(s) in hand are
# acknowledged. See Ring.settle_journal for why counting needs it.
J_ACKED, J_HANDLED, J_ERRORS, J_INVALID = 64, 65, 66, 67
JOURNAL = (J_HANDLED, J_ERRORS, J_INVALID)  # in the order of settle_journal's counter slots

HEADER = struct.Struct("<IIqiIIHH")  # length, flags, recv_ns, pid, uid, gid, addr_len, 0
HEADER_SIZE = HEADER.size
PAD_MARK = 0xFFFF_FFFF
_PAD = struct.Struct("<I")
_RECV_NS = struct.Struct("<q")
FLAG_CREDS = 1


class Record(NamedTuple):
    """One datagram as stored in a ring (``uid == gid == -1``: no credentials collected)."""

    payload: bytes
    address: bytes
    recv_ns: int
    pid: int
    uid: int
    gid: int


def record_size(payload_len: int, addr_len: int) -> int:
    """Bytes a record occupies in the ring, padding included."""
    return (HEADER_SIZE + addr_len + payload_len + 7) & ~7


def mark_corrupt_fd(fd: int) -> None:
    """:meth:`Ring.mark_corrupt` for a ring whose header is too damaged to open as a Ring."""
    with mmap.mmap(fd, CONTROL_SIZE) as mm, words(mm) as ctl:
        if not ctl[CORRUPT]:
            ctl[CORRUPT] = MARKED


class Ring:
    """A view of one ring. The receiver uses the producer half, a worker the consumer half."""

    def __init__(self, fd: int, *, use_speedups: bool = True) -> None:
        """Map the ring in ``fd`` (created by :meth:`create`); ``use_speedups``: batch
        operations run in the C helper when it was built.

        Raises:
            ValueError: the file is not a ugram ring.
        """
        check_memory_ordering()
        size = os.fstat(fd).st_size
        self.fd = fd
        self._mm = mmap.mmap(fd, size)
        self.ctl = words(self._mm, 0, min(size, CONTROL_SIZE) // 8)
        ctl = self.ctl
        if (
            len(ctl) * 8 < CONTROL_SIZE
            or ctl[_MAGIC] != MAGIC
            or ctl[_DATA_AT] != CONTROL_SIZE
            or not 0 < ctl[_CAPACITY] <= size - CONTROL_SIZE
        ):
            self.ctl.release()
            self._mm.close()
            raise RingCorruptError(f"fd {fd} does not hold a ugram ring")
        self.capacity = int(self.ctl[_CAPACITY])
        self.data = memoryview(self._mm)[CONTROL_SIZE : CONTROL_SIZE + self.capacity]
        self._head = int(self.ctl[HEAD])  # producer's unpublished head
        self._published = int(self.ctl[PUBLISHED])
        self._tail_seen = int(self.ctl[TAIL])
        self._pending = 0
        self._rpos = int(self.ctl[TAIL])  # consumer's read cursor
        self._head_seen = self._rpos
        self._taken = 0  # records taken since the last ack
        self._excluded = False  # producer: not routed to, marked corrupt (see routable)
        self._native = speedups.native(use_speedups)

    @classmethod
    def create(cls, capacity: int) -> Ring:
        """Create a new, empty ring with ``capacity`` bytes of record space."""
        capacity &= ~7
        fd = create_shared_fd(CONTROL_SIZE + capacity)
        with mmap.mmap(fd, CONTROL_SIZE) as mm, words(mm) as ctl:
            ctl[_CAPACITY] = capacity
            ctl[_DATA_AT] = CONTROL_SIZE
            ctl[_MAGIC] = MAGIC
        return cls(fd)

    def close(self) -> None:
        """Unmap the ring (the fd stays open: the supervisor owns it)."""
        self.ctl.release()
        self.data.release()
        self._mm.close()

    # -- producer ---------------------------------------------------------------------------

    def try_put(
        self,
        payload: bytes | bytearray | memoryview,
        address: bytes,
        recv_ns: int,
        creds: tuple[int, int, int] | None = None,
    ) -> bool:
        """Copy one record in, unpublished. Returns False (nothing written) if it does not fit.

        Raises:
            RingFullError: the record is larger than the whole ring.
        """
        n, alen = len(payload), len(address)
        size = (HEADER_SIZE + alen + n + 7) & ~7
        cap = self.capacity
        head = self._head
        off = head % cap
        pad = cap - off if cap - off < size else 0
        if head + pad + size - self._tail_seen > cap:
            self._tail_seen = int(self.ctl[TAIL])
            if head + pad + size - self._tail_seen > cap:
                if size > cap:
                    raise RingFullError(f"a {n}-byte record cannot fit a {cap}-byte ring")
                return False
        # Hot path: slicing the mmap itself is cheaper than slicing a memoryview of it.
        mm = self._mm
        if pad:
            _PAD.pack_into(mm, CONTROL_SIZE + off, PAD_MARK)  # fits: records are 8-aligned
            head += pad
            off = 0
        start = CONTROL_SIZE + off
        if creds is None:
            HEADER.pack_into(mm, start, HEADER_SIZE + alen + n, 0, recv_ns, 0, 0, 0, alen, 0)
        else:
            pid, uid, gid = creds
            HEADER.pack_into(
                mm, start, HEADER_SIZE + alen + n, FLAG_CREDS, recv_ns, pid, uid, gid, alen, 0
            )
        start += HEADER_SIZE
        if alen:
            mm[start : start + alen] = address
            start += alen
        mm[start : start + n] = payload
        self._head = head = head + size
        # Published at once, not per batch: a receiver killed mid-batch must not take the
        # records it already copied with it (only the one it holds may be lost).
        ctl = self.ctl
        self._published += 1
        ctl[PUBLISHED] = self._published
        ctl[HEAD] = head  # the release: every record byte is stored before this
        self._pending += 1
        return True

    @property
    def native(self) -> bool:
        """True when this ring's batch operations run in the C helper."""
        return self._native is not None

    @property
    def mapping(self) -> mmap.mmap:
        """The ring's shared mapping (for the C helper's receive loop)."""
        return self._mm

    def resync_producer(self) -> None:
        """Pick up records the C helper put (its head and count) before the next put; it
        published them and woke the consumer itself."""
        head = int(self.ctl[HEAD])
        if head != self._head:
            self._head = head
            self._published = int(self.ctl[PUBLISHED])

    def publish(self) -> bool:
        """End a batch of puts (records are visible as soon as they are put).

        Returns:
            True if records were put since the last call and the consumer is asleep and
            must be woken.
        """
        if not self._pending:
            return False
        self._pending = 0
        full_fence()  # the head stores above must be visible before the flag is read
        return bool(self.ctl[CONSUMER_WAITING])

    def close_producer(self) -> None:
        """Tell the consumer that no record will follow the ones published."""
        self.ctl[CLOSED] = 1

    def reopen(self) -> None:
        """Clear the closed flag (a worker slot that is used again)."""
        self.ctl[CLOSED] = 0

    def wait_for_space(self) -> None:
        """Ask the consumer to signal when it frees space (a new wait generation)."""
        self.ctl[PRODUCER_WAITING] = self.ctl[PRODUCER_WAITING] + 1

    # -- consumer ---------------------------------------------------------------------------

    def take(self) -> Record | None:
        """Return the next unread record, or None when the ring is empty. Not acknowledged."""
        record = self._read()
        if record is not None:
            self._taken += 1
            self.ctl[IN_HAND] = self._rpos
        return record

    def _read(self) -> Record | None:
        """The record at the read cursor, or None at the head.

        Raises:
            RingCorruptError: the head, or the record, cannot be what a producer wrote.
        """
        pos = self._rpos
        if pos == self._head_seen:
            head = int(self.ctl[HEAD])  # the acquire: loaded before record bytes
            if head == pos:
                return None
            if head < pos or head - pos > self.capacity or head & 7:
                raise RingCorruptError(f"head {head} cannot follow read position {pos}")
            self._head_seen = head
        mm, cap = self._mm, self.capacity
        off = pos % cap
        # Too little room left for a header, or a pad marker: the record starts at offset 0.
        if cap - off < HEADER_SIZE or _PAD.unpack_from(mm, CONTROL_SIZE + off)[0] == PAD_MARK:
            pos += cap - off
            off = 0
        base = CONTROL_SIZE + off
        length, flags, recv_ns, pid, uid, gid, alen, _ = HEADER.unpack_from(mm, base)
        end = pos + ((length + 7) & ~7)
        # Every record lies whole between the cursor and the head: a zero length (which
        # would never advance) or one running past the head or the buffer is corruption.
        if length < HEADER_SIZE + alen or off + length > cap or end > self._head_seen:
            raise RingCorruptError(f"a {length}-byte record at {pos} (head {self._head_seen})")
        if not flags & FLAG_CREDS:
            uid = gid = -1  # Record's convention for "no credentials"
        start = base + HEADER_SIZE
        address = mm[start : start + alen] if alen else b""
        payload = mm[start + alen : base + length]
        self._rpos = end
        return Record(payload, address, recv_ns, pid, uid, gid)

    def take_batch(self, limit: int, max_bytes: int = sys.maxsize) -> list[tuple[Record, int]]:
        """Read up to ``limit`` published records without marking any as in hand, stopping
        before the record that would take their payloads past ``max_bytes`` in all (the
        first one is taken whatever its size).

        Returns ``(record, end)`` pairs; the caller brackets each record with
        :meth:`start` and :meth:`finish` (or writes those slots itself, in a hot loop) and
        calls :meth:`end_batch` after the last one.

        Raises:
            RingCorruptError: the head, or a record, cannot be what a producer wrote.
        """
        if self._native is not None:
            try:
                taken, self._rpos, self._head_seen = self._native.take_records(
                    self._mm, self._rpos, self._head_seen, limit, Record, max_bytes
                )
            except ValueError as exc:  # the C helper's checks are _read's
                raise RingCorruptError(str(exc)) from exc
            return cast("list[tuple[Record, int]]", taken)
        batch: list[tuple[Record, int]] = []
        read, size = self._read, 0
        while len(batch) < limit:
            before = self._rpos
            record = read()
            if record is None:
                break
            size += len(record.payload)
            if size > max_bytes and batch:
                self._rpos = before  # left for the next batch
                break
            batch.append((record, self._rpos))
        return batch

    def start(self, end: int) -> None:
        """Mark the record ending at ``end`` as in hand (its handler is about to run)."""
        self.ctl[IN_HAND] = end

    def finish(self, end: int) -> None:
        """Acknowledge every record up to ``end``: they will never be replayed."""
        self.ctl[TAIL] = end

    def end_batch(self) -> bool:
        """After a batch was acknowledged: True if the producer waits for space (and it was
        not signalled yet)."""
        ctl = self.ctl
        waiting = ctl[PRODUCER_WAITING]
        if waiting != ctl[SPACE_SIGNALLED]:
            ctl[SPACE_SIGNALLED] = waiting
            return True
        return False

    def ack(self) -> bool:
        """Acknowledge every record taken so far: they will never be replayed.

        Returns:
            True if the producer waits for space and has not been signalled yet.
        """
        ctl = self.ctl
        ctl[J_ACKED] = acked = int(ctl[ACKED]) + self._taken  # the journal first (settle_journal)
        ctl[TAIL] = self._rpos
        ctl[ACKED] = acked
        self._taken = 0
        waiting = ctl[PRODUCER_WAITING]
        if waiting != ctl[SPACE_SIGNALLED]:
            ctl[SPACE_SIGNALLED] = waiting
            return True
        return False

    def rewind(self) -> int:
        """Start reading again at the tail (a replacement worker).

        Returns:
            How many records the previous consumer had taken but not acknowledged: they are
            read again (replayed).
        """
        tail = int(self.ctl[TAIL])
        in_hand = int(self.ctl[IN_HAND])
        self._rpos = self._head_seen = tail
        replayed = 0
        while self._rpos < in_hand and self.take() is not None:
            replayed += 1
        self._rpos = self._head_seen = tail
        self._taken = 0
        self.ctl[IN_HAND] = tail
        return replayed

    def settle_journal(self, counters: memoryview, slots: tuple[int, int, int]) -> None:
        """Make the counts agree with the tail after a consumer died (or before a new one
        starts): ACKED, and the consumer's ``slots`` of ``counters`` (handled, handler
        errors, invalid), whose journal slots are :data:`JOURNAL` in the same order.

        Why. Acknowledging a record and counting it are stores to different words, and a
        SIGKILL can land between any two. Counting before the tail store counts twice a
        record killed in between (it is replayed and counted again); counting after it
        loses the count of one killed in between. So the consumer does both halves, in this
        order, for each record (or each batch) in hand:

        1. ``IN_HAND = end`` (before the handler runs);
        2. the journal: ``J_* = what each count will be`` once this record is acknowledged;
        3. ``TAIL = end`` (acknowledged: never replayed);
        4. the counts themselves: ``ACKED = J_ACKED``, ``counter = J_*``.

        A kill before 3 leaves ``IN_HAND > TAIL``: the record is replayed and counted by the
        successor, so the journal's counts for it are dropped. A kill after 3 leaves
        ``IN_HAND == TAIL``: the record is done, and its counts are in the journal whether or
        not step 4 ran: each count becomes the larger of itself and its journal (counts only
        grow, so a journal behind its count, as after :meth:`reset`, changes nothing). Then
        the journal is re-armed (equal to the counts) for the next consumer. Readers never
        see a count above the truth, and see it catch up after a kill, never go back.
        """
        ctl = self.ctl
        acknowledged = int(ctl[IN_HAND]) == int(ctl[TAIL])
        pairs = (
            (ACKED, J_ACKED, ctl),
            *((slot, j, counters) for slot, j in zip(slots, JOURNAL, strict=True)),
        )
        for slot, journal, block in pairs:
            if acknowledged and int(ctl[journal]) > int(block[slot]):
                block[slot] = int(ctl[journal])
            ctl[journal] = block[slot]

    def note_failed_attempt(self) -> int:
        """Count a failed attempt if the previous consumer died holding the tail record.

        Call before :meth:`rewind`. Returns how many consumers have died on the record at
        the tail so far (0 when the previous consumer left nothing in hand).
        """
        ctl = self.ctl
        tail = int(ctl[TAIL])
        if int(ctl[IN_HAND]) <= tail:
            return 0
        if int(ctl[ATTEMPT_POS]) == tail and ctl[ATTEMPTS] > 0:
            ctl[ATTEMPTS] += 1
        else:
            ctl[ATTEMPT_POS] = tail
            ctl[ATTEMPTS] = 1
        return int(ctl[ATTEMPTS])

    def rewind_to(self, position: int) -> None:
        """Move the read cursor back to ``position`` (records read but not handled)."""
        self._rpos = position

    @property
    def read_position(self) -> int:
        """The consumer's read cursor (a byte counter, like head and tail)."""
        return self._rpos

    def is_drained(self) -> bool:
        """True when the producer closed the ring and every record has been read."""
        return bool(self.ctl[CLOSED]) and self._rpos == int(self.ctl[HEAD])

    def set_sleeping(self, sleeping: bool) -> None:
        """Tell the producer whether the consumer sleeps (and must be woken on publish).

        Going to sleep is followed by a full fence, so that the caller's next look at the
        head cannot be answered before the flag is visible to the producer.
        """
        self.ctl[CONSUMER_WAITING] = 1 if sleeping else 0
        if sleeping:
            full_fence()

    def set_shedding(self, shedding: bool) -> None:
        """Ask the producer to drop new records for this ring instead of holding them, or
        stop asking (a forwarding sink's ``drop_newest`` policy, from the worker; cleared by
        the supervisor once that worker is gone).

        Advisory: the producer reads it once per read pass, so a change takes effect within
        a pass; the records in the ring are untouched either way.
        """
        self.ctl[SHEDDING] = 1 if shedding else 0

    @property
    def shedding(self) -> bool:
        """Producer side: the consumer asks for new records to be dropped (see
        :meth:`set_shedding`)."""
        return bool(self.ctl[SHEDDING])

    def has_unread(self) -> bool:
        """True when a published record has not been read yet."""
        return self._rpos != int(self.ctl[HEAD])

    # -- shared -----------------------------------------------------------------------------

    def depth(self) -> int:
        """Records published and not yet acknowledged."""
        return int(self.ctl[PUBLISHED]) - int(self.ctl[ACKED])

    def count_unacknowledged(self) -> int:
        """Count the records between tail and head by walking them (exact; for a quiet ring).

        Unlike :meth:`depth` this does not rely on the acknowledged counter. A corrupt ring
        cannot be walked: then its depth, as far as the counters can tell, is the answer.
        """
        try:
            walker = Ring(self.fd, use_speedups=False)
        except RingCorruptError:
            return max(0, self.depth())
        try:
            walker._rpos = walker._head_seen = int(self.ctl[TAIL])
            count = 0
            while walker._read() is not None:  # ends: every read advances, up to the head
                count += 1
            return count
        except RingCorruptError:
            return max(0, self.depth())
        finally:
            walker.close()

    def used_bytes(self) -> int:
        """Bytes published and not yet acknowledged."""
        return int(self.ctl[HEAD]) - int(self.ctl[TAIL])

    # -- corruption -------------------------------------------------------------------------

    def mark_corrupt(self) -> None:
        """Say that this ring cannot be trusted (a producer or consumer found it corrupt).

        The receiver stops routing to it and confirms it (QUIESCED), the worker exits, and
        the supervisor then empties it with :meth:`reset` and starts a new worker.
        """
        if not self.ctl[CORRUPT]:  # a receiver's QUIESCED stays: it says more
            self.ctl[CORRUPT] = MARKED

    @property
    def marked_corrupt(self) -> bool:
        """True from :meth:`mark_corrupt` until the supervisor's :meth:`reset`."""
        return bool(self.ctl[CORRUPT])

    @property
    def quiesced(self) -> bool:
        """True once the producer stopped writing to a ring marked corrupt."""
        return int(self.ctl[CORRUPT]) == QUIESCED

    def producer_fault(self) -> str | None:
        """Producer side: what makes this ring unsafe to write (a header that is not ugram's,
        a head and tail no producer and consumer can have written), or None."""
        ctl, cap = self.ctl, self.capacity
        if ctl[_MAGIC] != MAGIC or ctl[_CAPACITY] != cap or ctl[_DATA_AT] != CONTROL_SIZE:
            return "its header was overwritten"
        head, tail = int(ctl[HEAD]), int(ctl[TAIL])  # head first: ours, it cannot move
        if head & 7 or tail > head or head - tail > cap:
            return f"head {head} and tail {tail} are impossible"
        return None

    def routable(self) -> bool:
        """Producer side: whether records may be put into this ring now.

        Not while it is marked corrupt: the producer then confirms that it no longer writes
        to it (QUIESCED), which the supervisor waits for before it resets the ring. Once it
        was reset, the producer picks up the ring's new positions before it puts again.
        """
        state = self.ctl[CORRUPT]
        if state:
            if state != QUIESCED:
                self.ctl[CORRUPT] = QUIESCED
            self._excluded = True
            return False
        if self._excluded:
            self._excluded = False
            ctl = self.ctl
            self._head, self._published = int(ctl[HEAD]), int(ctl[PUBLISHED])
            self._tail_seen, self._pending = int(ctl[TAIL]), 0
        return True

    def reset(self) -> int:
        """Empty a ring marked corrupt and rebuild its header, then unmark it (supervisor;
        its worker is gone and its producer quiesced or gone).

        Returns:
            How many records it held that are now lost (published and not acknowledged, as
            far as its counters can still tell). ``PUBLISHED`` drops by as many: it counts
            what is or was in the ring, and the receiver's loss accounting sums it.
        """
        ctl, cap = self.ctl, self.capacity
        published = int(ctl[PUBLISHED])
        lost = min(max(0, published - int(ctl[ACKED])), cap // HEADER_SIZE)
        ctl[_MAGIC], ctl[_CAPACITY], ctl[_DATA_AT] = MAGIC, cap, CONTROL_SIZE
        ctl[PUBLISHED] = ctl[ACKED] = ctl[J_ACKED] = published - lost
        zeroed = (HEAD, TAIL, IN_HAND, CONSUMER_WAITING, SHEDDING, ATTEMPT_POS, ATTEMPTS, COST_NS)
        for slot in (*zeroed, *JOURNAL):
            ctl[slot] = 0  # a zero journal settles nothing: counts only grow (settle_journal)
        ctl[SPACE_SIGNALLED] = ctl[PRODUCER_WAITING]  # no wait for space outstanding
        ctl[RESETS] += 1  # positions restart at 0: a record's id must not name an old one
        ctl[CORRUPT] = 0  # last: the producer may route to it again
        return lost


def note_cost(ring: Ring, elapsed_ns: int, records: int) -> None:
    """Consumer side: say that the last batch of ``records`` took ``elapsed_ns``, wall time.
    The producer places by the recent cost a record (a moving average, a quarter weight to
    the newest batch) how many records this consumer gets through without falling behind
    (:func:`room`)."""
    if records > 0:
        cost, before = max(1, elapsed_ns // records), int(ring.ctl[COST_NS])
        ring.ctl[COST_NS] = (3 * before + cost) >> 2 if before else cost


def room(ring: Ring, now_ns: int, pack_ns: int) -> int:
    """Producer side: how many more records ``ring`` takes before its consumer falls
    behind: none once its oldest unacknowledged record was received over ``pack_ns`` before
    ``now_ns``; else as many as the consumer gets through in ``pack_ns`` at its recent cost
    a record (:func:`note_cost`), less the records it holds; at least one when it is
    empty (an idle worker takes a record before it waits behind a busy one).

    A heuristic over words the consumer writes: a bad value places records badly, never
    unsafely. The twin of ``producer_rooms`` in ugram/_speedups.c.
    """
    ctl, head = ring.ctl, ring._head
    tail = int(ctl[TAIL])
    empty = tail == head
    if not empty:
        oldest = _received_at(ring, tail)
        if oldest is None or now_ns - oldest > pack_ns:
            return 0
    cost = int(ctl[COST_NS])
    if not cost:
        return int(empty)
    acked, published = int(ctl[ACKED]), ring._published
    held = 0 if empty or acked >= published else published - acked
    return max(int(empty), pack_ns // cost - held)


def _received_at(ring: Ring, tail: int) -> int | None:
    """The receive time of the record at ``tail`` (not acknowledged, so not overwritten
    yet: only the producer writes), or None for a tail no sane ring has."""
    cap, head, mm = ring.capacity, ring._head, ring._mm
    if tail & 7 or tail > head or head - tail > cap or cap < HEADER_SIZE:
        return None
    off = tail % cap
    if cap - off < HEADER_SIZE or _PAD.unpack_from(mm, CONTROL_SIZE + off)[0] == PAD_MARK:
        off = 0
    return int(_RECV_NS.unpack_from(mm, CONTROL_SIZE + off + 8)[0])


def unacknowledged(ring: Ring) -> list[Record]:
    """The records between ``ring``'s tail and head, read without taking them (for a ring
    whose producer is gone: what it published and no consumer acknowledged yet).

    Raises:
        RingCorruptError: a record there cannot be what a producer wrote.
    """
    walker = Ring(ring.fd, use_speedups=False)
    try:
        walker._rpos = walker._head_seen = int(ring.ctl[TAIL])
        records = []
        while (record := walker._read()) is not None:
            records.append(record)
        return records
    finally:
        walker.close()

"""The shared-memory ring: a byte-exact FIFO between two views of one memfd, in one process.

The producer view plays the receiver, the consumer view a worker; a fresh consumer view on the
same fd plays a replacement worker after a crash.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ugram.errors import RingCorruptError, RingFullError
from ugram.ring import (
    ACKED,
    CONTROL_SIZE,
    HEAD,
    HEADER_SIZE,
    IN_HAND,
    J_ACKED,
    J_ERRORS,
    J_HANDLED,
    J_INVALID,
    PUBLISHED,
    TAIL,
    Record,
    Ring,
    record_size,
)


@dataclass
class Pair:
    producer: Ring
    consumer: Ring


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A 4 KiB ring: the producer view from ``create``, the consumer view from its fd."""
    producer = Ring.create(4096)
    consumer = Ring(producer.fd)
    try:
        yield Pair(producer, consumer)
    finally:
        consumer.close()
        producer.close()
        os.close(producer.fd)


def payload_for(seq: int, n: int) -> bytes:
    """``n`` bytes that differ from record to record (so a mix-up is visible)."""
    return (f"{seq}:".encode() * (n // 2 + 1))[:n]


def put(ring: Ring, seq: int, n: int, address: bytes = b"") -> bool:
    return ring.try_put(payload_for(seq, n), address, seq)


# -- deterministic behaviour --------------------------------------------------------------------


def test_record_comes_out_byte_exact_with_its_header(pair: Pair) -> None:
    payload = bytes(range(256)) * 3
    address = b"\0ugram-test-sender"
    assert pair.producer.try_put(payload, address, 123_456_789, (4321, 1000, 1001))
    pair.producer.publish()

    record = pair.consumer.take()

    assert record == Record(payload, address, 123_456_789, 4321, 1000, 1001)


def test_record_without_creds_says_so(pair: Pair) -> None:
    assert pair.producer.try_put(b"x", b"/tmp/sender.sock", 7)
    pair.producer.publish()

    record = pair.consumer.take()

    assert record is not None
    assert (record.payload, record.address, record.recv_ns) == (b"x", b"/tmp/sender.sock", 7)
    assert (record.uid, record.gid) == (-1, -1)


def test_empty_payload_and_empty_address_round_trip(pair: Pair) -> None:
    assert pair.producer.try_put(b"", b"", 0)
    pair.producer.publish()

    assert pair.consumer.take() == Record(b"", b"", 0, 0, -1, -1)
    assert pair.consumer.take() is None


def test_take_on_an_empty_ring_returns_none(pair: Pair) -> None:
    assert pair.consumer.take() is None
    assert pair.consumer.depth() == 0
    assert pair.consumer.used_bytes() == 0
    assert not pair.consumer.has_unread()


def test_full_ring_refuses_then_accepts_after_ack(pair: Pair) -> None:
    ring, consumer = pair.producer, pair.consumer
    size = record_size(200, 0)
    fitted = 0
    while put(ring, fitted, 200):
        fitted += 1
    ring.publish()
    assert fitted == ring.capacity // size
    assert ring.used_bytes() == fitted * size
    assert not put(ring, 999, 200), "a full ring must keep refusing"

    first = consumer.take()
    consumer.ack()
    assert put(ring, fitted, 200), "one acknowledged record frees room for one more"
    ring.publish()

    assert first is not None
    assert first.payload == payload_for(0, 200)
    seen = [consumer.take() for _ in range(fitted)]
    assert [r.payload for r in seen if r] == [payload_for(i, 200) for i in range(1, fitted + 1)]


def test_record_larger_than_the_ring_raises_and_writes_nothing(pair: Pair) -> None:
    too_big = pair.producer.capacity - HEADER_SIZE + 1

    with pytest.raises(RingFullError, match="cannot fit"):
        pair.producer.try_put(b"x" * too_big, b"", 0)

    pair.producer.publish()
    assert pair.consumer.take() is None
    assert pair.consumer.depth() == 0
    assert put(pair.producer, 1, 10), "the ring is still usable"


def test_record_filling_the_whole_ring_fits_when_empty(pair: Pair) -> None:
    exact = pair.producer.capacity - HEADER_SIZE

    assert pair.producer.try_put(b"y" * exact, b"", 0)
    pair.producer.publish()

    record = pair.consumer.take()
    assert record is not None
    assert record.payload == b"y" * exact


def test_rewind_replays_exactly_the_unacknowledged_records(pair: Pair) -> None:
    ring, consumer = pair.producer, pair.consumer
    for seq in range(5):
        assert put(ring, seq, 30 + seq)
    ring.publish()
    consumer.take()
    consumer.ack()  # record 0 is done for good
    consumer.take()
    consumer.take()  # records 1 and 2 in hand when the worker "dies"

    replacement = Ring(ring.fd)
    try:
        assert replacement.rewind() == 2
        replayed = [replacement.take() for _ in range(4)]
        assert [r.payload for r in replayed if r] == [payload_for(s, 30 + s) for s in (1, 2, 3, 4)]
        assert replacement.take() is None
    finally:
        replacement.close()


def test_rewind_with_nothing_in_hand_replays_nothing(pair: Pair) -> None:
    assert put(pair.producer, 0, 8)
    pair.producer.publish()

    assert pair.consumer.rewind() == 0
    record = pair.consumer.take()
    assert record is not None
    assert record.payload == payload_for(0, 8)


def test_close_producer_then_drained_once_everything_is_read(pair: Pair) -> None:
    ring, consumer = pair.producer, pair.consumer
    assert put(ring, 0, 10)
    assert put(ring, 1, 10)
    ring.publish()
    assert not consumer.is_drained(), "not closed yet"

    ring.close_producer()
    assert not consumer.is_drained(), "closed, but two records are unread"
    consumer.take()
    assert not consumer.is_drained()
    consumer.take()
    assert consumer.is_drained()


def test_publish_wakes_only_a_sleeping_consumer(pair: Pair) -> None:
    ring, consumer = pair.producer, pair.consumer
    assert ring.publish() is False, "nothing to publish"
    assert put(ring, 0, 1)
    assert ring.publish() is False, "consumer awake"
    consumer.set_sleeping(True)
    assert put(ring, 1, 1)
    assert ring.publish() is True
    assert ring.publish() is False, "nothing new since the last publish"


def test_ack_signals_a_waiting_producer_once(pair: Pair) -> None:
    ring, consumer = pair.producer, pair.consumer
    for seq in range(3):
        assert put(ring, seq, 1)
    ring.publish()
    consumer.take()
    assert consumer.ack() is False, "nobody waits for space"

    ring.wait_for_space()
    consumer.take()
    assert consumer.ack() is True
    consumer.take()
    assert consumer.ack() is False, "this wait was already signalled"


def test_second_view_of_a_non_ring_fd_is_refused() -> None:
    fd = os.memfd_create("not-a-ring")
    try:
        os.ftruncate(fd, 8192)
        with pytest.raises(ValueError, match="does not hold a ugram ring"):
            Ring(fd)
    finally:
        os.close(fd)


def test_wrap_with_a_gap_shorter_than_a_header() -> None:
    """The pad mark in an 8-24 byte gap before the end is found, not read as a header."""
    ring = Ring.create(8192)
    consumer = Ring(ring.fd)
    try:
        # 56-byte records: 146 of them leave a 16-byte gap before the end of the 8192 bytes.
        for seq in range(400):
            assert put(ring, seq, 24)
            ring.publish()
            record = consumer.take()
            assert record is not None
            assert record.payload == payload_for(seq, 24)
            consumer.ack()
    finally:
        consumer.close()
        ring.close()
        os.close(ring.fd)


# -- acknowledging a batch ------------------------------------------------------------------------


def test_ack_of_a_batch_empties_depth(pair: Pair) -> None:
    for seq in range(3):
        assert put(pair.producer, seq, 10)
    pair.producer.publish()
    for _ in range(3):
        pair.consumer.take()

    pair.consumer.ack()

    assert pair.consumer.used_bytes() == 0
    assert pair.consumer.depth() == 0
    pair.consumer.ack()
    assert pair.consumer.depth() == 0


# -- counting under a kill between two stores (Ring.settle_journal) ----------------------------

COUNTED = (4, 5, 6)  # counter slots for handled, handler errors, invalid


def handle_until(consumer: Ring, counters: memoryview, step: int) -> None:
    """Handle the next record the way a worker does, stopping (as a SIGKILL would) after
    ``step`` of: 1 in hand, 2 journal, 3 tail stored, 4 counts copied."""
    ctl = consumer.ctl
    batch = consumer.take_batch(1)
    assert batch
    end = batch[0][1]
    ctl[IN_HAND] = end
    if step >= 2:
        ctl[J_HANDLED] += 1
        ctl[J_ACKED] = ctl[ACKED] + 1
    if step >= 3:
        ctl[TAIL] = end
    if step >= 4:
        ctl[ACKED] = ctl[J_ACKED]
        counters[COUNTED[0]] = ctl[J_HANDLED]


@pytest.mark.parametrize("killed_after", [1, 2, 3, 4])
def test_a_kill_anywhere_in_a_record_leaves_it_counted_once(pair: Pair, killed_after: int) -> None:
    counters = memoryview(bytearray(64 * 8)).cast("Q")
    for seq in range(3):
        assert put(pair.producer, seq, 10)
    pair.consumer.settle_journal(counters, COUNTED)
    handle_until(pair.consumer, counters, 4)  # record 0: done
    handle_until(pair.consumer, counters, killed_after)  # record 1: killed there

    successor = Ring(pair.producer.fd)
    try:
        successor.settle_journal(counters, COUNTED)
        replayed = successor.rewind()
        # Acknowledged (tail stored) means done and counted; before that, replayed.
        assert replayed == (0 if killed_after >= 3 else 1)
        assert counters[COUNTED[0]] == (2 if killed_after >= 3 else 1)
        assert successor.ctl[ACKED] == counters[COUNTED[0]]
        while successor.ctl[TAIL] != successor.ctl[HEAD]:  # the rest, to the head
            handle_until(successor, counters, 4)
    finally:
        successor.close()
    assert counters[COUNTED[0]] == 3  # each of the three exactly once
    assert pair.consumer.depth() == 0  # ACKED caught up with PUBLISHED: no phantom depth
    assert [counters[slot] for slot in COUNTED[1:]] == [0, 0]
    assert [pair.consumer.ctl[j] for j in (J_HANDLED, J_ERRORS, J_INVALID)] == [3, 0, 0]


def test_settling_never_lowers_a_count(pair: Pair) -> None:
    """A journal behind its counts (a ring that was reset) changes nothing."""
    counters = memoryview(bytearray(64 * 8)).cast("Q")
    counters[COUNTED[0]], counters[COUNTED[2]] = 500, 7
    pair.consumer.settle_journal(counters, COUNTED)
    assert (counters[COUNTED[0]], counters[COUNTED[2]]) == (500, 7)
    assert (pair.consumer.ctl[J_HANDLED], pair.consumer.ctl[J_INVALID]) == (500, 7)


# -- corruption: detected, bounded, reset --------------------------------------------------------


def returns_within(call: Callable[[], object], seconds: float = 10.0) -> object:
    """``call()``'s result, failing the test (instead of hanging it) if it loops."""
    result: list[object] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # raised again below, in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} did not return: it loops"
    if failure:
        raise failure[0]
    return result[0]


def zero_length_at_tail(ring: Ring) -> None:
    at = CONTROL_SIZE + int(ring.ctl[TAIL]) % ring.capacity
    ring.mapping[at : at + 4] = bytes(4)


def test_a_zero_length_record_is_corruption_not_an_endless_loop(pair: Pair) -> None:
    for seq in range(3):
        assert put(pair.producer, seq, 10)
    zero_length_at_tail(pair.producer)

    with pytest.raises(RingCorruptError, match="0-byte record"):
        returns_within(pair.consumer.take)
    with pytest.raises(RingCorruptError):
        returns_within(lambda: pair.consumer.take_batch(10))
    # The supervisor's count at shutdown: the depth, as the counters tell it.
    assert returns_within(pair.consumer.count_unacknowledged) == 3


@pytest.mark.parametrize("head", [-8, 12, 4096 + 8], ids=["behind", "unaligned", "past-a-lap"])
def test_an_impossible_head_is_corruption(pair: Pair, head: int) -> None:
    assert put(pair.producer, 0, 10)
    assert pair.consumer.take() is not None
    pair.consumer.ack()
    pair.producer.ctl[HEAD] = pair.consumer.read_position + head
    with pytest.raises(RingCorruptError, match="head"):
        pair.consumer.take()
    assert pair.producer.producer_fault() is not None


def test_a_corrupt_ring_is_marked_quiesced_reset_and_used_again(pair: Pair) -> None:
    producer, consumer = pair.producer, pair.consumer
    supervisor = Ring(producer.fd)
    try:
        for seq in range(5):
            assert put(producer, seq, 10)
        assert consumer.take() is not None
        consumer.ack()  # 1 handled, 4 left in the ring
        assert producer.producer_fault() is None
        producer.ctl[TAIL] = producer.ctl[HEAD] + 64  # ahead of the head
        assert producer.producer_fault() == "head 240 and tail 304 are impossible"
        producer.mark_corrupt()
        consumer.mark_corrupt()  # both found it: still one mark
        assert supervisor.marked_corrupt
        assert not supervisor.quiesced
        assert not producer.routable()  # the receiver stops writing to it, and says so
        assert supervisor.quiesced

        assert supervisor.reset() == 4  # the four it held are lost
        assert not supervisor.marked_corrupt
        assert (supervisor.ctl[HEAD], supervisor.ctl[TAIL], supervisor.depth()) == (0, 0, 0)
        assert supervisor.ctl[PUBLISHED] == 1  # what reached a worker, for loss accounting

        assert producer.routable()  # picks up the reset positions
        successor = Ring(producer.fd)
        try:
            for seq in range(5, 8):
                assert put(producer, seq, 10)
            assert [r.payload for r, _ in successor.take_batch(10)] == [
                payload_for(seq, 10) for seq in range(5, 8)
            ]
        finally:
            successor.close()
    finally:
        supervisor.close()


def test_an_overwritten_header_is_corruption(pair: Pair) -> None:
    pair.producer.ctl[0] = 0  # the magic
    assert pair.producer.producer_fault() == "its header was overwritten"
    with pytest.raises(RingCorruptError, match="does not hold a ugram ring"):
        Ring(pair.producer.fd)
    pair.producer.mark_corrupt()
    pair.producer.reset()
    Ring(pair.producer.fd).close()  # the header is rebuilt


# -- the ring against a model FIFO --------------------------------------------------------------

# Record sizes are HEADER_SIZE + a multiple of ALIGN (8, the ring's own alignment, so gaps of
# 8-24 bytes occur before the end of the buffer). ACK_BATCHES allows ack() with 0 or several
# records in hand.
ALIGN = 8
ACK_BATCHES = True

BLOCKS = st.one_of(st.integers(0, 4), st.integers(0, 2100 // ALIGN))
ADDRESSES = st.sampled_from(
    [b"", b"\0ugram-sender", b"/tmp/ug/s.sock", b"/" + b"p" * 106]
) | st.binary(max_size=108)
# Kernel ids are unsigned 32-bit (uid_t, gid_t); the ring stores them as such.
CREDS = st.none() | st.tuples(
    st.integers(1, 2**22), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)
)


@dataclass
class Entry:
    record: Record
    end: int  # the ring's byte counter just after this record (padding included)


class RingMachine(RuleBasedStateMachine):
    """Random put / publish / take / ack / rewind against a list model of the FIFO.

    The model is deliberately agnostic about whether ``try_put`` makes a record visible at
    once or only at ``publish``: a record taken must be the next one in order, and ``take``
    may return None only when every published record has been taken.
    """

    def __init__(self) -> None:
        super().__init__()
        self.producer: Ring | None = None
        self.consumer: Ring | None = None

    @initialize(capacity=st.integers(8, 64).map(lambda blocks: blocks * 32))
    def create(self, capacity: int) -> None:
        self.producer = Ring.create(capacity)
        self.consumer = Ring(self.producer.fd)
        self.cap = self.producer.capacity
        assert self.cap == capacity
        self.entries: list[Entry] = []  # put and not acknowledged, oldest first
        self.taken = 0  # how many of the leading entries the consumer holds
        self.published = 0  # how many of the leading entries were published
        self.head = self.tail = 0
        self.pending = 0
        self.seq = 0
        self.sleeping = False
        self.waiting = self.signalled = 0

    def _put(
        self,
        blocks: int,
        address: bytes,
        slack: int,
        recv_ns: int,
        creds: tuple[int, int, int] | None,
    ) -> None:
        assert self.producer is not None
        size = HEADER_SIZE + blocks * ALIGN
        address = address[: size - HEADER_SIZE]
        n = max(0, size - HEADER_SIZE - len(address) - slack)
        assert record_size(n, len(address)) == size
        payload = payload_for(self.seq, n)
        off = self.head % self.cap
        pad = self.cap - off if self.cap - off < size else 0
        fits = self.head + pad + size - self.tail <= self.cap

        if size > self.cap:
            with pytest.raises(RingFullError):
                self.producer.try_put(payload, address, recv_ns, creds)
            return
        assert self.producer.try_put(payload, address, recv_ns, creds) is fits
        if fits:
            pid, uid, gid = creds or (0, -1, -1)
            self.head += pad + size
            self.entries.append(Entry(Record(payload, address, recv_ns, pid, uid, gid), self.head))
            self.pending += 1
            self.seq += 1

    @rule(
        blocks=BLOCKS,
        address=ADDRESSES,
        slack=st.integers(0, 7),
        recv_ns=st.integers(0, 2**63 - 1),
        creds=CREDS,
    )
    def try_put(
        self,
        blocks: int,
        address: bytes,
        slack: int,
        recv_ns: int,
        creds: tuple[int, int, int] | None,
    ) -> None:
        self._put(blocks, address, slack, recv_ns, creds)

    @rule(records=st.lists(st.tuples(BLOCKS, ADDRESSES, st.integers(0, 7)), max_size=40))
    @precondition(lambda self: self.taken == 0)
    def stream(self, records: list[tuple[int, bytes, int]]) -> None:
        """Steady traffic: put, publish, take the oldest, ack it; goes round the ring."""
        for blocks, address, slack in records:
            creds = (self.seq + 1, 1000, 1000) if self.seq % 2 else None
            self._put(blocks, address, slack, self.seq, creds)
            self.publish()
            self.take()
            if self.taken:
                self.ack()

    @rule()
    def publish(self) -> None:
        assert self.producer is not None
        assert self.producer.publish() is (self.pending > 0 and self.sleeping)
        self.published = len(self.entries)
        self.pending = 0

    @rule(sleeping=st.booleans())
    def set_sleeping(self, sleeping: bool) -> None:
        assert self.consumer is not None
        self.consumer.set_sleeping(sleeping)
        self.sleeping = sleeping

    @rule()
    def take(self) -> None:
        assert self.consumer is not None
        record = self.consumer.take()
        if record is None:
            assert self.taken >= self.published, "a published record is not visible"
            return
        assert self.taken < len(self.entries), f"a record out of nowhere: {record!r}"
        assert record == self.entries[self.taken].record
        self.taken += 1
        self.published = max(self.published, self.taken)

    @rule()
    @precondition(lambda self: ACK_BATCHES or self.taken == 1)
    def ack(self) -> None:
        assert self.consumer is not None
        assert self.consumer.ack() is (self.waiting != self.signalled)
        self.signalled = self.waiting
        if self.taken:
            self.tail = self.entries[self.taken - 1].end
        del self.entries[: self.taken]
        self.published -= self.taken
        self.taken = 0

    @rule()
    def wait_for_space(self) -> None:
        assert self.producer is not None
        self.producer.wait_for_space()
        self.waiting += 1

    @rule(fresh_view=st.booleans())
    def rewind(self, fresh_view: bool) -> None:
        """The worker dies; its replacement (a new view, or the same one) starts again."""
        assert self.producer is not None
        assert self.consumer is not None
        if fresh_view:
            self.consumer.close()
            self.consumer = Ring(self.producer.fd)
            self.consumer.set_sleeping(self.sleeping)
        assert self.consumer.rewind() == self.taken
        self.taken = 0

    @rule()
    def close_and_drain(self) -> None:
        assert self.producer is not None
        assert self.consumer is not None
        self.producer.publish()
        self.producer.close_producer()
        rest = self.entries[self.taken :]
        for entry in rest:
            assert not self.consumer.is_drained()
            assert self.consumer.take() == entry.record
        assert self.consumer.take() is None
        assert self.consumer.is_drained()
        self.teardown()
        self.create(self.cap)  # go on with a new ring of the same size

    @invariant()
    def counters_agree(self) -> None:
        if self.producer is None or self.consumer is None:
            return
        assert self.consumer.depth() == self.producer.depth()
        assert self.consumer.used_bytes() == self.producer.used_bytes()
        assert self.consumer.is_drained() is False
        if self.published == len(self.entries):
            assert self.consumer.depth() == len(self.entries)
            assert self.consumer.used_bytes() == self.head - self.tail
            assert self.consumer.has_unread() is (self.taken < len(self.entries))
        assert 0 <= self.consumer.used_bytes() <= self.cap

    def teardown(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.producer is not None:
            self.producer.close()
            os.close(self.producer.fd)


RingMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingAsFifo = RingMachine.TestCase


def test_shedding_is_asked_by_the_consumer_and_forgotten_by_a_reset(pair: Pair) -> None:
    producer, consumer = pair.producer, pair.consumer
    assert not producer.shedding
    consumer.set_shedding(True)
    assert producer.shedding
    assert put(producer, 0, 10)  # advisory: the ring still takes what the producer puts
    consumer.set_shedding(False)
    assert not producer.shedding
    consumer.set_shedding(True)
    consumer.mark_corrupt()
    assert not producer.routable()
    consumer.reset()
    assert not producer.shedding

"""Packing: a datagram without a key goes to the first ring whose worker keeps up.

How much a ring takes (:func:`ugram.ring.room`) from the words its consumer writes, and the
receiver's two placements by it, the C helper's drain and :class:`Routes`, record for record.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ugram import speedups
from ugram.receiver import mmsg
from ugram.receiver.routing import Routes
from ugram.ring import ACKED, COST_NS, TAIL, Ring, note_cost, room
from ugram.stats import Slot

PACK = 10_000_000_000  # 10 s: a test's own delays never age a record past it
LIMIT = 64


@pytest.fixture
def ring() -> Iterator[Ring]:
    ring = Ring.create(4096)
    try:
        yield ring
    finally:
        ring.close()
        os.close(ring.fd)


def hold(ring: Ring, records: int, recv_ns: int) -> None:
    """Put ``records`` records received at ``recv_ns`` that no consumer acknowledged."""
    for i in range(records):
        assert ring.try_put(b"held %d" % i, b"", recv_ns)


def test_an_empty_ring_of_an_unknown_cost_takes_one(ring: Ring) -> None:
    assert room(ring, time.time_ns(), PACK) == 1


def test_a_ring_takes_what_its_worker_gets_through_in_the_window_less_what_it_holds(
    ring: Ring,
) -> None:
    ring.ctl[COST_NS] = PACK // 10
    assert room(ring, time.time_ns(), PACK) == 10
    hold(ring, 4, time.time_ns())
    assert room(ring, time.time_ns(), PACK) == 6
    hold(ring, 8, time.time_ns())
    assert room(ring, time.time_ns(), PACK) == 0  # 12 held: more than 10 a window


def test_a_slow_worker_still_takes_one_record_when_idle(ring: Ring) -> None:
    ring.ctl[COST_NS] = 3 * PACK  # a record takes it longer than the window
    assert room(ring, time.time_ns(), PACK) == 1
    hold(ring, 1, time.time_ns())
    assert room(ring, time.time_ns(), PACK) == 0


def test_a_ring_whose_oldest_record_waits_past_the_window_takes_none(ring: Ring) -> None:
    ring.ctl[COST_NS] = 1  # a cost that would say "a billion more"
    now = time.time_ns()
    hold(ring, 1, now - PACK - 1)
    assert room(ring, now, PACK) == 0
    assert room(ring, now - 2, PACK) > 0  # just inside the window


def test_the_oldest_record_is_found_after_a_pad_marker() -> None:
    ring = Ring.create(256)
    consumer = Ring(ring.fd)
    try:
        now = time.time_ns()
        assert ring.try_put(b"x" * 150, b"", now)  # 184 bytes: 72 left at the end
        batch = consumer.take_batch(1)
        consumer.finish(batch[-1][1])  # acknowledged: the tail stands at 184
        assert ring.try_put(b"y" * 60, b"", now - PACK - 1)  # 96 bytes: a pad, then at 0
        assert int(ring.ctl[TAIL]) == 184
        assert room(ring, now, PACK) == 0  # its receive time read at 0, not at the pad
    finally:
        consumer.close()
        ring.close()
        os.close(ring.fd)


@pytest.mark.parametrize("tail", [3, 10**9], ids=["misaligned", "past-the-head"])
def test_an_impossible_tail_gives_no_room(ring: Ring, tail: int) -> None:
    hold(ring, 1, time.time_ns())
    ring.ctl[TAIL] = tail
    assert room(ring, time.time_ns(), PACK) == 0


def test_a_count_behind_the_acknowledged_one_is_no_record_held(ring: Ring) -> None:
    ring.ctl[COST_NS] = PACK // 5
    hold(ring, 2, time.time_ns())
    ring.ctl[ACKED] = 99  # written by a worker: garbage must not underflow into room
    assert room(ring, time.time_ns(), PACK) == 5


def test_the_cost_is_a_moving_average_of_each_batch_per_record(ring: Ring) -> None:
    note_cost(ring, 8_000, 0)  # an empty batch says nothing
    assert ring.ctl[COST_NS] == 0
    note_cost(ring, 8_000, 4)
    assert ring.ctl[COST_NS] == 2_000  # the first batch: taken as it is
    note_cost(ring, 40_000, 4)
    assert ring.ctl[COST_NS] == (3 * 2_000 + 10_000) // 4
    note_cost(ring, 0, 7)
    assert ring.ctl[COST_NS] == (3 * 4_000 + 1) // 4  # never 0: that means "not known"


def test_a_reset_forgets_the_cost(ring: Ring) -> None:
    note_cost(ring, 5_000, 1)
    ring.mark_corrupt()
    ring.reset()  # a new worker on an emptied ring: its own cost is not known yet
    assert ring.ctl[COST_NS] == 0


# -- the C helper's drain places as Routes does --------------------------------------------------

needs_helper = pytest.mark.skipif(speedups.NATIVE is None, reason="the C helper was not built here")
COUNTED = (int(Slot.RECEIVED), int(Slot.BYTES), int(Slot.OVERSIZED), int(Slot.FDS_CLOSED))

# Per ring: (records held, their age: young or past the window, the worker's cost a record
# as a fraction of the window: 0 unknown, else window // per, whether its worker sheds).
RingState = tuple[int, bool, int, bool]
ring_states = st.tuples(
    st.integers(0, 3), st.booleans(), st.sampled_from([0, 1, 2, 3, 5, 8]), st.booleans()
)


@dataclass
class RingSet:
    """Rings in the given states, and an eventfd each for their consumers' wake-ups."""

    rings: list[Ring]
    wakes: list[int]

    def contents(self) -> list[list[bytes]]:
        """Each ring's payloads, as a consumer would read them."""
        return [payloads_of(ring) for ring in self.rings]


@contextlib.contextmanager
def ring_set(states: list[RingState], capacity: int = 8192) -> Iterator[RingSet]:
    now = time.time_ns()
    made = RingSet([], [])
    try:
        for held, old, per, _ in states:
            ring = Ring.create(capacity)
            made.rings.append(ring)
            made.wakes.append(os.eventfd(0, os.EFD_NONBLOCK))
            hold(ring, held, now - 2 * PACK if old else now)
            ring.ctl[COST_NS] = PACK // per if per else 0
        yield made
    finally:
        for ring in made.rings:
            ring.close()
            os.close(ring.fd)
        for fd in made.wakes:
            os.close(fd)


def routes_over(rings: RingSet, shedding: frozenset[int] = frozenset()) -> Routes:
    routes = Routes(rings.rings, rings.wakes, counters(), counters(), None)
    routes.pack_ns = PACK
    routes._shed(shedding)  # as sync_active takes it up from the rings
    routes.refresh_rooms(time.time_ns())
    return routes


def send_and_drain(
    server: tuple[socket.socket, Path],
    payloads: list[bytes],
    rings: RingSet,
    batch: int = 16,
    calls: int = 1,
) -> tuple[bool, int, int, int, int, int]:
    """Send ``payloads``, then one C drain of them into ``rings`` (all of them active)."""
    sock, path = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for payload in payloads:
            sender.sendto(payload, str(path))
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=batch)
    try:
        return rx.drain_native(
            ([r.mapping for r in rings.rings], rings.wakes), (len(rings.rings), 0),
            LIMIT, calls, (counters(), COUNTED), PACK,
        )  # fmt: skip
    finally:
        rx.close()


def payloads_of(ring: Ring) -> list[bytes]:
    reader = Ring(ring.fd, use_speedups=False)
    try:
        return [bytes(record.payload) for record, _ in reader.take_batch(99)]
    finally:
        reader.close()


def counters() -> memoryview:
    return memoryview(bytearray(64 * 8)).cast("Q")


# The socket is drained empty by each example: sharing it is safe. At most 8 datagrams:
# within net.unix.max_dgram_qlen (10 by default), so that no send blocks.
@needs_helper
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    states=st.lists(ring_states, min_size=1, max_size=4),
    sent=st.integers(1, 8),
    batch=st.integers(1, 8),
)
def test_the_drain_places_every_datagram_where_routes_would(
    server: tuple[socket.socket, Path], states: list[RingState], sent: int, batch: int
) -> None:
    shedding = frozenset(k for k, state in enumerate(states) if state[3])
    if len(shedding) == len(states):
        shedding = frozenset()  # every ring shedding: the receiver only counts (_shed_all)
    payloads = [b"d%d" % i for i in range(sent)]
    with ring_set(states) as fast, ring_set(states) as slow:
        # As Intake._drain_native calls it: over the rings that do not shed; `batch`
        # datagrams a receive, so that the rooms may be spent and judged again.
        taking = [k for k in range(len(states)) if k not in shedding]
        open_rings = RingSet([fast.rings[k] for k in taking], [fast.wakes[k] for k in taking])
        placed = send_and_drain(server, payloads, open_rings, batch=batch, calls=9)[2]
        assert placed == sent
        routes = routes_over(slow, shedding)
        for at, payload in enumerate(payloads):
            if at and not at % batch:  # a receive batch: as Intake._drain_batched does
                routes.rejudge(time.time_ns())
            assert routes.put(payload, b"", -1)
        assert fast.contents() == slow.contents()


@needs_helper
def test_the_drain_fills_the_rings_that_keep_up_then_deals_in_turn(
    server: tuple[socket.socket, Path],
) -> None:
    # Ring 0 takes 3 (its worker does 3 a window), ring 1 none (its oldest record waits past
    # the window), ring 2 one (idle, cost not known yet); then round-robin from ring 0.
    with ring_set([(0, False, 3, False), (1, True, 8, False), (0, False, 0, False)]) as rings:
        next_ring = send_and_drain(server, [b"d%d" % i for i in range(8)], rings)[1]
        assert rings.contents() == [
            [b"d0", b"d1", b"d2", b"d4", b"d7"],
            [b"held 0", b"d5"],
            [b"d3", b"d6"],
        ]
        assert next_ring == 1  # the turn goes on where round-robin stopped


# A ring's room counts records, not bytes: one with room but no space left for the record is
# passed over for the next with room (else round-robin), on both paths.
# 264 bytes: ring 0's three held records (40 bytes each) and one 88-byte datagram, or three
# datagrams in ring 1. Rooms: 8 - 3 = 5 and 4.
FITS = 264
SPACE_CASE = [(3, False, 8, False), (0, False, 4, False)]
SPACE_SENT = [b"d%d" % i + b"." * 50 for i in range(4)]
SPACE_EXPECTED = [[b"he", b"he", b"he", b"d0"], [b"d1", b"d2", b"d3"]]


def prefixes(rings: RingSet) -> list[list[bytes]]:
    return [[payload[:2] for payload in ring] for ring in rings.contents()]


@needs_helper
def test_the_drain_passes_over_a_ring_with_room_but_no_space(
    server: tuple[socket.socket, Path],
) -> None:
    with ring_set(SPACE_CASE, capacity=FITS) as rings:
        _, _, placed, _, count, _ = send_and_drain(server, SPACE_SENT, rings)
        assert (placed, count) == (4, 0)  # none left over for the Python path
        assert prefixes(rings) == SPACE_EXPECTED


def test_routes_pass_over_a_ring_with_room_but_no_space() -> None:
    with ring_set(SPACE_CASE, capacity=FITS) as rings:
        routes = routes_over(rings)
        for payload in SPACE_SENT:
            assert routes.put(payload, b"", -1)
        assert prefixes(rings) == SPACE_EXPECTED


def test_new_routes_while_the_rooms_are_counted_down_still_place() -> None:
    # Every worker behind: the count-down ran past the last ring. Then a ring leaves the
    # routes (SIGTTOU, or marked corrupt) before the rooms are judged again: a datagram
    # held meanwhile must still be placed (it once raised IndexError and wedged the reads).
    with ring_set([(1, True, 8, False), (1, True, 8, False)]) as rings:
        routes = routes_over(rings)
        assert routes.packed() == -1
        routes._route_to([0])
        assert routes.put(b"held", b"", -1)
        assert payloads_of(rings.rings[0]) == [b"held 0", b"held"]


def test_the_rooms_are_judged_again_a_quarter_window_on() -> None:
    # Ring 0's worker is behind (an old record in hand): ring 1 takes the records.
    with ring_set([(1, True, 3, False), (0, False, 3, False)]) as rings:
        consumer = Ring(rings.rings[0].fd)
        try:
            routes = routes_over(rings)
            assert routes.packed() == 1
            consumer.finish(consumer.take_batch(1)[-1][1])  # ring 0's worker caught up
            consumer.ctl[ACKED] = 1
            routes.rejudge(time.time_ns())  # not spent, not a quarter window on: as judged
            assert routes.packed() == 1
            routes.rejudge(time.time_ns() + PACK // 4 + 1)  # a quarter window on: again
            assert routes.packed() == 0
        finally:
            consumer.close()


def test_a_ring_that_begins_to_shed_loses_its_room_at_once() -> None:
    # Between two judgments (a held datagram placed after sync_active took up the change).
    with ring_set([(0, False, 3, False), (0, False, 3, False)]) as rings:
        routes = routes_over(rings)
        routes._shed(frozenset({0}))
        routes.rejudge(time.time_ns())
        assert routes.put(b"new", b"", -1)
        assert rings.contents() == [[], [b"new"]]


def test_rooms_spent_to_the_last_are_judged_again_at_the_next_batch() -> None:
    with ring_set([(0, False, 2, False), (0, False, 2, False)]) as rings:
        routes = routes_over(rings)  # 2 and 2
        assert [routes.packed() for _ in range(4)] == [0, 0, 1, 1]  # spent, not yet seen
        routes.rejudge(time.time_ns())  # the next batch
        assert routes.packed() == 0  # judged again (nothing was put: room as before)

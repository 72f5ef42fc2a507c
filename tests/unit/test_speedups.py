"""The C helper against its pure-Python twins: same ring bytes, same records, same counters.

Skipped where ``ugram._speedups`` was not built (no C compiler at install time); CI builds it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ugram import speedups
from ugram.config import make_config
from ugram.doctor import check_speedups
from ugram.receiver import mmsg
from ugram.ring import ACKED, CONTROL_SIZE, HEAD, IN_HAND, PUBLISHED, TAIL, Record, Ring
from ugram.stats import COMMAND_RETIRE, LATENCY_BUCKETS, LATENCY_FIRST, LATENCY_SUM_NS, Slot

native = pytest.importorskip("ugram._speedups", reason="the C helper was not built here")

SLOTS = (
    int(Slot.COMMAND),
    COMMAND_RETIRE,
    int(Slot.PROGRESS),
    int(Slot.BUSY_SINCE_NS),
    int(Slot.HANDLED),
    int(Slot.HANDLER_ERRORS),
    int(Slot.INVALID),
    LATENCY_FIRST,
    LATENCY_BUCKETS,
    LATENCY_SUM_NS,
)


def new_ring(capacity: int) -> Ring:
    return Ring.create(capacity)


def close_ring(ring: Ring) -> None:
    ring.close()
    os.close(ring.fd)


def ring_bytes(ring: Ring) -> bytes:
    """The record area and the producer's counters: what a consumer can observe."""
    return bytes(ring.data) + bytes(ring.ctl[HEAD : PUBLISHED + 1])


def test_switch_and_description_follow_the_setting() -> None:
    assert speedups.native(True) is native
    assert speedups.native(False) is None
    assert "compiled" in speedups.describe(True)
    assert "pure Python" in speedups.describe(False)


# -- consumer: take_records == Ring._read ------------------------------------------------------

RECORDS = st.lists(
    st.tuples(
        st.binary(max_size=300),
        st.sampled_from([b"", b"\0abstract", b"/tmp/ug/sender.sock"]),
        st.integers(0, 2**63 - 1),
        st.none()
        | st.tuples(st.integers(1, 2**22), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    ),
    max_size=40,
)


@given(skip=st.integers(0, 3000), records=RECORDS, limit=st.integers(1, 50))
def test_native_take_batch_reads_what_python_reads(
    skip: int, records: list[tuple[bytes, bytes, int, tuple[int, int, int] | None]], limit: int
) -> None:
    ring = new_ring(4096)
    python_view = Ring(ring.fd, use_speedups=False)
    native_view = Ring(ring.fd, use_speedups=True)
    try:
        assert native_view.native
        assert not python_view.native
        # Move the ring's start so that records wrap round its end.
        if skip and ring.try_put(b"x" * skip, b"", 0):
            for view in (python_view, native_view):
                assert view.take_batch(1)
            python_view.finish(python_view.read_position)
        for payload, address, recv_ns, creds in records:
            if not ring.try_put(payload, address, recv_ns, creds):
                break
        ring.publish()
        expected = python_view.take_batch(limit)
        got = native_view.take_batch(limit)
        assert got == expected
        assert all(type(record) is Record for record, _ in got)
        assert native_view.read_position == python_view.read_position
    finally:
        python_view.close()
        native_view.close()
        close_ring(ring)


# -- producer: put_scratch == try_put of each slot --------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()


def send_from(path: Path, payloads: list[bytes], bind: str | None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        if bind is not None:
            sender.bind(bind)
        for payload in payloads:
            sender.sendto(payload, str(path))


LIMIT = 200


def test_put_scratch_writes_the_bytes_try_put_writes(
    server: tuple[socket.socket, Path], tmp_path: Path
) -> None:
    sock, path = server
    payloads = [b"", b"a", b"b" * LIMIT, b"c" * (LIMIT + 1), b"d" * 77]
    send_from(path, payloads, None)
    send_from(path, [b"from a path"], str(tmp_path / "snd.sock"))
    send_from(path, [b"from an abstract name"], f"\0ugram-test-{os.getpid()}")
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16)
    fast, slow = new_ring(8192), new_ring(8192)
    try:
        count = rx.receive()
        assert count == len(payloads) + 2

        following, placed, nbytes, oversized = fast.put_scratch(
            rx.area, rx.native_layout, (0, count), LIMIT, 1234
        )

        kept = [i for i in range(count) if rx.length(i) <= LIMIT and not rx.truncated(i)]
        for i in kept:
            assert slow.try_put(rx.payload(i, rx.length(i)), rx.address(i), 1234)
        assert (following, placed, oversized) == (count, len(kept), 1)
        assert nbytes == sum(rx.length(i) for i in kept)
        assert ring_bytes(fast) == ring_bytes(slow)
        assert rx.desc[mmsg.PLACED] == count
        assert fast.publish() is False  # nobody sleeps; records were counted as pending
    finally:
        rx.close()
        close_ring(fast)
        close_ring(slow)


def test_put_scratch_stops_at_a_full_ring_and_marks_only_what_it_placed(
    server: tuple[socket.socket, Path],
) -> None:
    sock, path = server
    send_from(path, [bytes([i]) * 100 for i in range(10)], None)  # 136 bytes a record
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16)
    ring = new_ring(512)
    try:
        count = rx.receive()
        following, placed, _, _ = ring.put_scratch(rx.area, rx.native_layout, (0, count), LIMIT, 0)
        assert (following, placed) == (3, 3)
        assert rx.desc[mmsg.PLACED] == 3
        assert rx.unplaced() == list(range(3, count))
        reader = Ring(ring.fd)
        assert [r.payload for r, _ in reader.take_batch(99)] == [bytes([i]) * 100 for i in range(3)]
        reader.close()
    finally:
        rx.close()
        close_ring(ring)


def test_native_reset_matches_the_python_reset(server: tuple[socket.socket, Path]) -> None:
    sock, path = server
    receivers = [
        mmsg.BatchReceiver(sock.fileno(), LIMIT, 64, batch=8, use_speedups=flag)
        for flag in (True, False)
    ]
    try:
        for rx in receivers:
            send_from(path, [b"x"] * 5, None)
            assert rx.receive() == 5
            rx.mark_placed(4)
            rx.complete(5)
        # The fields a reset writes (the rest are pointers, which differ between mappings).
        fast, slow = (
            [rx.fields[i * mmsg.STRIDE + f] for i in range(8) for f in (mmsg.LEN, mmsg.NAMELEN)]
            + [rx.headers[i].msg_hdr.msg_controllen for i in range(8)]
            for rx in receivers
        )
        assert fast == slow
        assert fast[0] == mmsg.SENTINEL
        assert [rx.desc[mmsg.PLACED] for rx in receivers] == [0, 0]
        assert all(rx.unplaced() == [] for rx in receivers)
    finally:
        for rx in receivers:
            rx.close()


# -- worker: run_records ------------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.seen: list[object] = []
        self.errors: list[BaseException] = []
        self.invalid: list[BaseException] = []

    def call(self, message: object) -> None:
        self.seen.append(message)
        if message == b"boom":
            raise RuntimeError("handler failed")

    def decode(self, payload: bytes) -> object:
        if payload == b"garbage":
            raise ValueError("not a message")
        return payload

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    def on_invalid(self, exc: BaseException) -> None:
        self.invalid.append(exc)


@pytest.fixture
def loaded() -> Iterator[tuple[Ring, list[tuple[Record, int]]]]:
    ring = new_ring(8192)
    for payload in (b"one", b"boom", b"garbage", b"four", b"five"):
        assert ring.try_put(payload, b"", 1)  # received long ago: the slowest bucket
    ring.publish()
    consumer = Ring(ring.fd)
    try:
        yield consumer, consumer.take_batch(99)
    finally:
        consumer.close()
        close_ring(ring)


def run(
    ring: Ring, batch: list[tuple[Record, int]], calls: Calls, counters: memoryview, allowance: int
) -> int:
    handled: int = native.run_records(
        batch,
        ring.ctl,
        counters,
        SLOTS,
        calls.call,
        calls.call,
        calls.decode,
        (ValueError,),
        calls.on_invalid,
        calls.on_error,
        allowance,
    )
    return handled


def test_run_records_counts_and_acknowledges_like_the_python_loop(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    ring, batch = loaded
    counters = memoryview(bytearray(64 * 8)).cast("Q")
    calls = Calls()

    assert run(ring, batch, calls, counters, 99) == 5

    assert calls.seen == [b"one", b"boom", b"four", b"five"]
    assert [str(e) for e in calls.errors] == ["handler failed"]
    assert [str(e) for e in calls.invalid] == ["not a message"]
    assert counters[Slot.PROGRESS] == 5
    assert counters[Slot.HANDLED] == 4  # an undecodable record is invalid, not handled
    assert counters[Slot.HANDLER_ERRORS] == 1
    assert counters[Slot.INVALID] == 1
    assert ring.ctl[TAIL] == ring.ctl[IN_HAND] == batch[-1][1]
    assert ring.ctl[ACKED] == 5
    assert counters[LATENCY_FIRST + LATENCY_BUCKETS] == 5  # decades old: the overflow bucket
    assert counters[LATENCY_SUM_NS] > 0


def test_run_records_stops_at_retire_and_at_the_allowance(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    ring, batch = loaded
    counters = memoryview(bytearray(64 * 8)).cast("Q")
    calls = Calls()

    assert run(ring, batch, calls, counters, 2) == 2
    assert ring.ctl[TAIL] == batch[1][1]
    counters[Slot.COMMAND] = COMMAND_RETIRE
    # Told to retire: the first record of a call is still handled, then it stops.
    assert run(ring, batch[2:], calls, counters, 99) == 1
    assert counters[Slot.PROGRESS] == 3


def test_run_records_lets_system_exit_through_with_the_record_in_hand(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    ring, batch = loaded
    counters = memoryview(bytearray(64 * 8)).cast("Q")

    def leave(message: object) -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        native.run_records(
            batch, ring.ctl, counters, SLOTS, leave, leave, None, (), print, print, 99
        )
    assert ring.ctl[IN_HAND] == batch[0][1]
    assert ring.ctl[TAIL] == 0  # not acknowledged: a replacement handles it again


def test_native_functions_refuse_buffers_that_are_not_rings() -> None:
    with pytest.raises(ValueError, match="not a ring"):
        native.take_records(bytearray(CONTROL_SIZE + 64), 0, 0, 1, Record)
    with pytest.raises(TypeError):
        native.take_records(bytearray(CONTROL_SIZE + 64), 0, 0, 1, dict)


def test_doctor_says_which_loops_run() -> None:
    on, off = (
        check_speedups(make_config(speedups=True)),
        check_speedups(make_config(speedups=False)),
    )
    assert (on.level, off.level) == ("ok", "info")
    assert "compiled" in on.title
    assert "pure Python" in off.title

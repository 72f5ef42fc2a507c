"""The C helper against its pure-Python twins: same ring bytes, same records, same counters.

Skipped where ``ugram._speedups`` was not built (no C compiler at install time); CI builds it.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ugram import speedups
from ugram.config import make_config
from ugram.doctor import check_speedups
from ugram.errors import RingCorruptError
from ugram.receiver import mmsg
from ugram.receiver.admission import ANCILLARY_SIZE, SCM_CREDENTIALS
from ugram.ring import (
    ACKED,
    CONTROL_SIZE,
    HEAD,
    IN_HAND,
    J_ACKED,
    J_ERRORS,
    J_HANDLED,
    J_INVALID,
    PUBLISHED,
    TAIL,
    Record,
    Ring,
)
from ugram.stats import (
    COMMAND_RETIRE,
    LATENCY_BUCKETS,
    LATENCY_FIRST,
    LATENCY_SUM_NS,
    Slot,
    observe_latency,
)

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
    ring = Ring.create(4096)
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


@given(
    skip=st.integers(0, 3000),
    records=RECORDS,
    limit=st.integers(1, 50),
    max_bytes=st.integers(1, 1200),
)
def test_take_batch_bounds_payload_bytes_and_loses_none(
    skip: int,
    records: list[tuple[bytes, bytes, int, tuple[int, int, int] | None]],
    limit: int,
    max_bytes: int,
) -> None:
    ring = Ring.create(4096)
    views = [Ring(ring.fd, use_speedups=False), Ring(ring.fd, use_speedups=True)]
    try:
        if skip and ring.try_put(b"x" * skip, b"", 0):  # records wrap round the ring's end
            for view in views:
                assert view.take_batch(1)
            views[0].finish(views[0].read_position)
        stored: list[bytes] = []
        for payload, address, recv_ns, creds in records:
            if not ring.try_put(payload, address, recv_ns, creds):
                break
            stored.append(payload)
        ring.publish()
        seen: list[list[list[bytes]]] = [[], []]
        for view, batches in zip(views, seen, strict=True):
            while batch := view.take_batch(limit, max_bytes):
                batches.append([record.payload for record, _ in batch])
        assert seen[0] == seen[1]  # the C helper splits where the Python reader does
        assert [payload for batch in seen[0] for payload in batch] == stored  # once each
        for batch in seen[0]:
            assert len(batch) <= limit
            assert len(batch) == 1 or sum(map(len, batch)) <= max_bytes
        for batch, following in zip(seen[0], seen[0][1:], strict=False):
            # As full as the bounds allow: the next record did not fit.
            if len(batch) < limit:
                assert sum(map(len, batch)) + len(following[0]) > max_bytes
    finally:
        for view in views:
            view.close()
        close_ring(ring)


# -- receiver: drain == recvmmsg + try_put of each slot ----------------------------------------


def send_from(path: Path, payloads: list[bytes], bind: str | None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        if bind is not None:
            sender.bind(bind)
        for payload in payloads:
            sender.sendto(payload, str(path))


def send_mix(path: Path, tmp_path: Path, tag: str) -> None:
    """Unbound, path-bound and abstract senders; empty, exact-limit and oversized payloads."""
    send_from(path, [b"", b"a", b"b" * LIMIT, b"c" * (LIMIT + 1), b"d" * 77], None)
    send_from(path, [b"from a path"], str(tmp_path / f"{tag}.sock"))
    send_from(path, [b"from an abstract name"], f"\0ugram-test-{os.getpid()}-{tag}")


@pytest.fixture
def wake() -> Iterator[int]:
    """An eventfd like the ones the receiver wakes sleeping workers with."""
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def new_counters() -> memoryview:
    return memoryview(bytearray(64 * 8)).cast("Q")


def records_of(ring: Ring) -> list[tuple[Record, int]]:
    """What a consumer reads, receive times aside (they differ between two receptions)."""
    reader = Ring(ring.fd, use_speedups=False)
    try:
        return [(record._replace(recv_ns=0), end) for record, end in reader.take_batch(99)]
    finally:
        reader.close()


LIMIT = 200
COUNTED = (int(Slot.RECEIVED), int(Slot.BYTES), int(Slot.OVERSIZED), int(Slot.FDS_CLOSED))
MIX = 7  # datagrams send_mix sends
MIX_KEPT = 6  # all but the oversized one


def test_drain_writes_the_records_try_put_writes(
    server: tuple[socket.socket, Path], tmp_path: Path, wake: int
) -> None:
    sock, path = server
    fast_rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16, use_speedups=True)
    slow_rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16, use_speedups=False)
    fast, slow = Ring.create(8192), Ring.create(8192)
    try:
        send_mix(path, tmp_path, "fast")
        counters = new_counters()
        empty, next_ring, placed, oversized, count, _ = fast_rx.drain_native(
            ([fast.mapping], [wake]), (1, 0), LIMIT, 1, (counters, COUNTED)
        )
        assert (empty, next_ring, placed, oversized, count) == (False, 0, MIX_KEPT, 1, 0)
        assert fast_rx.unplaced() == []  # the slots were readied for the next call
        assert fast_rx.desc[mmsg.PLACED] == 0
        assert counters[Slot.RECEIVED] == MIX
        assert counters[Slot.OVERSIZED] == 1

        send_mix(path, tmp_path, "slow")
        assert slow_rx.receive() == MIX
        kept = [i for i in range(MIX) if slow_rx.length(i) <= LIMIT]
        for i in kept:
            assert slow.try_put(slow_rx.payload(i, slow_rx.length(i)), slow_rx.address(i), 0)
        assert counters[Slot.BYTES] == sum(slow_rx.length(i) for i in kept)

        fast_records, slow_records = records_of(fast), records_of(slow)
        assert len(fast_records) == MIX_KEPT
        # Same records at the same positions, but for the sender's name (two sockets).
        for (got, got_end), (want, want_end) in zip(fast_records, slow_records, strict=True):
            assert got_end == want_end
            assert got.payload == want.payload
            assert len(got.address) == len(want.address)
            assert got.address[:1] == want.address[:1]
        assert fast_records[-2][0].address == str(tmp_path / "fast.sock").encode()
        assert fast_records[-1][0].address == f"\0ugram-test-{os.getpid()}-fast".encode()
        assert fast.ctl[PUBLISHED] == MIX_KEPT
    finally:
        fast_rx.close()
        slow_rx.close()
        close_ring(fast)
        close_ring(slow)


def send_as(path: Path, payloads: list[bytes], creds: tuple[int, int, int]) -> None:
    """Send with explicit SCM_CREDENTIALS (the kernel checks them: root may name any ids)."""
    control = [(socket.SOL_SOCKET, SCM_CREDENTIALS, struct.pack("iII", *creds))]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for payload in payloads:
            sender.sendmsg([payload], control, 0, str(path))


# As root, ids that differ from each other and from 0, so a field mixed up shows.
SENDER = (os.getpid(), 1234, 5678) if os.geteuid() == 0 else (os.getpid(), os.getuid(), os.getgid())


def drain_into(rx: mmsg.BatchReceiver, ring: Ring, wake: int) -> tuple[int, int, int]:
    """(placed, count, following) of one drain into ``ring``."""
    _, _, placed, _, count, following = rx.drain_native(
        ([ring.mapping], [wake]), (1, 0), LIMIT, 1, (new_counters(), COUNTED)
    )
    return placed, count, following


def creds_of(ring: Ring) -> list[tuple[bytes, tuple[int, int, int]]]:
    return [(r.payload, (r.pid, r.uid, r.gid)) for r, _ in records_of(ring)]


def test_drain_carries_each_senders_credentials_like_the_python_path(
    server: tuple[socket.socket, Path], wake: int
) -> None:
    sock, path = server
    fast_rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=True)
    slow_rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=False)
    ring = Ring.create(8192)
    none = (0, -1, -1)  # a record without credentials
    try:
        # SO_PASSCRED off: the kernel hands no ancillary data and sets each slot's control
        # length to 0; the drain must give the slots their room back for the next call.
        send_from(path, [b"before"], None)
        assert drain_into(fast_rx, ring, wake) == (1, 0, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        send_as(path, [b"one", b"two"], SENDER)
        assert drain_into(fast_rx, ring, wake) == (2, 0, 0)
        assert creds_of(ring) == [(b"before", none), (b"one", SENDER), (b"two", SENDER)]

        send_as(path, [b"three"], SENDER)  # the Python twin reads the same from its slot
        assert slow_rx.receive() == 1
        assert mmsg.credentials_from_control(slow_rx.control(0), SCM_CREDENTIALS) == SENDER
    finally:
        fast_rx.close()
        slow_rx.close()
        close_ring(ring)


SO_TIMESTAMPNS = 35  # Linux (asm-generic/socket.h); the socket module does not name it


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python"])
def test_credentials_survive_a_time_stamp_before_them(
    server: tuple[socket.socket, Path], wake: int, compiled: bool
) -> None:
    sock, path = server
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # as systemd's Timestamping=
    send_as(path, [b"stamped"], SENDER)
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=compiled)
    ring = Ring.create(8192)
    try:
        if compiled:
            assert drain_into(rx, ring, wake) == (1, 0, 0)
            assert creds_of(ring) == [(b"stamped", SENDER)]
        else:
            assert rx.receive() == 1
            assert mmsg.credentials_from_control(rx.control(0), SCM_CREDENTIALS) == SENDER
    finally:
        rx.close()
        close_ring(ring)


def test_a_full_ring_leaves_the_rest_of_the_batch_with_its_credentials(
    server: tuple[socket.socket, Path], wake: int
) -> None:
    sock, path = server
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    send_as(path, [bytes([i]) * 100 for i in range(5)], SENDER)  # 136 bytes a record
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=True)
    ring = Ring.create(512)
    try:
        assert drain_into(rx, ring, wake) == (3, 5, 3)
        assert [creds for _, creds in creds_of(ring)] == [SENDER] * 3
        # The caller places slots 3 and 4 (Receiver._place_slots): their credentials wait.
        for i in (3, 4):
            assert mmsg.credentials_from_control(rx.control(i), SCM_CREDENTIALS) == SENDER
        rx.complete(5)
        assert rx.unplaced() == []
    finally:
        rx.close()
        close_ring(ring)


# -- descriptors senders pass are closed, never kept ------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send_fds(path: Path, payloads: list[bytes], fds: list[int]) -> None:
    """Send each payload with ``fds`` attached (SCM_RIGHTS)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(str(path))
        for payload in payloads:
            socket.send_fds(sender, [payload], fds)


@pytest.fixture
def passed() -> Iterator[list[int]]:
    """Twenty descriptors to pass (of /dev/null), closed at the end."""
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def receive_closing(rx: mmsg.BatchReceiver, wake: int, compiled: bool) -> tuple[int, list[bytes]]:
    """(descriptors closed, payloads delivered) of one receive, compiled or in Python."""
    ring = Ring.create(8192)
    try:
        if compiled:
            counters = new_counters()
            *_, count, _ = rx.drain_native(
                ([ring.mapping], [wake]), (1, 0), LIMIT, 1, (counters, COUNTED)
            )
            assert count == 0
            return int(counters[Slot.FDS_CLOSED]), [r.payload for r, _ in records_of(ring)]
        count = rx.receive()
        payloads = [bytes(rx.payload(i, rx.length(i))) for i in range(count)]
        return rx.closed_fds, payloads
    finally:
        close_ring(ring)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python"])
def test_descriptors_senders_pass_are_closed_and_counted(
    server: tuple[socket.socket, Path], wake: int, passed: list[int], compiled: bool
) -> None:
    sock, path = server
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=compiled)
    try:
        before = open_fds()
        send_fds(path, [b"one", b"two", b"three"], passed[:3])
        assert receive_closing(rx, wake, compiled) == (9, [b"one", b"two", b"three"])
        assert open_fds() == before
    finally:
        rx.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python"])
def test_descriptors_that_fit_a_cut_control_buffer_are_closed(
    server: tuple[socket.socket, Path], wake: int, passed: list[int], compiled: bool
) -> None:
    sock, path = server
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=compiled)
    # Room after the credentials for this many; the kernel closes the rest (MSG_CTRUNC).
    fit = (ANCILLARY_SIZE - socket.CMSG_SPACE(12) - socket.CMSG_LEN(0)) // 4
    assert fit < len(passed)
    try:
        before = open_fds()
        send_fds(path, [b"a", b"b"], passed)
        assert receive_closing(rx, wake, compiled) == (2 * fit, [b"a", b"b"])
        assert open_fds() == before
    finally:
        rx.close()


SO_PASSPIDFD = 76  # Linux 6.5 (asm-generic/socket.h): each datagram brings a pidfd


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pure-python"])
def test_a_pidfd_the_kernel_passes_is_closed(
    server: tuple[socket.socket, Path], wake: int, compiled: bool
) -> None:
    sock, path = server
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)  # as a socket handed over may be
    except OSError:
        pytest.skip("this kernel has no SO_PASSPIDFD")
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, ANCILLARY_SIZE, 16, use_speedups=compiled)
    try:
        before = open_fds()
        send_from(path, [b"x", b"y"], None)
        assert receive_closing(rx, wake, compiled) == (2, [b"x", b"y"])
        assert open_fds() == before
    finally:
        rx.close()


def test_without_a_control_buffer_the_kernel_keeps_passed_descriptors_away(
    server: tuple[socket.socket, Path], passed: list[int]
) -> None:
    sock, path = server
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16)  # no credentials: no control
    try:
        before = open_fds()
        send_fds(path, [b"a"], passed[:5])
        assert rx.receive() == 1
        assert rx.fields[mmsg.FLAGS] & socket.MSG_CTRUNC  # the kernel dropped them itself
        assert (rx.closed_fds, open_fds()) == (0, before)
    finally:
        rx.close()


def test_drain_stops_at_a_full_ring_and_marks_only_what_it_placed(
    server: tuple[socket.socket, Path], wake: int
) -> None:
    sock, path = server
    send_from(path, [bytes([i]) * 100 for i in range(10)], None)  # 136 bytes a record
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16)
    ring = Ring.create(512)
    try:
        counters = new_counters()
        _, _, placed, _, count, following = rx.drain_native(
            ([ring.mapping], [wake]), (1, 0), LIMIT, 8, (counters, COUNTED)
        )
        assert (placed, count, following) == (3, 10, 3)
        assert counters[Slot.RECEIVED] == 3  # the caller counts the rest as it places them
        assert rx.desc[mmsg.PLACED] == 3
        assert rx.unplaced() == list(range(3, 10))  # left for the caller (or a successor)
        assert [r.payload for r, _ in records_of(ring)] == [bytes([i]) * 100 for i in range(3)]
    finally:
        rx.close()
        close_ring(ring)


def test_drain_deals_datagrams_to_the_active_rings_in_turn(
    server: tuple[socket.socket, Path], wake: int
) -> None:
    sock, path = server
    send_from(path, [b"%d" % i for i in range(8)], None)
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=4)
    rings = [Ring.create(4096) for _ in range(3)]
    maps = ([r.mapping for r in rings], [wake] * 3)
    try:
        empty, next_ring, placed, *_ = rx.drain_native(
            maps, (2, 1), LIMIT, 9, (new_counters(), COUNTED)
        )
        assert (empty, next_ring, placed) == (True, 1, 8)
        # As the Python path does: one datagram each in turn, not a batch each.
        assert [[r.payload for r, _ in records_of(ring)] for ring in rings] == [
            [b"1", b"3", b"5", b"7"],
            [b"0", b"2", b"4", b"6"],
            [],  # not active
        ]
        # Receive times follow receipt order across rings (a gauge's last value needs it).
        readers = [Ring(ring.fd) for ring in rings[:2]]
        stamped = sorted((r.recv_ns, r.payload) for view in readers for r, _ in view.take_batch(9))
        assert [payload for _, payload in stamped] == [b"%d" % i for i in range(8)]
        assert len({ns for ns, _ in stamped}) == 8
        for view in readers:
            view.close()
        again = rx.drain_native(maps, (2, 0), LIMIT, 9, (new_counters(), COUNTED))
        assert again[:3] == (True, 0, 0)
    finally:
        rx.close()
        for ring in rings:
            close_ring(ring)


@pytest.mark.parametrize("datagrams", [2, 10], ids=["small-batch", "big-batch-then-naps"])
def test_drain_wakes_a_sleeping_consumer(
    server: tuple[socket.socket, Path], wake: int, datagrams: int
) -> None:
    sock, path = server
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=16)
    ring = Ring.create(4096)
    consumer = Ring(ring.fd)
    producer = Ring(ring.fd)
    try:
        consumer.set_sleeping(True)
        send_from(path, [b"x"] * datagrams, None)
        empty, _, placed, *_ = rx.drain_native(
            ([ring.mapping], [wake]), (1, 0), LIMIT, 4, (new_counters(), COUNTED)
        )
        assert (empty, placed) == (True, datagrams)
        assert os.eventfd_read(wake) >= 1
        producer.resync_producer()
        assert producer.publish() is False  # published and woken already: nothing to redo
    finally:
        producer.close()
        consumer.close()
        rx.close()
        close_ring(ring)


def test_drain_refuses_a_corrupt_ring(server: tuple[socket.socket, Path], wake: int) -> None:
    sock, _ = server
    rx = mmsg.BatchReceiver(sock.fileno(), LIMIT, batch=4)
    ring = Ring.create(4096)
    try:
        ring.ctl[HEAD] = 12  # not 8-aligned: a write could run past the ring's end
        with pytest.raises(ValueError, match="corrupt ring"):
            rx.drain_native(([ring.mapping], [wake]), (1, 0), LIMIT, 1, (new_counters(), COUNTED))
    finally:
        rx.close()
        close_ring(ring)


def test_a_stale_build_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "API_VERSION", speedups.API_VERSION - 1)
    assert speedups._load() is None


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
    ring = Ring.create(8192)
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


def test_run_records_counts_through_the_journal_so_a_kill_is_settled_exactly(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    ring, batch = loaded
    counters = memoryview(bytearray(64 * 8)).cast("Q")
    counted = (int(Slot.HANDLED), int(Slot.HANDLER_ERRORS), int(Slot.INVALID))

    def dies_counted(record: object) -> None:
        ring.ctl[J_HANDLED] += 1  # counted as Worker._process counts, then killed
        raise SystemExit(9)

    with pytest.raises(SystemExit):
        native.run_records(
            batch, ring.ctl, counters, SLOTS, dies_counted, None, None, (), print, print, 99
        )
    assert (ring.ctl[IN_HAND], ring.ctl[TAIL]) == (batch[0][1], 0)  # in hand, unacknowledged
    assert counters[Slot.HANDLED] == 0  # counted in the journal only
    successor = Ring(ring.fd)
    try:
        successor.settle_journal(counters, counted)
        assert successor.rewind() == 1
        assert run(successor, successor.take_batch(99), Calls(), counters, 99) == 5
    finally:
        successor.close()
    assert [counters[slot] for slot in counted] == [4, 1, 1]  # the replay counted once
    assert [ring.ctl[j] for j in (J_HANDLED, J_ERRORS, J_INVALID)] == [4, 1, 1]
    assert ring.ctl[ACKED] == ring.ctl[J_ACKED] == 5


@pytest.mark.parametrize(
    ("damage", "limit"),
    [("zero-length", 10), ("head-behind", 2), ("head-unaligned", 3), ("past-head", 1)],
)
def test_take_records_refuses_a_corrupt_ring_like_the_python_reader(
    damage: str, limit: int
) -> None:
    """Each damage is found before any record past it is returned (``limit``: as many as a
    reader that does not check would return, valid-looking, without noticing)."""
    ring = Ring.create(4096)
    views = [Ring(ring.fd, use_speedups=flag) for flag in (True, False)]
    record = 8 * ((32 + 3 + 7) // 8)  # bytes a record of 3 takes
    try:
        for payload in (b"one", b"two", b"six"):
            assert ring.try_put(payload, b"", 1)
        if damage == "zero-length":
            ring.mapping[CONTROL_SIZE : CONTROL_SIZE + 4] = bytes(4)
        elif damage == "head-behind":  # read to the head, then the head moves back
            for view in views:
                assert len(view.take_batch(10)) == 3
            for payload in (b"abc", b"def", b"ghi"):  # valid records past the new head
                assert ring.try_put(payload, b"", 1)
            ring.ctl[HEAD] = record
        elif damage == "head-unaligned":
            ring.ctl[HEAD] += 4
        else:  # the first record's length runs past the head (not past the buffer)
            ring.ctl[HEAD] = record
            ring.mapping[CONTROL_SIZE : CONTROL_SIZE + 4] = (200).to_bytes(4, "little")
        for view in views:
            with pytest.raises(RingCorruptError):
                view.take_batch(limit)
    finally:
        for view in views:
            view.close()
        close_ring(ring)


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


def test_run_records_survives_a_handler_that_empties_its_batch(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    ring, batch = loaded
    seen: list[object] = []

    def meddle(message: object) -> None:
        seen.append(message)
        batch.clear()  # the loop works on a snapshot: no record pulled from under it

    done = native.run_records(
        batch, ring.ctl, new_counters(), SLOTS, meddle, meddle, None, (), print, print, 99
    )
    assert done == len(seen) == 5


# -- worker: batch handlers ---------------------------------------------------------------------


def test_decode_batch_leaves_out_and_counts_what_does_not_decode(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    _, batch = loaded
    counters = new_counters()
    calls = Calls()
    made: list[Record] = []

    def datagram(record: Record) -> tuple[str, bytes]:
        made.append(record)
        return ("dgram", record.payload)

    messages, dgrams = native.decode_batch(
        batch, calls.decode, (ValueError,), calls.on_invalid, datagram, counters, Slot.INVALID
    )

    assert messages == [b"one", b"boom", b"four", b"five"]
    assert dgrams == [("dgram", m) for m in messages]  # one per message, in step
    assert made == [record for record, _ in batch if record.payload != b"garbage"]
    assert [str(e) for e in calls.invalid] == ["not a message"]
    assert counters[Slot.INVALID] == 1
    # No decoder: the payloads themselves; no datagram factory: no datagrams.
    assert native.decode_batch(batch, None, (ValueError,), calls.on_invalid, None, counters, 0) == (
        [record.payload for record, _ in batch],
        [],
    )


def test_decode_batch_lets_other_errors_through(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    _, batch = loaded

    def broken(payload: bytes) -> object:
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        native.decode_batch(batch, broken, (ValueError,), print, None, new_counters(), 0)


def test_observe_batch_fills_the_histogram_like_observe_latency(
    loaded: tuple[Ring, list[tuple[Record, int]]],
) -> None:
    _, batch = loaded
    now = 5_000_000
    stamped = [
        (record._replace(recv_ns=now - lag), end)
        for (record, end), lag in zip(batch, (-1, 0, 1_500, 999_000_000, 10**15), strict=True)
    ]
    fast, slow = new_counters(), new_counters()
    native.observe_batch(stamped, now, fast, (LATENCY_FIRST, LATENCY_BUCKETS, LATENCY_SUM_NS))
    for record, _ in stamped:
        observe_latency(slow, now - record.recv_ns)
    assert fast.tolist() == slow.tolist()
    assert sum(fast[LATENCY_FIRST : LATENCY_FIRST + LATENCY_BUCKETS + 1]) == len(batch)


def test_decode_batch_edges(loaded: tuple[Ring, list[tuple[Record, int]]]) -> None:
    _, batch = loaded
    counters = new_counters()
    size = len(counters)
    with pytest.raises(ValueError, match="outside the counter block"):
        native.decode_batch(batch, None, (ValueError,), print, None, counters, size)
    last_slot = native.decode_batch(batch[:1], None, (ValueError,), print, None, counters, size - 1)
    assert last_slot == ([batch[0][0].payload], [])

    def leave(payload: bytes) -> object:
        raise SystemExit(3)

    with pytest.raises(SystemExit):  # as in the Python loop: only decode errors are caught
        native.decode_batch(batch, leave, (ValueError,), print, None, counters, 0)
    # Without a decoder, each payload gets its datagram too.
    messages, dgrams = native.decode_batch(batch, None, (), print, len, counters, 0)
    assert dgrams == [len(record) for record, _ in batch]
    assert len(messages) == len(batch)

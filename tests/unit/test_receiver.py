"""The receiver's read loop in one process, on a real socket and real rings, with the event
loop replaced by a script: each callback runs exactly when the test says, so the orders of
events that a busy machine produces only now and then are played out every time.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from ugram import speedups
from ugram.config import make_config
from ugram.health import receiver_frozen
from ugram.receiver import loop as receiver_loop
from ugram.receiver import mmsg
from ugram.receiver.loop import Receiver
from ugram.ring import Ring, record_size
from ugram.shm import create_shared_fd
from ugram.spec import ChildSpec
from ugram.stats import Slot, State, Stats, supervisor_block

RECORD = record_size(2, 0)  # "d0".."d8" from an unbound sender


class _Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ScriptedLoop:
    """The part of an event loop the receiver uses, run by hand."""

    soon: list[Callable[[], None]] = field(default_factory=list)
    readers: dict[int, Callable[[], None]] = field(default_factory=dict)
    stopped: bool = False

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        return _Timer()  # the safety-net poll: the script decides when space is looked at

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Bench:
    receiver: Receiver
    loop: ScriptedLoop
    consumer: Ring
    sender: socket.socket
    path: Path
    scratch: int
    seen: list[bytes] = field(default_factory=list)

    def send(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.sender.sendto(payload, str(self.path))

    def consume(self) -> None:
        """The worker handles (and acknowledges) every record in its ring."""
        ring = self.consumer
        while (record := ring.take()) is not None:
            self.seen.append(bytes(record.payload))
        ring.ack()

    def left_for_a_successor(self) -> list[bytes]:
        """What a receiver started now would recover from the scratch area."""
        if self.scratch < 0:
            return []
        area = mmsg.BatchReceiver(-1, 64, 0, 3, self.scratch)
        try:
            return [bytes(area.payload(i, area.length(i))) for i in area.unplaced()]
        finally:
            area.close()

    def run_soon(self) -> None:
        """Run the callbacks queued with call_soon (one loop iteration's worth)."""
        queued, self.loop.soon[:] = list(self.loop.soon), []
        for callback in queued:
            callback()

    def finish(self) -> None:
        """Let the workers and the receiver run until the receiver finished its drain."""
        space_fd = self.receiver.space_fd
        for _ in range(200):
            self.consume()
            if self.receiver.finished:
                return
            if self.loop.soon:
                self.run_soon()
            elif space_fd in self.loop.readers:
                self.loop.readers[space_fd]()
            elif self.receiver.sock.fileno() in self.loop.readers:
                self.loop.readers[self.receiver.sock.fileno()]()
        pytest.fail("the receiver never finished its drain")


PATHS = {
    "compiled": ({"receive_batch": 3, "speedups": True}, True),
    "pure-python": ({"receive_batch": 3, "speedups": False}, False),
    "recvfrom": ({"receive_batch": 1, "speedups": True}, False),
}


@pytest.fixture(params=sorted(PATHS))
def bench(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Bench]:
    """A receiver with one worker's ring, which holds three records."""
    options, native = PATHS[request.param]
    if native and speedups.NATIVE is None:
        pytest.skip("the C helper was not built here")
    # One read per pass (a batch of 3, or 3 recvfrom), as a flood that never runs the
    # socket dry ends passes: by the budget.
    monkeypatch.setattr(receiver_loop, "BATCH", 3)
    path = tmp_path / "s.sock"
    config = make_config(socket=str(path), workers=1, max_datagram=64, **options)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    rings = [Ring.create(3 * RECORD)]
    stats = Stats.create(supervisor_block(1) + 1)
    wakes = [os.eventfd(0, os.EFD_NONBLOCK) for _ in rings]
    space = os.eventfd(0, os.EFD_NONBLOCK)
    scratch = (
        create_shared_fd(mmsg.scratch_size(64, 0, config.receive_batch))
        if config.receive_batch > 1
        else -1
    )
    spec = ChildSpec(
        role="receiver",
        index=0,
        config=config,
        socket_fd=server.detach(),
        ring_fds=[ring.fd for ring in rings],
        wake_fds=wakes,
        space_fd=space,
        stats_fd=stats.fd,
        stats_block=0,
        control_block=supervisor_block(1),
        scratch_fd=scratch,
    )
    receiver = Receiver(spec)
    assert (receiver.batch is not None and receiver.batch.native) == native
    scripted = ScriptedLoop()
    receiver.loop = scripted  # type: ignore[assignment]
    scripted.add_reader(receiver.sock.fileno(), receiver.on_readable)  # as run() does
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.settimeout(5)
    try:
        yield Bench(receiver, scripted, Ring(rings[0].fd), sender, path, scratch)
    finally:
        sender.close()
        receiver.sock.close()
        # The mappings go with the process; the descriptors go now.
        for fd in spec.fds():
            if fd != spec.socket_fd:
                os.close(fd)


def test_a_drain_places_held_datagrams_before_reading_new_ones(bench: Bench) -> None:
    payloads = [b"d%d" % i for i in range(9)]
    bench.send(*payloads)
    bench.receiver.begin_drain()  # SIGTERM: a pass is queued, and the reader stays on
    # The pass fills the ring with d0, d1, d2 and stops short of empty (its budget), so it
    # queues another pass.
    bench.run_soon()
    assert bench.receiver.counters[Slot.RECEIVED] == 3
    # The socket is readable, so the reader's pass runs before the queued one: d3 finds
    # the ring full and is held (with the rest of its batch).
    bench.loop.readers[bench.receiver.sock.fileno()]()
    assert bench.receiver.pending[0].payload == b"d3"
    held = bench.left_for_a_successor()  # d3, d4, d5 with recvmmsg (none with recvfrom)
    bench.consume()  # the worker frees its ring...
    # ... before the queued pass runs: it must not read d4 or d6 and put it ahead of d3,
    # nor read into the scratch slots that keep d3 (and the rest) for a successor.
    bench.run_soon()
    assert bench.left_for_a_successor() == held
    bench.finish()
    assert bench.seen == payloads  # each once, in the order they were sent
    assert bench.receiver.counters[Slot.RECEIVED] == len(payloads)


def test_space_freed_just_before_the_wait_is_announced_is_used_at_once(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    payloads = [b"d%d" % i for i in range(6)]
    bench.send(*payloads)
    reader = bench.loop.readers[bench.receiver.sock.fileno()]
    reader()  # d0, d1, d2: the ring is full
    ring = bench.receiver.rings[0]
    announce = ring.wait_for_space

    def worker_frees_space_first() -> None:
        # The worker acknowledges everything after the receiver's put failed but before
        # it announced its wait: the worker sees no wait, so it signals nothing.
        bench.consume()
        announce()

    monkeypatch.setattr(ring, "wait_for_space", worker_frees_space_first)
    reader()  # d3 finds the ring full and is held
    assert bench.seen == payloads[:3]
    # No signal will come, yet the receiver must not sleep until its 5 ms poll: it looks
    # again after announcing, places what it held and reads on.
    assert not bench.receiver.pending
    assert bench.receiver.space_fd not in bench.loop.readers
    assert bench.receiver.sock.fileno() in bench.loop.readers
    bench.run_soon()
    bench.consume()
    assert bench.seen == payloads


def test_a_new_receiver_is_not_judged_on_its_predecessors_heartbeat(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    counters = bench.receiver.counters
    # What a receiver killed for freezing leaves in the block (the supervisor then resets
    # STATE and starts a new one on the same block).
    counters[Slot.HEARTBEAT_NS] = time.monotonic_ns() - 10 * 10**9
    counters[Slot.STATE] = State.EMPTY
    judged: list[tuple[int, bool]] = []

    class FirstLook(uvloop.Loop):  # type: ignore[misc]
        def run_forever(self) -> None:
            # The supervisor's liveness check, made the moment the receiver says it runs.
            now = time.monotonic_ns()
            judged.append((int(counters[Slot.STATE]), receiver_frozen(counters, 2.0, now)))

    monkeypatch.setattr(receiver_loop.uvloop, "new_event_loop", FirstLook)
    bench.receiver.run()
    assert judged == [(State.RUNNING, False)]

"""The receiver's read loop: drain the socket, reject what must not pass, fill the rings.

Per datagram the work is minimal: one ``recvfrom_into`` into a buffer one byte larger than
``max_datagram`` (so an oversized datagram is always detected, never passed on truncated),
a route decision and one copy into a ring. Heads are published once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

import setproctitle
import uvloop

from .. import logs
from ..ring import Ring
from ..spec import ChildSpec, parent_alive, spec_from_argv
from ..stats import Slot, State, Stats
from ..wake import clear_wake, signal_wake
from .admission import ANCILLARY_SIZE, Admission, parse_credentials
from .routing import make_router

log = logging.getLogger("ugram.receiver")

BATCH = 512  # datagrams per readiness event before yielding to the loop
SPACE_POLL = 0.005  # safety net: re-check ring space even if a wake-up was lost


class Receiver:
    """Reads the server socket in a uvloop loop and copies datagrams into worker rings."""

    def __init__(self, spec: ChildSpec) -> None:
        self.config = spec.config
        self.sock = socket.socket(fileno=spec.socket_fd)
        self.sock.setblocking(False)
        self.rings = [Ring(fd) for fd in spec.ring_fds]
        self.wake_fds = spec.wake_fds
        self.space_fd = spec.space_fd
        self.stats = Stats(spec.stats_fd)
        self.counters = self.stats.block(spec.stats_block)
        self.control = self.stats.block(spec.control_block)
        self.active = len(self.rings)
        self.router = make_router(self.config)
        self.buffer = bytearray(self.config.max_datagram + 1)
        self.view = memoryview(self.buffer)
        self.next_ring = 0
        self.pending: tuple[bytes, bytes, int, int, tuple[int, int, int] | None] | None = None
        self.admission = Admission(self.config)
        self.with_creds = self.config.wants_credentials
        if self.with_creds:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.blocked_since = 0
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._space_timer: asyncio.TimerHandle | None = None
        self._ppid = os.getppid()
        self._warn = logs.RateLimited(log)

    # -- reading ----------------------------------------------------------------------------

    def on_readable(self) -> None:
        """Drain the socket (up to a batch), admit, route and copy each datagram, publish."""
        self._sync_active()
        empty = self._drain_with_credentials() if self.with_creds else self._drain()
        self._publish()
        if self.pending is not None:
            self._block()
        elif empty and self.draining:
            self._finish()

    def _drain(self) -> bool:
        """Read up to a batch; True when the socket ran empty."""
        recv, buf, place = self.sock.recvfrom_into, self.buffer, self._place
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            if not place(n, addr, None):
                return False
        return False

    def _drain_with_credentials(self) -> bool:
        """Like :meth:`_drain`, with each sender's SCM_CREDENTIALS."""
        recv, buffers, place = self.sock.recvmsg_into, [self.buffer], self._place
        for _ in range(BATCH):
            try:
                n, ancdata, _, addr = recv(buffers, ANCILLARY_SIZE)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            if not place(n, addr, parse_credentials(ancdata)):
                return False
        return False

    def _place(self, n: int, addr: str | bytes | None, creds: tuple[int, int, int] | None) -> bool:
        """Check one datagram and copy it into a ring; False when it had to be held back."""
        c = self.counters
        # Counted per datagram, like the ring heads: after a kill, received minus what
        # reached a ring or a reject counter is exactly what the dead receiver held.
        c[Slot.RECEIVED] += 1
        if n > self.config.max_datagram:
            c[Slot.OVERSIZED] += 1
            self._warn.warning(
                "rejected a datagram larger than max_datagram=%d", self.config.max_datagram
            )
            return True
        if not self.admission.authorized(creds):
            c[Slot.UNAUTHORIZED] += 1
            self._warn.warning("rejected a datagram from unauthorized sender %s", creds)
            return True
        if not self.admission.within_rate(creds):
            c[Slot.RATE_LIMITED] += 1
            return True
        c[Slot.BYTES] += n
        payload = self.view[:n]
        target = self._route(payload)
        if target is None:
            c[Slot.INVALID] += 1
            self._warn.warning("rejected a datagram without route field %r", self.config.route_by)
            return True
        address = _encode_address(addr)
        if self._put(payload, address, target, creds=creds):
            return True
        self.pending = (bytes(payload), address, time.time_ns(), target, creds)
        return False

    def _sync_active(self) -> None:
        # SIGTTIN/SIGTTOU change how many rings are routed to; acknowledging the value tells
        # the supervisor when a retired ring will receive no more records.
        active = int(self.control[Slot.ACTIVE]) or len(self.rings)
        if active != self.active:
            self.active = active
            self.next_ring %= active
        self.counters[Slot.ACTIVE_SEEN] = active

    def _route(self, payload: memoryview) -> int | None:
        if self.router is not None:
            return self.router(payload, self.active)
        return -1  # round-robin over rings with room

    def _put(
        self,
        payload: memoryview | bytes,
        address: bytes,
        target: int,
        recv_ns: int | None = None,
        creds: tuple[int, int, int] | None = None,
    ) -> bool:
        ns = time.time_ns() if recv_ns is None else recv_ns
        rings = self.rings
        if target >= 0:  # routed by key: only that worker's ring keeps the key's order
            return rings[target].try_put(payload, address, ns, creds)
        count = self.active
        start = self.next_ring
        for step in range(count):
            index = (start + step) % count
            if rings[index].try_put(payload, address, ns, creds):
                self.next_ring = (index + 1) % count
                return True
        return False

    def _publish(self) -> None:
        for ring, wake_fd in zip(self.rings, self.wake_fds, strict=True):
            if ring.publish():
                signal_wake(wake_fd)

    # -- backpressure -----------------------------------------------------------------------

    def _block(self) -> None:
        """Every eligible ring is full: stop reading so the kernel queue applies backpressure."""
        assert self.loop is not None
        assert self.pending is not None
        self.loop.remove_reader(self.sock.fileno())
        self.blocked_since = time.monotonic_ns()
        self._arm_space_wait()

    def _arm_space_wait(self) -> None:
        assert self.loop is not None
        assert self.pending is not None
        target = self.pending[3]
        for index, ring in enumerate(self.rings[: self.active]):
            if target in (-1, index):
                ring.wait_for_space()
        self.loop.add_reader(self.space_fd, self.on_space)
        self._space_timer = self.loop.call_later(SPACE_POLL, self.on_space)

    def on_space(self) -> None:
        """A worker freed space (or the safety timer fired): place the held datagram."""
        assert self.loop is not None
        assert self.pending is not None
        self.loop.remove_reader(self.space_fd)
        if self._space_timer is not None:
            self._space_timer.cancel()
        clear_wake(self.space_fd)
        payload, address, recv_ns, target, creds = self.pending
        self._sync_active()
        if target >= self.active:  # its worker was retired (SIGTTOU) meanwhile: route again
            target = self._route(memoryview(payload)) or 0
            self.pending = (payload, address, recv_ns, target, creds)
        if not self._put(payload, address, target, recv_ns, creds):
            self._arm_space_wait()
            return
        self.pending = None
        self.counters[Slot.BLOCKED_NS] += time.monotonic_ns() - self.blocked_since
        self._publish()
        self.loop.add_reader(self.sock.fileno(), self.on_readable)
        self.loop.call_soon(self.on_readable)

    # -- lifecycle --------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """SIGTERM: read until the socket is empty, then close the rings and exit."""
        if self.draining:
            return
        self.draining = True
        self.counters[Slot.STATE] = State.DRAINING
        assert self.loop is not None
        if self.pending is None:
            self.loop.call_soon(self.on_readable)

    def _finish(self) -> None:
        assert self.loop is not None
        self.loop.remove_reader(self.sock.fileno())
        for ring, wake_fd in zip(self.rings, self.wake_fds, strict=True):
            ring.close_producer()
            signal_wake(wake_fd)
        self.counters[Slot.STATE] = State.STOPPED
        self.loop.stop()

    def _housekeeping(self) -> None:
        """Every 50 ms: notice a vanished supervisor, and a worker count changed while idle."""
        assert self.loop is not None
        if not parent_alive(self._ppid):
            log.error("supervisor is gone; receiver exiting")
            self.loop.stop()
            return
        self._sync_active()
        self.admission.housekeeping()
        if self.control[Slot.DRAIN] and not self.draining:
            self.begin_drain()
        self.loop.call_later(0.05, self._housekeeping)

    def run(self) -> None:
        """Run the read loop until drained (SIGTERM) or the supervisor disappears."""
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        loop.add_signal_handler(signal.SIGTERM, self.begin_drain)
        loop.add_reader(self.sock.fileno(), self.on_readable)
        loop.call_soon(self._housekeeping)
        self.counters[Slot.PID] = os.getpid()
        self.counters[Slot.STATE] = State.RUNNING
        try:
            loop.run_forever()
        finally:
            loop.close()


def _encode_address(addr: str | bytes | None) -> bytes:
    if not addr:
        return b""
    if isinstance(addr, bytes):
        return addr
    return os.fsencode(addr)


def main(argv: list[str]) -> int:
    """Receiver process entry point."""
    spec = spec_from_argv(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    setproctitle.setproctitle(f"ugram: receiver {spec.config.socket}")
    logs.configure_from(spec.config, "receiver", strict=False)
    Receiver(spec).run()
    return 0

"""The receiver process: one uvloop read loop on the socket, feeding the worker rings.

Reading, admission and placement are in :mod:`ugram.receiver.intake`, which rings are
routed to (and routing around a corrupt one) in :mod:`ugram.receiver.routing`. This module
runs them from the event loop and keeps what spans passes: backpressure (full rings stop the
reading, so the kernel queue fills and senders wait), the staged drain, and liveness.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
from collections import deque

import setproctitle
import uvloop

from .. import logs
from ..ordering import full_fence
from ..ring import Ring
from ..spec import ChildSpec, parent_alive, spec_from_argv
from ..stats import Slot, State, Stats
from ..wake import clear_wake, signal_wake
from .intake import Held, Intake
from .routing import Routes, make_router

log = logging.getLogger("ugram.receiver")

BATCH = 512  # datagrams per readiness event before yielding to the loop
_RECEIVED = int(Slot.RECEIVED)
SPACE_POLL = 0.005  # safety net: re-check ring space even if a wake-up was lost


class Receiver:
    """Reads the server socket in a uvloop loop and copies datagrams into worker rings."""

    def __init__(self, spec: ChildSpec) -> None:
        self.config = spec.config
        self.sock = socket.socket(fileno=spec.socket_fd)
        self.sock.setblocking(False)
        self.rings = [Ring(fd, use_speedups=self.config.speedups) for fd in spec.ring_fds]
        self.wake_fds = spec.wake_fds
        self.space_fd = spec.space_fd
        self.stats = Stats(spec.stats_fd)
        self.counters = self.stats.block(spec.stats_block)
        self.control = self.stats.block(spec.control_block)
        self.routes = Routes(
            self.rings, self.wake_fds, self.control, self.counters, make_router(self.config)
        )
        self.pending: deque[Held] = deque()  # datagrams read but not yet in a ring
        self.intake = Intake(
            self.config, self.sock, spec.scratch_fd, self.routes, self.counters, self.pending, BATCH
        )
        self.batch = self.intake.batch
        self.blocked_since = 0
        self.draining = False
        self.finished = False  # the rings are closed: nothing more may be placed
        self.loop: asyncio.AbstractEventLoop | None = None
        self._space_timer: asyncio.TimerHandle | None = None
        self._ppid = os.getppid()

    # -- reading ----------------------------------------------------------------------------

    def on_readable(self) -> None:
        """Drain the socket (up to a batch), admit, route and copy each datagram."""
        if self.finished:
            return  # a callback queued before the rings were closed
        if self.pending:
            # One pass at a time: datagrams are held (the rings were full), and a pass queued
            # before that (a drain going on, or on_space) would place new ones ahead of them
            # and reuse the scratch slots they came from. on_space reads again once every
            # held one is placed, in order.
            return
        self.routes.sync_active()
        if not self.routes.indexes:
            self._wait_for_a_route()
            return
        empty = self.intake.read()
        self.routes.publish()
        if self.pending:
            self._block()
        elif self.draining:
            if empty:
                self._finish()
            else:  # stopped short of empty (a batch budget, a full ring): go on draining
                assert self.loop is not None
                self.loop.call_soon(self.on_readable)

    def _wait_for_a_route(self) -> None:
        """Every ring is marked corrupt: read nothing for now (the kernel queue holds the
        datagrams and senders wait, as on full rings) and look again shortly."""
        assert self.loop is not None
        self.loop.remove_reader(self.sock.fileno())
        self.loop.call_later(SPACE_POLL, self._resume_reading)

    def _resume_reading(self) -> None:
        if self.finished or self.pending:  # pending: on_space resumes reading
            return
        assert self.loop is not None
        self.loop.add_reader(self.sock.fileno(), self.on_readable)
        self.on_readable()

    # -- backpressure -----------------------------------------------------------------------

    def _block(self) -> None:
        """Every eligible ring is full: stop reading so the kernel queue applies backpressure."""
        assert self.loop is not None
        self.loop.remove_reader(self.sock.fileno())  # a no-op when it was not reading yet
        self.blocked_since = time.monotonic_ns()
        self._wait_for_space()

    def _wait_for_space(self) -> None:
        """The held datagrams found no room: announce the wait, look again, then sleep.

        A worker signals space only to an announced wait, so one that freed space between
        the failed put and the announcement would stay silent, and the receiver would sleep
        until the 5 ms poll: the second look (a put, which reads the tails anew) catches
        that. The fence makes the announcement visible before those reads (Dekker's
        pattern, as a consumer going to sleep does). Left to the poll: a worker that stores
        its tail and then loads the announcement with no fence between (Ring.end_batch and
        Ring.ack) can, while that store waits in its store buffer (nanoseconds), miss an
        announcement whose second look missed the store.
        """
        assert self.loop is not None
        announced: set[int] = set()
        while True:
            # The rings the first held datagram may go to; once they are announced and it
            # still finds no room, every space a worker frees from now on is signalled.
            rings = self.routes.rings_for(self.pending[0].target)
            if rings <= announced:
                break
            for index in rings - announced:
                self.rings[index].wait_for_space()
            announced |= rings
            full_fence()
            if self._place_held():
                self._resume()
                return
        self.routes.publish()
        self.loop.add_reader(self.space_fd, self.on_space)
        self._space_timer = self.loop.call_later(SPACE_POLL, self.on_space)

    def on_space(self) -> None:
        """A worker freed space (or the safety timer fired): place the held datagrams."""
        assert self.loop is not None
        self.loop.remove_reader(self.space_fd)
        if self._space_timer is not None:
            self._space_timer.cancel()
        clear_wake(self.space_fd)
        self.routes.sync_active()
        if not self.routes.indexes:  # every ring waits for its reset: look again shortly
            self._wait_for_space()
            return
        if self._place_held():
            self._resume()
        else:
            self._wait_for_space()

    def _place_held(self) -> bool:
        """Place the held datagrams in order; False at the first that still finds no room."""
        self.routes.rejudge(time.time_ns())  # the wait for space may have been long
        while self.pending:
            held = self.pending[0]
            target = held.target
            if target is None or (target >= 0 and target not in self.routes.indexes):
                # Not checked yet (the rest of a batch), or its worker was retired meanwhile
                # (or its ring found corrupt).
                if target is None:
                    self.counters[_RECEIVED] += 1
                target = self.intake.admit(held.size, held.payload, held.creds)
                if target is None:
                    self._done_with(self.pending.popleft())
                    continue
                self.pending[0] = held._replace(target=target)
            if not self.routes.put(held.payload, held.address, target, held.recv_ns, held.creds):
                if not self.routes.sheds(target):
                    return False
                self.intake.shed()  # its worker began shedding while it was held
            self._done_with(self.pending.popleft())
        return True

    def _resume(self) -> None:
        """Everything held is placed: ready the scratch slots and read again."""
        assert self.loop is not None
        if self.batch is not None:
            self.batch.complete(self.batch.size)
        self.counters[Slot.BLOCKED_NS] += time.monotonic_ns() - self.blocked_since
        self.routes.publish()
        self.loop.add_reader(self.sock.fileno(), self.on_readable)
        self.loop.call_soon(self.on_readable)

    def _done_with(self, held: Held) -> None:
        if held.slot >= 0 and self.batch is not None:
            self.batch.mark_placed(held.slot)

    # -- lifecycle --------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """The supervisor's DRAIN flag: read until the socket is empty, close the rings, exit."""
        if self.draining:
            return
        self.draining = True
        self.counters[Slot.STATE] = State.DRAINING
        assert self.loop is not None
        if not self.pending:
            self.loop.call_soon(self.on_readable)

    def _finish(self) -> None:
        assert self.loop is not None
        self.finished = True
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
        self.counters[Slot.HEARTBEAT_NS] = time.monotonic_ns()  # liveness, for the supervisor
        self.routes.route_around_corrupt_rings()
        self.routes.sync_active()
        self.intake.admission.housekeeping()
        logs.flush_held()
        if self.control[Slot.DRAIN] and not self.draining:
            self.begin_drain()
        self.loop.call_later(0.05, self._housekeeping)

    def run(self) -> None:
        """Run the read loop until drained (DRAIN flag) or the supervisor disappears."""
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        # Recover before the first read: the next recvmmsg overwrites the scratch slots.
        self.routes.sync_active()  # route only to live workers' rings, from the first datagram
        self.intake.recover()
        if self.pending:
            self._block()
        else:
            loop.add_reader(self.sock.fileno(), self.on_readable)
        loop.call_soon(self._housekeeping)
        log.debug("receiver: %s", self.describe_path())
        self.counters[Slot.PID] = os.getpid()
        # The supervisor judges a running receiver by its heartbeat, and until the first
        # housekeeping pass the block holds the predecessor's (stale if it froze): beat
        # before saying "running" (x86 keeps the stores in this order; it reads STATE first).
        self.counters[Slot.HEARTBEAT_NS] = time.monotonic_ns()
        self.counters[Slot.STATE] = State.RUNNING
        try:
            loop.run_forever()
        finally:
            loop.close()
            logs.flush_held(final=True)

    def describe_path(self) -> str:
        """Which per-datagram path reads: compiled, or which Python loop and why."""
        return self.intake.describe()


def main(argv: list[str]) -> int:
    """Receiver process entry point."""
    spec = spec_from_argv(argv)
    # The supervisor decides what Ctrl-C and SIGTERM mean, and says so with the DRAIN flag:
    # a receiver that drained on a signal of its own would close every ring under a server
    # that goes on running (or, sent to the whole group, beat the supervisor's unlink).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The supervisor sends SIGUSR1 before killing a frozen receiver: its traceback is logged.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    setproctitle.setproctitle(f"ugram: receiver {spec.config.socket}")
    logs.configure_from(spec.config, "receiver", strict=False)
    Receiver(spec).run()
    return 0

"""The receiver's read loop: drain the socket, reject what must not pass, fill the rings.

Datagrams are read with ``recvmmsg`` into a shared scratch area (or one ``recvfrom_into``
each where that is missing), into slots one byte larger than ``max_datagram`` so an oversized
datagram is always detected, never passed on truncated; each is admitted, routed and copied
into a ring, whose head is published at once (a killed receiver loses nothing). Without
admission or routing (with or without the senders' credentials) this runs whole in the C
helper when it was built (:mod:`ugram.speedups`); the other cases, and every case without
it, run the Python loops below, which behave the same.
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
from collections.abc import Iterable
from typing import NamedTuple

import setproctitle
import uvloop

from .. import logs
from ..ring import Ring, full_fence
from ..spec import ChildSpec, parent_alive, spec_from_argv
from ..stats import Slot, State, Stats
from ..wake import clear_wake, signal_wake
from . import mmsg
from .admission import ANCILLARY_SIZE, Admission, parse_credentials
from .rights import PASSED, close_in_ancdata
from .routing import make_router

log = logging.getLogger("ugram.receiver")

BATCH = 512  # datagrams per readiness event before yielding to the loop
# plain ints: faster indexes than IntEnum members
_RECEIVED, _BYTES, _OVERSIZED = int(Slot.RECEIVED), int(Slot.BYTES), int(Slot.OVERSIZED)
_FDS_CLOSED = int(Slot.FDS_CLOSED)
_PLAIN_COUNTERS = (_RECEIVED, _BYTES, _OVERSIZED, _FDS_CLOSED)  # what the C helper's drain counts
SCM_CREDENTIALS: int = getattr(socket, "SCM_CREDENTIALS", -1)


class Held(NamedTuple):
    """A datagram read from the socket that no ring could take yet."""

    payload: bytes
    size: int  # as received (may exceed len(payload) when it was truncated)
    address: bytes
    recv_ns: int
    target: int | None  # None: not admitted/routed yet
    creds: tuple[int, int, int] | None
    slot: int = -1  # its scratch slot (recvmmsg), -1 when read with recvfrom


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
        self.active = len(self.rings)
        self.router = make_router(self.config)
        self.buffer = bytearray(self.config.max_datagram + 1)
        self.view = memoryview(self.buffer)
        self.next_ring = 0
        self._corrupt_seen: set[int] = set()  # rings marked corrupt, as last seen
        self._route_to(list(range(self.active)))  # the rings routed to (see _sync_routes)
        self.pending: deque[Held] = deque()  # datagrams read but not yet in a ring
        self.admission = Admission(self.config)
        self.screening = self.admission.active
        self.limit = self.config.max_datagram
        self.with_creds = self.config.wants_credentials
        # No admission, no routing key: no Python decision per datagram, so the C helper's
        # drain does it all (credentials included); without credentials either, the Python
        # loop has its inlined fast path too.
        self.compiled = not self.screening and self.router is None
        self.plain = self.compiled and not self.with_creds
        if self.with_creds:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.batch = (
            mmsg.BatchReceiver(
                self.sock.fileno(),
                self.config.max_datagram,
                ANCILLARY_SIZE if self.with_creds else 0,
                self.config.receive_batch,
                spec.scratch_fd,
                self.config.speedups,
            )
            if self.config.receive_batch > 1 and mmsg.available()
            else None
        )
        self.blocked_since = 0
        self.draining = False
        self.finished = False  # the rings are closed: nothing more may be placed
        self.loop: asyncio.AbstractEventLoop | None = None
        self._space_timer: asyncio.TimerHandle | None = None
        self._ppid = os.getppid()
        self._warn = logs.RateLimited(log)

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
        self._sync_active()
        if not self.routes:
            self._wait_for_a_route()
            return
        if self.batch is not None and self.compiled and self.batch.native:
            empty = self._drain_native()
        elif self.batch is not None:
            empty = self._drain_batched()
        elif self.with_creds:
            empty = self._drain_with_credentials()
        else:
            empty = self._drain()
        self._publish()
        if self.pending:
            self._block()
        elif self.draining:
            if empty:
                self._finish()
            else:  # stopped short of empty (a batch budget, a full ring): go on draining
                assert self.loop is not None
                self.loop.call_soon(self.on_readable)

    def _drain(self) -> bool:
        """Read up to a batch, one recvfrom_into each; True when the socket ran empty."""
        recv, buf, view, place = self.sock.recvfrom_into, self.buffer, self.view, self._place
        c = self.counters
        for _ in range(BATCH):
            try:
                n, addr = recv(buf)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            # Counted per datagram, like the ring heads: after a kill, received minus what
            # reached a ring or a reject counter is exactly what the dead receiver held.
            c[_RECEIVED] += 1
            if not place(n, view[:n], _encode_address(addr), None):
                return False
        return False

    def _drain_with_credentials(self) -> bool:
        """Like :meth:`_drain`, with each sender's SCM_CREDENTIALS."""
        recv, buffers, view, place = self.sock.recvmsg_into, [self.buffer], self.view, self._place
        for _ in range(BATCH):
            try:
                n, ancdata, _, addr = recv(buffers, ANCILLARY_SIZE)
            except BlockingIOError:
                return True
            except InterruptedError:
                continue
            if len(ancdata) > 1 or (ancdata and ancdata[0][1] in PASSED):  # fds passed
                self.counters[_FDS_CLOSED] += close_in_ancdata(ancdata)
            self.counters[_RECEIVED] += 1
            if not place(n, view[:n], _encode_address(addr), parse_credentials(ancdata)):
                return False
        return False

    def _drain_batched(self) -> bool:
        """Read with recvmmsg, up to a batch per call; True when the socket ran empty."""
        rx = self.batch
        assert rx is not None
        for _ in range(max(1, BATCH // rx.size)):
            count = rx.receive()
            if rx.closed_fds:
                self.counters[_FDS_CLOSED] += rx.closed_fds
            if not count:
                return True
            placed = self._place_plain(count) if self.plain else self._place_slots(range(count))
            if not placed:
                return False
            rx.complete(count)
        return False

    def _drain_native(self) -> bool:
        """The case without admission or routing in the C helper: receive, place each
        datagram (with its sender's credentials when they are on) in the next ring in turn,
        published and counted at once. A full ring hands the rest of its batch to
        :meth:`_place_slots`."""
        rx = self.batch
        assert rx is not None
        routed = self.route_rings
        try:
            empty, self.next_ring, _, oversized, count, following = rx.drain_native(
                (self._route_maps, self._route_wakes),
                (len(routed), self.next_ring),
                self.limit,
                max(1, BATCH // rx.size),
                (self.counters, _PLAIN_COUNTERS),
            )
        except ValueError:
            # A ring it refuses to write to (before reading anything): route around it, or
            # uvloop calls us straight back into the same error, forever.
            if not self._route_around_corrupt_rings():
                raise
            return False
        finally:  # also after an error: what it placed before is in the rings
            for ring in routed:
                ring.resync_producer()
        if oversized:
            self._warn.warning(
                "rejected a datagram larger than max_datagram=%d", self.limit, times=oversized
            )
        if count:  # a ring filled in the middle of a batch
            if not self._place_slots(range(following, count)):
                return False
            rx.complete(count)
        return empty

    def _place_plain(self, count: int) -> bool:
        """The common case inlined (no admission, no routing key, no credentials): per
        datagram a size check, one ring put and a few counter stores. A full ring hands the
        rest of the batch to :meth:`_place_slots`, which tries the others or holds it."""
        rx = self.batch
        assert rx is not None
        fields, base, stride = rx.layout
        view, desc, address_of = rx.view, rx.desc, rx.address
        c, rings, limit = self.counters, self.route_rings, self.limit
        active = len(rings)
        next_ring, now, nbytes = self.next_ring, time.time_ns(), 0
        for i in range(count):
            at = i * mmsg.STRIDE
            n = fields[at + mmsg.LEN]
            if n > limit or fields[at + mmsg.FLAGS] & mmsg.MSG_TRUNC:
                c[_RECEIVED] += 1
                c[_OVERSIZED] += 1
                self._warn.warning("rejected a datagram larger than max_datagram=%d", limit)
                desc[mmsg.PLACED] = i + 1
                continue
            address = address_of(i) if fields[at + mmsg.NAMELEN] > 2 else b""
            start = base + i * stride
            # The slot's index added: receive times in receipt order across workers.
            if not rings[next_ring].try_put(view[start : start + n], address, now + i):
                self.next_ring = next_ring
                c[_BYTES] += nbytes
                return self._place_slots(range(i, count))
            c[_RECEIVED] += 1
            next_ring = next_ring + 1 if next_ring + 1 < active else 0
            nbytes += n
            desc[mmsg.PLACED] = i + 1  # placed: a successor must not place it again
        self.next_ring = next_ring
        c[_BYTES] += nbytes
        return True

    def _place_slots(self, slots: Iterable[int]) -> bool:
        """Place the given scratch slots in order; False when the rings filled up (the rest
        is held, and the scratch area still has it should this receiver die)."""
        rx, place, c = self.batch, self._place, self.counters
        assert rx is not None
        remaining = list(slots)
        for position, i in enumerate(remaining):
            n, payload, address, creds = self._slot(i)
            # Counted right before admission: a successor that re-places this slot after a
            # kill counts it again, so `received` may exceed the truth by one per kill.
            c[_RECEIVED] += 1
            if not place(n, payload, address, creds):
                self.pending[-1] = self.pending[-1]._replace(slot=i)
                self._hold_rest(remaining[position + 1 :])
                return False
            rx.mark_placed(i)
        return True

    def _slot(self, i: int) -> tuple[int, memoryview, bytes, tuple[int, int, int] | None]:
        rx = self.batch
        assert rx is not None
        n = rx.length(i)
        if rx.truncated(i):
            n = max(n, rx.slot)  # the kernel cut it: over max_datagram for sure
        creds = (
            mmsg.credentials_from_control(rx.control(i), SCM_CREDENTIALS)
            if self.with_creds
            else None
        )
        return n, rx.payload(i, min(n, rx.slot)), rx.address(i), creds

    def _hold_rest(self, slots: list[int]) -> None:
        """Keep the datagrams of a batch that came after the one that found the rings full."""
        now = time.time_ns()
        for i in slots:  # the slot's index added: receive times stay in receipt order
            n, payload, address, creds = self._slot(i)
            self.pending.append(Held(bytes(payload), n, address, now + i, None, creds, i))

    def recover(self) -> None:
        """Place what a killed predecessor had received but not yet placed (scratch area)."""
        if self.batch is None:
            return
        slots = self.batch.unplaced()
        if not slots:
            # Killed between placing a batch and readying its slots: ready them now, or
            # the next recvmmsg would keep a stale name length (and a wrong sender).
            self.batch.complete(self.batch.size)
            return
        log.warning("receiver: recovering %d datagram(s) a dead receiver held", len(slots))
        if self._place_slots(slots):
            self.batch.complete(self.batch.size)
            self._publish()

    def _admit(
        self, n: int, payload: memoryview | bytes, creds: tuple[int, int, int] | None
    ) -> int | None:
        """Size, allow lists, rate limit, route key. Returns the target ring (-1: any), or
        None when the datagram is rejected (and counted under its reason)."""
        c = self.counters
        if n > self.limit:
            c[Slot.OVERSIZED] += 1
            self._warn.warning("rejected a datagram larger than max_datagram=%d", self.limit)
            return None
        if self.screening:
            if not self.admission.authorized(creds):
                c[Slot.UNAUTHORIZED] += 1
                self._warn.warning("rejected a datagram from unauthorized sender %s", creds)
                return None
            if not self.admission.within_rate(creds):
                c[Slot.RATE_LIMITED] += 1
                return None
        target = -1 if self.router is None else self._route(memoryview(payload))
        if target is None:
            c[Slot.INVALID] += 1
            self._warn.warning("rejected a datagram without route field %r", self.config.route_by)
            return None
        c[_BYTES] += n
        return target

    def _place(
        self,
        n: int,
        payload: memoryview,
        address: bytes,
        creds: tuple[int, int, int] | None,
    ) -> bool:
        """Check one datagram and copy it into a ring; False when it had to be held back."""
        target = self._admit(n, payload, creds)
        if target is None or self._put(payload, address, target, creds=creds):
            return True
        self.pending.append(Held(bytes(payload), n, address, time.time_ns(), target, creds))
        return False

    def _sync_active(self) -> None:
        # SIGTTIN/SIGTTOU change how many rings are routed to; acknowledging the value tells
        # the supervisor when a retired ring will receive no more records.
        active = int(self.control[Slot.ACTIVE]) or len(self.rings)
        self.active = active
        self.counters[Slot.ACTIVE_SEEN] = active
        self._sync_routes()

    def _route(self, payload: memoryview) -> int | None:
        if self.router is not None and self.routes:
            at = self.router(payload, len(self.routes))
            return None if at is None else self.routes[at]
        # Round-robin over rings with room; also a keyed datagram held while every ring was
        # corrupt (none to map its key onto): it goes to the first ring back.
        return -1

    def _put(
        self,
        payload: memoryview | bytes,
        address: bytes,
        target: int,
        recv_ns: int | None = None,
        creds: tuple[int, int, int] | None = None,
    ) -> bool:
        ns = time.time_ns() if recv_ns is None else recv_ns
        if target >= 0:  # routed by key: only that worker's ring keeps the key's order
            return self.rings[target].try_put(payload, address, ns, creds)
        rings = self.route_rings
        count = len(rings)
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

    # -- corrupt rings (worker branch; the ring side is in ugram/ring.py) -------------------

    def _sync_routes(self) -> None:
        """Route to the active rings not marked corrupt: round-robin skips a corrupt ring and
        route_by maps keys onto the others, until the supervisor has reset it."""
        routable = [ring.routable() for ring in self.rings]  # all: unused ones confirm too
        routes = [index for index in range(self.active) if routable[index]]
        if routes == self.routes:
            return
        for index in sorted(set(self.routes) - set(routes)):
            if not routable[index]:
                log.error("receiver: not routing to worker %d's ring until it is reset", index)
        for index in sorted(set(routes) - set(self.routes)):
            if index in self._corrupt_seen:
                log.info("receiver: worker %d's ring was reset: routing to it again", index)
        self._corrupt_seen = {i for i, ok in enumerate(routable) if not ok}
        self._route_to(routes)

    def _route_to(self, routes: list[int]) -> None:
        self.routes = routes
        self.route_rings = [self.rings[index] for index in routes]
        self._route_maps = [ring.mapping for ring in self.route_rings]  # for the C drain
        self._route_wakes = [self.wake_fds[index] for index in routes]
        self.next_ring = self.next_ring % len(routes) if routes else 0

    def _route_around_corrupt_rings(self) -> bool:
        """Mark every routed ring that no producer could have left as it is (the C helper's
        drain refuses to write to one); True when there was one."""
        found = False
        for index in self.routes:
            fault = self.rings[index].producer_fault()
            if fault is not None:
                log.error("receiver: worker %d's ring is corrupt: %s", index, fault)
                self.rings[index].mark_corrupt()
                found = True
        if found:
            self._sync_routes()
        return found

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
            rings = self._rings_for(self.pending[0].target)
            if rings <= announced:
                break
            for index in rings - announced:
                self.rings[index].wait_for_space()
            announced |= rings
            full_fence()
            if self._place_held():
                self._resume()
                return
        self._publish()
        self.loop.add_reader(self.space_fd, self.on_space)
        self._space_timer = self.loop.call_later(SPACE_POLL, self.on_space)

    def _rings_for(self, target: int | None) -> set[int]:
        # Only rings the receiver routes to: a corrupt one waiting for its reset is skipped.
        return {i for i in self.routes if target in (-1, None, i)}

    def on_space(self) -> None:
        """A worker freed space (or the safety timer fired): place the held datagrams."""
        assert self.loop is not None
        self.loop.remove_reader(self.space_fd)
        if self._space_timer is not None:
            self._space_timer.cancel()
        clear_wake(self.space_fd)
        self._sync_active()
        if not self.routes:  # every ring waits for its reset: look again shortly
            self._wait_for_space()
            return
        if self._place_held():
            self._resume()
        else:
            self._wait_for_space()

    def _place_held(self) -> bool:
        """Place the held datagrams in order; False at the first that still finds no room."""
        while self.pending:
            held = self.pending[0]
            target = held.target
            if target is None or (target >= 0 and target not in self.routes):
                # Not checked yet (the rest of a batch), or its worker was retired meanwhile
                # (or its ring found corrupt).
                if target is None:
                    self.counters[_RECEIVED] += 1
                target = self._admit(held.size, held.payload, held.creds)
                if target is None:
                    self._done_with(self.pending.popleft())
                    continue
                self.pending[0] = held._replace(target=target)
            if not self._put(held.payload, held.address, target, held.recv_ns, held.creds):
                return False
            self._done_with(self.pending.popleft())
        return True

    def _resume(self) -> None:
        """Everything held is placed: ready the scratch slots and read again."""
        assert self.loop is not None
        if self.batch is not None:
            self.batch.complete(self.batch.size)
        self.counters[Slot.BLOCKED_NS] += time.monotonic_ns() - self.blocked_since
        self._publish()
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
        self._route_around_corrupt_rings()
        self._sync_active()
        self.admission.housekeeping()
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
        self._sync_active()  # route only to live workers' rings, from the very first datagram
        self.recover()
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
        if self.batch is None:
            return "one recvfrom per datagram, Python loop (receive_batch = 1 or no recvmmsg)"
        if not self.batch.native:
            return f"recvmmsg x{self.batch.size}, Python loop (no compiled helper)"
        if not self.compiled:
            why = "allow lists or rate limit" if self.screening else "route_by"
            return f"recvmmsg x{self.batch.size}, Python loop ({why})"
        creds = ", with credentials" if self.with_creds else ""
        return f"recvmmsg x{self.batch.size}, compiled{creds}"


def _encode_address(addr: str | bytes | None) -> bytes:
    if not addr:
        return b""
    if isinstance(addr, bytes):
        return addr
    return os.fsencode(addr)


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

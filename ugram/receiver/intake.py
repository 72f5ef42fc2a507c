"""The receiver's intake: drain the socket, reject what must not pass, place the rest.

Datagrams are read with ``recvmmsg`` into a shared scratch area (or one ``recvfrom_into``
each where that is missing), into slots one byte larger than ``max_datagram`` so an oversized
datagram is always detected, never passed on truncated; each is admitted, routed and copied
into a ring, whose head is published at once (a killed receiver loses nothing). Without
admission or routing (with or without the senders' credentials) this runs whole in the C
helper when it was built (:mod:`ugram.speedups`); the other cases, and every case without
it, run the Python loops below, which behave the same. A datagram no ring can take is held
(:class:`Held`), in order, for the receiver's backpressure (:mod:`ugram.receiver.loop`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from .. import logs
from ..config import Config
from ..stats import Slot
from . import mmsg
from .admission import ANCILLARY_SIZE, Admission, parse_credentials
from .rights import PASSED, close_in_ancdata
from .routing import Routes

log = logging.getLogger("ugram.receiver")

# plain ints: faster indexes than IntEnum members
_RECEIVED, _BYTES, _OVERSIZED = int(Slot.RECEIVED), int(Slot.BYTES), int(Slot.OVERSIZED)
_FDS_CLOSED, _SHED = int(Slot.FDS_CLOSED), int(Slot.SHED)
# Datagrams read one at a time between two looks at how much each ring takes (Routes.packed):
# the batched paths may look once a receive batch, receive_batch (64) by default.
REJUDGE = 64
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


class Intake:
    """Reads the socket, admits each datagram and places it in a ring (or holds it).

    Attributes:
        batch: the recvmmsg scratch area, or None (one recvfrom per datagram).
        pending: the datagrams held, in order (shared with the receiver's backpressure).
    """

    def __init__(
        self,
        config: Config,
        sock: socket.socket,
        scratch_fd: int,
        routes: Routes,
        counters: memoryview,
        pending: deque[Held],
        budget: int,
    ) -> None:
        """``budget``: datagrams per :meth:`read` before yielding to the event loop."""
        self.config = config
        self.sock = sock
        self.routes = routes
        self.counters = counters
        self.pending = pending
        self.budget = budget
        self.buffer = bytearray(config.max_datagram + 1)
        self.view = memoryview(self.buffer)
        self.admission = Admission(config)
        self.screening = self.admission.active
        self.limit = config.max_datagram
        self.with_creds = config.wants_credentials
        # No admission, no routing key: no Python decision per datagram, so the C helper's
        # drain does it all (credentials included); without credentials either, the Python
        # loop has its inlined fast path too.
        self.compiled = not self.screening and routes.router is None
        self.plain = self.compiled and not self.with_creds
        if self.with_creds:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.batch = (
            mmsg.BatchReceiver(
                sock.fileno(),
                config.max_datagram,
                ANCILLARY_SIZE if self.with_creds else 0,
                config.receive_batch,
                scratch_fd,
                config.speedups,
            )
            if config.receive_batch > 1 and mmsg.available()
            else None
        )
        self._put = routes.put  # bound once: called per datagram
        self._warn = logs.RateLimited(log)

    def read(self) -> bool:
        """Drain the socket (up to the budget) into the rings; True when it ran empty.

        A datagram that found no room is held, with every one read after it."""
        self.routes.forget_rooms()  # judged again in each pass, as the C drain does
        if self.batch is not None and self.compiled:
            if self.routes.shedding and self.routes.sheds(-1):
                return self._shed_all()
            if self.batch.native:
                return self._drain_native()
        if self.batch is not None:
            return self._drain_batched()
        if self.with_creds:
            return self._drain_with_credentials()
        return self._drain()

    def _drain(self) -> bool:
        """Read up to a batch, one recvfrom_into each; True when the socket ran empty."""
        recv, buf, view, place = self.sock.recvfrom_into, self.buffer, self.view, self._place
        c, rejudge = self.counters, self.routes.rejudge
        for i in range(self.budget):
            if not i % REJUDGE:  # as often as the batched paths may judge the rooms
                rejudge(time.time_ns())
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
        rejudge = self.routes.rejudge
        for i in range(self.budget):
            if not i % REJUDGE:
                rejudge(time.time_ns())
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
        for _ in range(max(1, self.budget // rx.size)):
            count = rx.receive()
            if rx.closed_fds:
                self.counters[_FDS_CLOSED] += rx.closed_fds
            if not count:
                return True
            self.routes.rejudge(time.time_ns())
            plain = self.plain and not self.routes.shedding
            placed = self._place_plain(count) if plain else self.place_slots(range(count))
            if not placed:
                return False
            rx.complete(count)
        return False

    def _drain_native(self) -> bool:
        """The case without admission or routing in the C helper: receive, place each
        datagram (with its sender's credentials when they are on) in the ring
        :meth:`Routes.packed` would name (the C helper judges the rooms as Routes.rejudge does),
        published and counted at once. A full ring hands the rest of its batch to
        :meth:`place_slots`."""
        rx, routes = self.batch, self.routes
        assert rx is not None
        routed = routes.routed
        # Over the rings that do not shed (all of them but in an outage); one that does
        # is skipped, as place_slots skips it.
        maps = routes.open_maps
        try:
            empty, routes.next_ring, _, oversized, count, following = rx.drain_native(
                (maps, routes.open_wakes),
                (len(maps), routes.next_ring % len(maps)),
                self.limit,
                max(1, self.budget // rx.size),
                (self.counters, _PLAIN_COUNTERS),
                routes.pack_ns,
            )
        except ValueError:
            # A ring it refuses to write to (before reading anything): route around it, or
            # uvloop calls us straight back into the same error, forever.
            if not routes.route_around_corrupt_rings():
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
            routes.rejudge(time.time_ns())
            if not self.place_slots(range(following, count)):
                return False
            rx.complete(count)
        return empty

    def _shed_all(self) -> bool:
        """Every ring sheds, and no datagram needs a decision of its own (no admission, no
        key): read and count, place nothing. True when the socket ran empty."""
        rx, c, limit = self.batch, self.counters, self.limit
        assert rx is not None
        fields = rx.layout[0]
        length, flags, stride, truncated = mmsg.LEN, mmsg.FLAGS, mmsg.STRIDE, mmsg.MSG_TRUNC
        for _ in range(max(1, self.budget // rx.size)):
            count = rx.receive()
            if rx.closed_fds:
                c[_FDS_CLOSED] += rx.closed_fds
            if not count:
                return True
            oversized = sum(
                1
                for at in range(0, count * stride, stride)
                if fields[at + length] > limit or fields[at + flags] & truncated
            )
            if oversized:
                c[_OVERSIZED] += oversized
                self._warn.warning(
                    "rejected a datagram larger than max_datagram=%d", limit, times=oversized
                )
            # The reasons before RECEIVED, and both before the slots are released: a kill in
            # between counts them again in a successor, never as lost.
            c[_SHED] += count - oversized
            c[_RECEIVED] += count
            rx.mark_placed(count - 1)
            rx.complete(count)
        return False

    def _place_plain(self, count: int) -> bool:
        """The common case inlined (no admission, no routing key, no credentials): per
        datagram a size check, one ring put (in the ring :meth:`Routes.packed` names, else
        the next in turn) and a few counter stores. A full ring hands the
        rest of the batch to :meth:`place_slots`, which tries the others or holds it."""
        rx, routes = self.batch, self.routes
        assert rx is not None
        fields, base, stride = rx.layout
        view, desc, address_of = rx.view, rx.desc, rx.address
        c, rings, limit, packed = self.counters, routes.routed, self.limit, routes.packed
        active = len(rings)
        next_ring, now, nbytes = routes.next_ring, time.time_ns(), 0
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
            with_room = packed()
            # The slot's index added: receive times in receipt order across workers.
            ring = rings[next_ring if with_room < 0 else with_room]
            if not ring.try_put(view[start : start + n], address, now + i):
                routes.next_ring = next_ring
                c[_BYTES] += nbytes
                return self.place_slots(range(i, count))
            c[_RECEIVED] += 1
            if with_room < 0:
                next_ring = next_ring + 1 if next_ring + 1 < active else 0
            nbytes += n
            desc[mmsg.PLACED] = i + 1  # placed: a successor must not place it again
        routes.next_ring = next_ring
        c[_BYTES] += nbytes
        return True

    def place_slots(self, slots: Iterable[int]) -> bool:
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
        if self.place_slots(slots):
            self.batch.complete(self.batch.size)
            self.routes.publish()

    def admit(
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
        target = -1 if self.routes.router is None else self.routes.target_of(memoryview(payload))
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
        target = self.admit(n, payload, creds)
        if target is None or self._put(payload, address, target, creds=creds):
            return True
        if self.routes.sheds(target):
            self.shed()
            return True
        self.pending.append(Held(bytes(payload), n, address, time.time_ns(), target, creds))
        return False

    def shed(self) -> None:
        """Count one datagram dropped because the workers it may go to shed (``shed``)."""
        self.counters[_SHED] += 1

    def describe(self) -> str:
        """Which per-datagram path reads: compiled, or which Python loop and why."""
        if self.batch is None:
            why = "receive_batch = 1" if self.config.receive_batch <= 1 else "no recvmmsg"
            return f"one recvfrom per datagram, Python loop ({why})"
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

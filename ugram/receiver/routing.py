"""Picking a worker for each datagram: the first whose worker keeps up (else each in turn),
or by the hash of one field's value, over the rings that are routed to."""

from __future__ import annotations

import logging
import mmap
import time
import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from ..config import Config
from ..ring import SHEDDING, Ring, room
from ..stats import Slot
from ..wake import signal_wake

log = logging.getLogger("ugram.receiver")

Router = Callable[[memoryview, int], int | None]

# Packing: a datagram without a key goes to the first routed ring whose worker keeps up,
# not to each ring in turn. A worker keeps up while its oldest unacknowledged record is
# younger than this and what it holds takes it less than this at its recent cost a record
# (ugram.ring.room). A worker that keeps up alone gets the whole flow in big batches and
# the others sleep: on a machine with fewer cores than processes, spreading a flow one
# worker can take costs every worker a wake-up and a small batch each time (2 workers were
# 0.7-0.9x of 1 on 2 cores; issue 16). Past what one worker takes, the next one gets the
# rest, and once every worker is behind, datagrams go round-robin: the CPU-heavy case, all
# of them busy. It also bounds the wait behind a busy worker: a record is not placed
# behind more than about this much work while another worker has room.
PACK_NS = 500_000


def make_router(config: Config) -> Router | None:
    """Return ``route(payload, workers)`` giving a worker index, or None without a key.

    The router decodes only the ``route_by`` field (a Struct holding just it; every other
    field is skipped) and hashes its encoded value with CRC-32, a hash that is stable across
    processes and restarts, unlike ``hash()``. It returns None when the payload is not
    decodable or lacks the field: the receiver counts that datagram as invalid.
    """
    if config.route_by is None:
        return None
    key_type = msgspec.defstruct("RouteKey", [("key", Any)], rename={"key": config.route_by})
    decode = (
        msgspec.json.Decoder(key_type).decode
        if config.codec == "json"
        else msgspec.msgpack.Decoder(key_type).decode
    )
    encode = msgspec.msgpack.encode

    def route(payload: memoryview, workers: int) -> int | None:
        try:
            value = decode(payload).key  # type: ignore[attr-defined]
        except (msgspec.DecodeError, RecursionError):
            return None
        return zlib.crc32(encode(value)) % workers

    return route


class Routes:
    """The rings the receiver places datagrams in, and how it picks one.

    Routed to: the first ``active`` rings (the supervisor's worker count, which SIGTTIN and
    SIGTTOU change) not marked corrupt. Placement skips a corrupt ring and ``route_by``
    maps keys onto the others, until the supervisor has reset it (the ring side of a
    corrupt ring is in :mod:`ugram.ring`, the worker's in :mod:`ugram.workers.loop`).

    Shedding (a forwarding sink's ``drop_newest``: its deliveries fail and its backlog is
    over the limit): placement skips that ring as if it were full, and a datagram that no
    ring takes is dropped (:meth:`sheds`) when every ring it may go to sheds; one that a
    ring merely full may still take waits for it, as without shedding.

    Attributes:
        rings, wake_fds: every ring, and its consumer's wake-up channel.
        indexes: the rings routed to, by index; ``routed``, ``maps`` and ``wakes``: theirs
            (the last two for the C helper's drain).
        next_ring: the position in ``routed`` that round-robin (past the rooms) tries first.
        router: the ``route_by`` key router, or None: placement by room, then in turn.
        shedding: the routed rings whose worker asks for new datagrams to be dropped, as
            seen at the last :meth:`sync_active` (once per read pass).
        open_maps, open_wakes: ``maps`` and ``wakes`` of the routed rings that do not shed
            (the C helper's drain places over them).
    """

    def __init__(
        self,
        rings: list[Ring],
        wake_fds: list[int],
        control: memoryview,
        counters: memoryview,
        router: Router | None,
    ) -> None:
        self.rings = rings
        self.wake_fds = wake_fds
        self.router = router
        self._control = control
        self._counters = counters
        self.active = len(rings)
        self.next_ring = 0
        self.pack_ns = PACK_NS
        self._rooms: list[int] = []  # of the routed rings, by position (refresh_rooms)
        self._packing = 0  # the first position in _rooms that may still have room
        self._judged_at = 0  # when the rooms were judged (time.time_ns())
        self.shedding: frozenset[int] = frozenset()
        self.open_maps: list[mmap.mmap] = []
        self.open_wakes: list[int] = []
        self._corrupt_seen: set[int] = set()  # rings marked corrupt, as last seen
        self._route_to(list(range(self.active)))

    def sync_active(self) -> None:
        """Take up the supervisor's worker count, and route around corrupt rings."""
        # Acknowledging the value tells the supervisor when a retired ring will receive no
        # more records.
        active = int(self._control[Slot.ACTIVE]) or len(self.rings)
        self.active = active
        self._counters[Slot.ACTIVE_SEEN] = active
        self._sync_routes()
        self._sync_shedding()

    def _sync_shedding(self) -> None:
        """Take up which routed rings' workers shed (one load each: ordering record 11).
        Once per read pass: kept to a plain loop over the words (~0.1 us a ring)."""
        for ctl in self._controls:
            if ctl[SHEDDING]:
                break
        else:  # the common case: none sheds
            if self.shedding:
                self._shed(frozenset())
            return
        pairs = zip(self.indexes, self._controls, strict=True)
        shedding = frozenset(index for index, ctl in pairs if ctl[SHEDDING])
        if shedding != self.shedding:
            self._shed(shedding)

    def _shed(self, shedding: frozenset[int]) -> None:
        self.shedding = shedding
        self.forget_rooms()  # a ring that sheds now has no room (refresh_rooms)
        taking = [k for k, index in enumerate(self.indexes) if index not in shedding]
        self.open_maps = [self.maps[k] for k in taking]
        self.open_wakes = [self.wakes[k] for k in taking]

    def sheds(self, target: int) -> bool:
        """A datagram for ``target`` (-1: any routed ring) that found no room is to be
        dropped rather than held: its ring's worker sheds, or every routed ring's does."""
        shedding = self.shedding
        if not shedding:
            return False
        if target >= 0:
            return target in shedding
        return bool(self.indexes) and shedding.issuperset(self.indexes)

    def _sync_routes(self) -> None:
        """Route to the active rings not marked corrupt."""
        routable = [ring.routable() for ring in self.rings]  # all: unused ones confirm too
        routes = [index for index in range(self.active) if routable[index]]
        if routes == self.indexes:
            return
        for index in sorted(set(self.indexes) - set(routes)):
            if not routable[index]:
                log.error("receiver: not routing to worker %d's ring until it is reset", index)
        for index in sorted(set(routes) - set(self.indexes)):
            if index in self._corrupt_seen:
                log.info("receiver: worker %d's ring was reset: routing to it again", index)
        self._corrupt_seen = {i for i, ok in enumerate(routable) if not ok}
        self._route_to(routes)

    def _route_to(self, routes: list[int]) -> None:
        self.indexes = routes
        self.routed = [self.rings[index] for index in routes]
        self._controls = [ring.ctl for ring in self.routed]  # for _sync_shedding
        self.maps = [ring.mapping for ring in self.routed]  # for the C drain
        self.wakes = [self.wake_fds[index] for index in routes]
        self.next_ring = self.next_ring % len(routes) if routes else 0
        self._shed(self.shedding & frozenset(routes))  # and the rooms, by position: forgotten

    def route_around_corrupt_rings(self) -> bool:
        """Mark every routed ring that no producer could have left as it is (the C helper's
        drain refuses to write to one); True when there was one."""
        found = False
        for index in self.indexes:
            fault = self.rings[index].producer_fault()
            if fault is not None:
                log.error("receiver: worker %d's ring is corrupt: %s", index, fault)
                self.rings[index].mark_corrupt()
                found = True
        if found:
            self._sync_routes()
        return found

    def rings_for(self, target: int | None) -> set[int]:
        """The rings a datagram for ``target`` may go to (-1 or None: any routed one)."""
        # Only rings the receiver routes to: a corrupt one waiting for its reset is skipped.
        return {i for i in self.indexes if target in (-1, None, i)}

    def target_of(self, payload: memoryview) -> int | None:
        """The ring a datagram goes to: -1 for any (by room, then in turn), None when it has
        no key."""
        if self.router is not None and self.indexes:
            at = self.router(payload, len(self.indexes))
            return None if at is None else self.indexes[at]
        # Round-robin over rings with room; also a keyed datagram held while every ring was
        # corrupt (none to map its key onto): it goes to the first ring back.
        return -1

    def refresh_rooms(self, now_ns: int) -> None:
        """Judge again how many records each routed ring takes before its worker falls
        behind (:data:`PACK_NS`); :meth:`packed` counts them down."""
        pack_ns, shedding = self.pack_ns, self.shedding
        self._rooms = (
            [
                0 if index in shedding else room(ring, now_ns, pack_ns)
                for index, ring in zip(self.indexes, self.routed, strict=True)
            ]
            if pack_ns
            else []
        )
        self._packing, self._judged_at = 0, now_ns

    def forget_rooms(self) -> None:
        """A new read pass: the rooms are judged again at its first :meth:`rejudge`."""
        self._rooms, self._packing = [], 0

    def rejudge(self, now_ns: int) -> None:
        """Judge the rooms again if they are spent (or forgotten), or a quarter of the
        window has passed since (a worker that stopped keeps its room until then): the C
        drain's rule. Reading the words each worker writes for every record, every batch,
        cost a flood of cheap records 14 %."""
        spent = self._first_with_room() >= len(self._rooms)  # to the last: judged now
        if spent or now_ns - self._judged_at > self.pack_ns // 4:
            self.refresh_rooms(now_ns)

    def packed(self) -> int:
        """The position in ``routed`` of the first ring with room, counted down; -1 when
        none has any (then round-robin from ``next_ring``)."""
        at = self._first_with_room()
        if at >= len(self._rooms):
            return -1
        self._rooms[at] -= 1
        return at

    def _first_with_room(self) -> int:
        """Move the count-down's cursor past the rings whose room is spent; return it."""
        rooms, at = self._rooms, self._packing
        while at < len(rooms) and rooms[at] <= 0:
            at += 1
        self._packing = at
        return at

    def put(
        self,
        payload: memoryview | bytes,
        address: bytes,
        target: int,
        recv_ns: int | None = None,
        creds: tuple[int, int, int] | None = None,
    ) -> bool:
        """Copy a datagram into ``target``'s ring; with -1 into the ring :meth:`packed`
        names, else (none, or it is full or sheds) the next routed one in turn with space.
        False when there was no space."""
        ns = time.time_ns() if recv_ns is None else recv_ns
        shedding = self.shedding
        if target >= 0:  # routed by key: only that worker's ring keeps the key's order
            if shedding and target in shedding:
                return False
            return self.rings[target].try_put(payload, address, ns, creds)
        rings = self.routed
        while (packed := self.packed()) >= 0:  # a shedding ring has no room
            if rings[packed].try_put(payload, address, ns, creds):
                return True
            self._rooms[packed] = 0  # room in records, not in bytes: the next one
        count = len(rings)
        start = self.next_ring
        for step in range(count):
            index = (start + step) % count
            if shedding and self.indexes[index] in shedding:
                continue  # as if full: a worker that takes datagrams gets them
            if rings[index].try_put(payload, address, ns, creds):
                self.next_ring = (index + 1) % count
                return True
        return False

    def publish(self) -> None:
        """Publish every ring's new records, waking the consumers that sleep."""
        for ring, wake_fd in zip(self.rings, self.wake_fds, strict=True):
            if ring.publish():
                signal_wake(wake_fd)

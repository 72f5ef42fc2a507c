"""Counting what a killed process took with it, and what was left when the server stopped.

The ring logic (journal, replay, corruption) is in :mod:`ugram.ring`; this is the
supervisor's side of it: the counts no dead process can settle itself.
"""

from __future__ import annotations

import logging
import socket

from ..config import Config
from ..receiver import mmsg
from ..receiver.admission import ANCILLARY_SIZE
from ..ring import PUBLISHED
from ..sockets import BoundSocket
from ..stats import JOURNALED, Slot
from .resources import Resources

log = logging.getLogger("ugram.supervisor")

RECEIVER_REJECTS = (Slot.OVERSIZED, Slot.INVALID, Slot.UNAUTHORIZED, Slot.RATE_LIMITED, Slot.SHED)


def account_lost(res: Resources, crashed: bool = True) -> None:
    """A receiver died: what it had read but not yet written to a ring is lost.

    Not so with a scratch area (recvmmsg): its successor places what it held.

    Args:
        res: the server's resources.
        crashed: it died on its own (False: killed at the deadline), so it may have been
            inside recv() with a datagram no counter saw.
    """
    if res.scratch >= 0:
        return
    block, control = res.receiver(), res.control
    published = sum(int(ring.ctl[PUBLISHED]) for ring in res.rings)
    rejected = sum(int(block[slot]) for slot in RECEIVER_REJECTS)
    lost = int(block[Slot.RECEIVED]) - published - rejected - int(control[Slot.LOST])
    if lost > 0:
        control[Slot.LOST] += lost
        log.error("the receiver died holding %d datagram(s): lost", lost)
    elif crashed:
        # Killed inside recv(): the kernel may have dequeued a datagram that no counter
        # saw. At most one; reported as an upper bound, not as a certainty.
        control[Slot.POSSIBLY_LOST] += 1
        log.error("the receiver died; at most 1 datagram it was reading may be lost")


def settle_counts(res: Resources) -> None:
    """Every worker is gone: settle the counts of one killed between two stores (at the
    deadline: no successor settles them)."""
    for index, ring in enumerate(res.rings):
        if ring.marked_corrupt:  # its journal is no more trustworthy than the rest
            continue
        with res.worker(index) as block:
            ring.settle_journal(block, JOURNALED)


def left_in_scratch(res: Resources, config: Config) -> int:
    """Datagrams a receiver killed at the deadline had read but not placed."""
    if res.scratch < 0:
        return 0
    control = ANCILLARY_SIZE if config.wants_credentials else 0
    area = mmsg.BatchReceiver(-1, config.max_datagram, control, config.receive_batch, res.scratch)
    try:
        return len(area.unplaced())
    finally:
        area.close()


def left_in_socket(bound: BoundSocket) -> int:
    """Count (and discard) datagrams still queued after every child is gone."""
    count = 0
    while True:
        try:
            bound.sock.recv(1, socket.MSG_DONTWAIT)
        except OSError:
            return count
        count += 1

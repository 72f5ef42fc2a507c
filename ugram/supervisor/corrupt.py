"""Tending a ring marked corrupt (by its worker or the receiver): reset it, start afresh.

The ring logic is in :mod:`ugram.ring`; here is the order of the steps, which matters: the
ring's worker is stopped (it exits by itself on the mark, and is killed if it does not),
the receiver must confirm it stopped writing to the ring, and only then is the ring emptied
(what it held is counted as lost) and a new worker started on it.
"""

from __future__ import annotations

import logging
import time

from ..errors import RingCorruptError
from ..stats import COMMAND_RETIRE, Slot
from .children import Children
from .resources import Resources
from .state import ServerState

log = logging.getLogger("ugram.supervisor")

CORRUPT_GRACE = 2.0  # for the worker of a ring marked corrupt to exit before it is killed


class CorruptRings:
    """Resets each ring marked corrupt, once per supervisor tick, one step at a time."""

    def __init__(self, state: ServerState, res: Resources, children: Children) -> None:
        """Tend the rings in ``res``; ``children`` starts the new workers."""
        self._state, self._res, self._children = state, res, children

    def tend(self) -> None:
        """Take each ring marked corrupt one step further towards a reset and a new worker."""
        for index, ring in enumerate(self._res.rings):
            if ring.marked_corrupt:
                self._tend(index)

    def _tend(self, index: int) -> None:
        state, res = self._state, self._res
        state.respawn_at.pop(("worker", index), None)  # not onto the corrupt ring
        child = state.workers.get(index)
        if child is not None:  # it exits by itself on the mark; killed if it does not
            if not child.kill_at:
                res.worker(index)[Slot.COMMAND] = COMMAND_RETIRE
                child.kill_at = time.monotonic() + CORRUPT_GRACE
            elif time.monotonic() >= child.kill_at:
                child.proc.kill()
            return
        ring = res.rings[index]
        if state.receiver is not None and not ring.quiesced:
            return
        lost = ring.reset()
        res.control[Slot.LOST] += lost
        res.control[Slot.CORRUPT_RINGS] += 1
        error = RingCorruptError(
            f"worker {index}'s ring was corrupt: emptied it ({lost} record(s) lost)"
        )
        log.error("%s; starting a new worker on it", error)
        state.callbacks.emit_error(error)
        if index < state.active or index in state.retiring:
            self._children.spawn("worker", index)

"""SIGTTIN / SIGTTOU: one worker more or fewer, between one and max_workers.

The receiver routes by the active count in the supervisor's counter block; a removed
worker is retired only once the receiver routes with the new count and its ring is empty,
so nothing is left behind in it.
"""

from __future__ import annotations

import logging

from ..stats import COMMAND_RETIRE, Slot
from .children import Children
from .resources import Resources
from .state import ServerState

log = logging.getLogger("ugram.supervisor")


class Scaler:
    """Changes the number of active workers."""

    def __init__(self, state: ServerState, res: Resources, children: Children) -> None:
        """Scale the workers of ``state``; ``children`` starts new ones."""
        self._state, self._res, self._children = state, res, children

    def add(self) -> None:
        """One worker more (up to max_workers)."""
        state = self._state
        slots = len(self._res.rings)
        if state.active >= slots:
            log.warning("SIGTTIN ignored: already at max_workers=%d", slots)
            return
        index = state.active
        state.retiring.discard(index)
        self.set_active(state.active + 1)
        if index not in state.workers:
            self._children.spawn("worker", index)
        state.callbacks.emit_server_info(f"SIGTTIN: now {state.active} worker(s)")

    def remove(self) -> None:
        """One worker fewer (at least one stays); its ring is drained first."""
        state = self._state
        if state.active <= 1:
            log.warning("SIGTTOU ignored: one worker is the minimum")
            return
        self.set_active(state.active - 1)
        state.retiring.add(state.active)
        state.callbacks.emit_server_info(f"SIGTTOU: now {state.active} worker(s)")

    def set_active(self, active: int) -> None:
        """Route to ``active`` workers from now on (the receiver reads it from shared memory)."""
        self._state.active = active
        self._res.control[Slot.ACTIVE] = active

    def advance(self) -> None:
        """Retire a SIGTTOU'd worker once the receiver stopped routing to it and it drained."""
        state = self._state
        receiver_caught_up = self._children.receiver_caught_up()
        for index in sorted(state.retiring):
            child = state.workers.get(index)
            if child is None or not receiver_caught_up or self._res.rings[index].used_bytes():
                continue
            self._res.worker(index)[Slot.COMMAND] = COMMAND_RETIRE

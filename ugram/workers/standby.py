"""A SIGHUP replacement boots before the worker it replaces is retired.

The supervisor starts it with ``standby_block`` set: it imports the handler and runs
``setup()`` reporting in that block, says READY, and waits here. Only then is the old worker
told to retire; once the old one has exited, the supervisor orders TAKE_OVER and this
process becomes the slot's worker (the slot's block, its ring). A deploy that cannot be
imported or set up therefore never costs a slot its running worker, and the ring keeps one
consumer at a time: the replacement touches it only after the old worker has exited.
"""

from __future__ import annotations

import logging
import os
import time

import setproctitle

from ..ordering import full_fence
from ..spec import parent_alive
from ..stats import COMMAND_RETIRE, COMMAND_TAKE_OVER, Slot, State
from .handler import Handler

log = logging.getLogger("ugram.worker")

POLL = 0.01  # seconds between two looks at the order: the hand-over's added latency


def stand_by(block: memoryview, index: int, ppid: int) -> bool:
    """Wait, booted, for the supervisor's order.

    Args:
        block: the standby block (``ChildSpec.standby_block``).
        index: the slot this process is to take over.
        ppid: the supervisor's pid, as seen at start.

    Returns:
        True: take over the slot now. False: exit without touching the ring (the reload
        was called off, or the supervisor is gone).
    """
    setproctitle.setproctitle(f"ugram: worker {index} (standby)")
    block[Slot.PID] = os.getpid()
    block[Slot.STATE] = State.READY
    while True:
        command = block[Slot.COMMAND]
        if command == COMMAND_TAKE_OVER:
            # The order comes after the supervisor reaped the old worker: no load of the
            # ring below may be satisfied before the order was seen.
            full_fence()
            setproctitle.setproctitle(f"ugram: worker {index}")
            return True
        if command == COMMAND_RETIRE or not parent_alive(ppid):
            return False
        time.sleep(POLL)


def called_off(handler: Handler, block: memoryview, index: int) -> None:
    """The reload was called off before this process took over: undo ``setup()``."""
    block[Slot.STATE] = State.DRAINING
    if handler.teardown is not None:
        try:
            handler.teardown()
        except Exception:
            log.exception("worker %d (standby): handler teardown() failed", index)
    block[Slot.STATE] = State.STOPPED

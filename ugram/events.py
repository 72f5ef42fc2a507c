"""Lifecycle callbacks, shaped after golib's RegisterFuncError / Info / InfoServer.

A datagram server has no connections, so ``on_info``'s states describe the processes that
stand in for golib's handler goroutine: the receiver and the workers. ``local`` is the socket
path; ``remote`` is the process's name (``"receiver"``, ``"worker 3"``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger("ugram.supervisor")


class ConnState(enum.Enum):
    """What ``on_info`` reports."""

    RECEIVER_STARTED = "receiver started"
    RECEIVER_STOPPED = "receiver stopped"
    WORKER_STARTED = "worker started"
    WORKER_STOPPED = "worker stopped"
    DATAGRAMS_READ = "datagrams read"  # once per supervisor tick in which new ones arrived


# What each state means; docs/reference.md is checked against this table.
CONN_STATE_DOCS: dict[ConnState, str] = {
    ConnState.RECEIVER_STARTED: "a receiver process was started (at start-up or after a crash)",
    ConnState.RECEIVER_STOPPED: "the receiver exited (drained at shutdown, or crashed)",
    ConnState.WORKER_STARTED: "a worker process was started (`remote` is `worker N`)",
    ConnState.WORKER_STOPPED: "a worker exited (drained, recycled, retired, or crashed)",
    ConnState.DATAGRAMS_READ: "new datagrams were read since the last supervisor tick "
    "(at most once per 50 ms tick, not once per datagram)",
}

ErrorCallback = Callable[..., object]
InfoCallback = Callable[[str, str, ConnState], object]
ServerInfoCallback = Callable[[str], object]


class Callbacks:
    """Registered callbacks; one that raises is logged, never fatal.

    Callbacks run in the supervisor's main loop, in registration order: a slow one delays
    reaping and liveness checks, so hand long work to a thread or a queue.
    """

    def __init__(self) -> None:
        self.error: list[ErrorCallback] = []
        self.info: list[InfoCallback] = []
        self.server_info: list[ServerInfoCallback] = []

    def emit_error(self, *errors: BaseException) -> None:
        """Call every ``on_error`` callback with ``errors``."""
        for callback in self.error:
            _call(callback, *errors)

    def emit_info(self, local: str, remote: str, state: ConnState) -> None:
        """Call every ``on_info`` callback."""
        for callback in self.info:
            _call(callback, local, remote, state)

    def emit_server_info(self, message: str, *, logged: bool = False) -> None:
        """Log ``message`` (unless the caller has: ``logged``) and call every
        ``on_server_info`` callback with it."""
        if not logged:
            log.info("%s", message)
        for callback in self.server_info:
            _call(callback, message)


def _call(callback: Callable[..., object], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("callback %r raised; ignored", callback)

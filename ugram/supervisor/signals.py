"""Signals for the blocking form: the handler only queues, the main loop dispatches.

No logging and no locks in a signal handler: it appends the signal number, and the
interpreter's wake-up fd (:func:`signal.set_wakeup_fd`) ends the main loop's poll at once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGCHLD", "SIGHUP", "SIGTTIN", "SIGTTOU")

Handler = Callable[[int, FrameType | None], None]


def install(handler: Handler, wake_fd: int) -> dict[int, object]:
    """Route :data:`HANDLED_SIGNALS` to ``handler``, waking ``wake_fd``; return what to restore."""
    previous: dict[int, object] = {-1: signal.set_wakeup_fd(wake_fd)}
    for name in HANDLED_SIGNALS:
        signum = getattr(signal, name)
        previous[signum] = signal.signal(signum, handler)
    return previous


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers and the wake-up fd that :func:`install` replaced."""
    for signum, handler in previous.items():
        if signum == -1:
            signal.set_wakeup_fd(int(handler))  # type: ignore[call-overload]
        else:
            signal.signal(signum, handler)  # type: ignore[arg-type]


def drain_pipe(fd: int) -> None:
    """Read the non-blocking wake-up pipe ``fd`` empty."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass

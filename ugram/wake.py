"""Wake-up channels between processes: an eventfd on Linux, a pipe elsewhere."""

from __future__ import annotations

import contextlib
import os


def make_wake() -> tuple[int, int]:
    """Create a non-blocking wake-up channel: ``(read_fd, write_fd)``, equal for an eventfd."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    r, w = os.pipe()  # pragma: no cover - Darwin
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def signal_wake(write_fd: int) -> None:
    """Wake whoever sleeps on the channel; a full channel already means "wake up"."""
    with contextlib.suppress(BlockingIOError):
        os.write(write_fd, (1).to_bytes(8, "little"))


def clear_wake(read_fd: int) -> None:
    """Consume pending wake-ups so the next sleep blocks."""
    try:
        while os.read(read_fd, 8):
            if hasattr(os, "eventfd"):
                break
    except BlockingIOError:
        pass

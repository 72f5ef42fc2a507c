"""Wake-up channels between processes: an eventfd on Linux, a pipe elsewhere (and under the
portable profile, :mod:`ugram.portable`)."""

from __future__ import annotations

import contextlib
import os

from . import portable

# One read drains an eventfd (8 bytes) or up to 512 pending wake-ups of a pipe.
_CHUNK = 4096


def make_wake() -> tuple[int, int]:
    """Create a non-blocking wake-up channel: ``(read_fd, write_fd)``, equal for an eventfd."""
    if portable.current().has_eventfd:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return fd, fd
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def signal_wake(write_fd: int) -> None:
    """Wake whoever sleeps on the channel; a full channel already means "wake up"."""
    with contextlib.suppress(BlockingIOError):
        os.write(write_fd, (1).to_bytes(8, "little"))


def clear_wake(read_fd: int) -> None:
    """Consume pending wake-ups so the next sleep blocks."""
    # Whichever kind the channel is: a short read means it is empty now (an eventfd's read
    # is always 8 bytes), so an eventfd costs one read, as before, and a pipe one per 512.
    with contextlib.suppress(BlockingIOError):
        while len(os.read(read_fd, _CHUNK)) == _CHUNK:
            pass

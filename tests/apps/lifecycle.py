"""Handlers for the supervisor lifecycle tests (reload, drain, shutdown deadline).

Each worker appends every payload to ``$UGTEST_OUT/<pid>.log`` and its lifecycle events to
``$UGTEST_OUT/<pid>.life`` as ``<event> <time.time()>`` lines, so a test can order the
events of different worker processes.
"""

from __future__ import annotations

import os
import time

OUT = os.environ.get("UGTEST_OUT", "/tmp")
TEARDOWN_S = float(os.environ.get("UGTEST_TEARDOWN", "1.0"))


def _append(suffix: str, line: bytes) -> None:
    fd = os.open(f"{OUT}/{os.getpid()}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def event(name: str) -> None:
    """Note a lifecycle event of this process, with the wall-clock time."""
    _append("life", f"{name} {time.time():.6f}".encode())


class SlowTeardown:
    """Records payloads; ``teardown()`` takes ``$UGTEST_TEARDOWN`` seconds (default 1)."""

    def setup(self) -> None:
        event("setup")

    def handle(self, data: bytes) -> None:
        _append("log", data)

    def teardown(self) -> None:
        event("teardown-start")
        time.sleep(TEARDOWN_S)
        event("teardown-end")


def gated(data: bytes) -> None:
    """Records payloads, but only once ``$UGTEST_OUT/gate`` exists (``waiting`` says it
    is held at the gate)."""
    if not os.path.exists(f"{OUT}/gate"):
        if not os.path.exists(f"{OUT}/waiting"):
            os.close(os.open(f"{OUT}/waiting", os.O_WRONLY | os.O_CREAT))
        while not os.path.exists(f"{OUT}/gate"):
            time.sleep(0.01)
    _append("log", data)

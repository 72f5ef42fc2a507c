"""Handlers that misbehave on purpose, for the fault-tolerance tests.

Every handled payload is appended to ``$UGTEST_OUT/<pid>.log`` before the handler returns,
so a test can count what was handled (at least once) against what was sent.
"""

from __future__ import annotations

import os
import time

OUT = os.environ.get("UGTEST_OUT", "/tmp")
_fd = -1
_hoard: list[bytes] = []


def _record(data: bytes) -> None:
    global _fd
    if _fd < 0:
        _fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(_fd, data + b"\n")


def poison(data: bytes) -> None:
    """Kills its own process on the payload ``POISON``."""
    if data == b"POISON":
        os._exit(17)
    _record(data)


def hang(data: bytes) -> None:
    """Hangs forever on ``HANG``; burns 1.2 s of CPU on ``CPU``."""
    if data == b"HANG":
        time.sleep(3600)
    if data == b"CPU":
        end = time.process_time() + 1.2
        while time.process_time() < end:
            pass
    _record(data)


def leak(data: bytes) -> None:
    """Keeps 256 KiB per record forever (a memory leak)."""
    _hoard.append(b"x" * (256 * 1024) + data)  # touched pages: resident memory grows
    _record(data)


def slow(data: bytes) -> None:
    """Takes 0.2 ms per record."""
    end = time.perf_counter() + 0.0002
    while time.perf_counter() < end:
        pass
    _record(data)


def slower(data: bytes) -> None:
    """Takes 1 ms per record."""
    time.sleep(0.001)
    _record(data)

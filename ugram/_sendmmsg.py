"""``sendmmsg(2)`` through ctypes: many datagrams in one system call (Linux, 64-bit).

The headers are built in ``array('Q')`` buffers allocated once: ``struct mmsghdr`` is eight
u64 words on LP64 Linux (x86-64 and aarch64 share the layout), so per batch only the iovecs
(base, length) are written, pointing into one joined copy of the payloads.
"""

from __future__ import annotations

import array
import ctypes
import os
import sys
from collections.abc import Sequence
from itertools import accumulate, chain
from typing import Any

MMSGHDR_WORDS = 8  # msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control, ..., msg_len
IOVEC_WORDS = 2


def _load() -> Any:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_sendmmsg = _load()
AVAILABLE = _sendmmsg is not None


class Batch:
    """Reusable headers for up to ``size`` datagrams per call."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._iov = array.array("Q", bytes(8 * IOVEC_WORDS * size))
        self._headers = array.array("Q", bytes(8 * MMSGHDR_WORDS * size))
        iov_address = self._iov.buffer_info()[0]
        for i in range(size):
            self._headers[i * MMSGHDR_WORDS + 2] = iov_address + 16 * i  # msg_iov
            self._headers[i * MMSGHDR_WORDS + 3] = 1  # msg_iovlen
        self._address = self._headers.buffer_info()[0]

    def send(self, fd: int, payloads: Sequence[bytes | bytearray | memoryview]) -> int:
        """Send ``payloads`` (at most ``size``) on ``fd``; returns how many the kernel took.

        Raises:
            OSError: the first datagram failed (BlockingIOError when the queue is full).
        """
        count = len(payloads)
        blob = b"".join(payloads)  # one copy, so one base address for every iovec
        base = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value or 0
        lengths = [len(p) if not isinstance(p, memoryview) else p.nbytes for p in payloads]
        offsets = accumulate(lengths[:-1], initial=base)
        iovecs = chain.from_iterable(zip(offsets, lengths, strict=True))
        self._iov[: IOVEC_WORDS * count] = array.array("Q", iovecs)
        sent: int = _sendmmsg(fd, self._address, count, 0)
        if sent < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return sent

"""Descriptors that senders pass (SCM_RIGHTS) are refused: closed the moment they arrive.

A Unix datagram may carry open file descriptors. The kernel installs them in the receiving
process as soon as the receiver reads the datagram with room for ancillary data, which it
gives only when it collects the senders' credentials (``credentials``, allow lists, rate
limits). Nothing in ugram uses a passed descriptor, and each one kept would stay open for
good: a sender passing 12 a datagram took the receiver to its descriptor limit in 0.07 s.
So every one is closed right after the read, counted in the receiver's ``FDS_CLOSED`` slot,
and the datagram itself goes on as usual. Without room for ancillary data the kernel closes
them itself (and sets MSG_CTRUNC); with too little room it closes those that did not fit and
installs the rest, which are closed here.

Only the process that made the read may close them: a successor that recovers a dead
receiver's scratch slots finds numbers that were the dead process's, not its own.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct

SCM_RIGHTS: int = getattr(socket, "SCM_RIGHTS", 1)
SCM_PIDFD = 4  # Linux 6.5: a pidfd of the sender, with SO_PASSPIDFD on (not named by Python)
PASSED = frozenset({SCM_RIGHTS, SCM_PIDFD})
CMSG_HEADER = struct.Struct("@Nii")  # cmsg_len (size_t), cmsg_level, cmsg_type
_INT = array.array("i").itemsize


def close_all(data: bytes | memoryview) -> int:
    """Close each descriptor in ``data`` (native ints; a partial one at the end is ignored).

    Returns:
        How many were closed.
    """
    fds = array.array("i")
    fds.frombytes(bytes(data[: len(data) - len(data) % _INT]))
    closed = 0
    for fd in fds:
        if fd < 0:
            continue
        with contextlib.suppress(OSError):  # EBADF: not one the kernel installed for us
            os.close(fd)
            closed += 1
    return closed


def close_in_ancdata(ancdata: list[tuple[int, int, bytes]]) -> int:
    """Close the descriptors in ``recvmsg``'s ancillary data; returns how many."""
    return sum(
        close_all(data)
        for level, kind, data in ancdata
        if level == socket.SOL_SOCKET and kind in PASSED
    )


def close_in_control(control: bytes | memoryview) -> int:
    """Close the descriptors in raw ancillary data (a msghdr's control buffer, as long as
    the kernel filled it); returns how many. Twin of ``close_passed_fds`` in
    ugram/_speedups.c."""
    offset, closed, size = 0, 0, len(control)
    while offset + CMSG_HEADER.size <= size:
        length, level, kind = CMSG_HEADER.unpack_from(control, offset)
        if length < CMSG_HEADER.size:
            break
        if level == socket.SOL_SOCKET and kind in PASSED:
            end = min(offset + length, size)
            closed += close_all(control[offset + CMSG_HEADER.size : end])
        offset += (length + 7) & ~7
    return closed

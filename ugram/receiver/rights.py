"""Descriptors that senders pass (SCM_RIGHTS) are refused: closed the moment they arrive.

A Unix datagram may carry open file descriptors. Nothing in ugram uses one, and each one kept
would stay open for good: a sender passing 12 a datagram took the receiver to its descriptor
limit in 0.07 s. Two defences, the first where the kernel has it:

* **The kernel refuses them** (Linux 6.16 and later): the server socket has SO_PASSRIGHTS
  off (:func:`ugram.sockets.refuse_rights`), so a sender's ``sendmsg`` with SCM_RIGHTS fails
  with EPERM and nothing reaches the receiver.
* **The receiver closes them** (older kernels). The kernel installs them in the receiving
  process as soon as the receiver reads the datagram with room for ancillary data, which it
  gives only when it collects the senders' credentials (``credentials``, allow lists, rate
  limits, a handler that may reply). Every one is closed right after the read, counted in
  the receiver's ``FDS_CLOSED`` slot, and the datagram itself goes on as usual.

Closing must never wait: the receiver is the single reader, and a close that blocks freezes
ingestion. ``close()`` returns at once for nearly everything (files, pipes and FIFOs,
Unix sockets, eventfds, ...), but not for a TCP (or SCTP, vsock) socket that lingers: with
SO_LINGER on, a long timeout and unsent data to a peer that does not read, the last close
waits for the whole timeout. So a passed socket first gets SO_LINGER {on, 0 s}, which makes
the close abort the connection (a reset) and return at once (:func:`close_passed`, and
``close_passed_fds`` in ugram/_speedups.c).

What this cannot cover, on kernels without SO_PASSRIGHTS (docs/security.md says what the
operator can do):

* descriptors the kernel drops itself during the read, in the receiver's context: all of
  them when the receiver reads without room for ancillary data (no credentials), those past
  the room it gives (more than 12 a datagram), and those it cannot install (the receiver at
  its descriptor limit);
* a passed Unix socket whose own queue holds passed descriptors (closing it drops them);
* a sender that keeps a copy of its socket and turns lingering back on between the
  receiver's setsockopt and its close;
* a file on a filesystem whose close waits on a server the sender controls (FUSE, a
  stalled NFS mount).

Only the process that made the read may close them: a successor that recovers a dead
receiver's scratch slots finds numbers that were the dead process's, not its own.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import stat
import struct

SCM_RIGHTS: int = getattr(socket, "SCM_RIGHTS", 1)
SCM_PIDFD = 4  # Linux 6.5: a pidfd of the sender, with SO_PASSPIDFD on (not named by Python)
PASSED = frozenset({SCM_RIGHTS, SCM_PIDFD})
CMSG_HEADER = struct.Struct("@Nii")  # cmsg_len (size_t), cmsg_level, cmsg_type
_INT = array.array("i").itemsize
# SO_LINGER on with a 0 s timeout: close() aborts the connection instead of waiting.
_ABORT_ON_CLOSE = struct.pack("ii", 1, 0)


def close_all(data: bytes | memoryview) -> int:
    """Close each descriptor in ``data`` (native ints; a partial one at the end is ignored).

    Returns:
        How many were closed.
    """
    fds = array.array("i")
    fds.frombytes(bytes(data[: len(data) - len(data) % _INT]))
    return sum(close_passed(fd) for fd in fds if fd >= 0)


def close_passed(fd: int) -> bool:
    """Close a descriptor a sender passed, without waiting on it (a socket's SO_LINGER is
    turned to an abort first).

    Returns:
        True if it was closed; False if ``fd`` was not open (not one the kernel installed).
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:  # EBADF
        return False
    if stat.S_ISSOCK(mode):
        # SO_LINGER is a SOL_SOCKET option: the same whatever family and type the object
        # is told (given, so that it does not ask the kernel).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_ON_CLOSE)
        except OSError:  # a socket without the option: its close does not linger either
            pass
        finally:
            sock.detach()
    with contextlib.suppress(OSError):  # EINTR: closed all the same (Linux)
        os.close(fd)
    return True


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

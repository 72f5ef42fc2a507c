"""Batched receive: ``recvmmsg(2)`` through ctypes, one syscall for up to BATCH datagrams.

The message headers, address buffers and payload slots are allocated once; after each call
the fields the receiver needs (payload length, flags, address length) are read through a
``memoryview`` of the header array instead of ctypes attribute access, which is several
times slower per field. Linux only: :func:`available` says whether it can be used, and the
receiver falls back to a ``recvfrom_into`` drain elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import sys

BATCH = 64
SOCKADDR_UN_SIZE = 110  # sa_family_t + sun_path[108]
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint32))


# u32 positions inside one mmsghdr, for the memoryview reads and writes
_STRIDE = ctypes.sizeof(_Mmsghdr) // 4
_NAMELEN = _Msghdr.msg_namelen.offset // 4
_CONTROLLEN = _Msghdr.msg_controllen.offset // 4
_FLAGS = _Msghdr.msg_flags.offset // 4
_LEN = _Mmsghdr.msg_len.offset // 4


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "recvmmsg"):
        return None
    libc.recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.POINTER(_Mmsghdr),
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    libc.recvmmsg.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def available() -> bool:
    """True where recvmmsg can be called (Linux with a C library that has it)."""
    return _LIBC is not None and ctypes.sizeof(ctypes.c_void_p) == 8


class BatchReceiver:
    """Receives up to ``batch`` datagrams per call into preallocated slots.

    Each slot is ``max_datagram + 1`` bytes so that a datagram over the limit is detected
    (MSG_TRUNC or a length past the limit) and never passed on truncated.
    """

    def __init__(
        self, fd: int, max_datagram: int, control_size: int = 0, batch: int = BATCH
    ) -> None:
        """Preallocate buffers for socket ``fd``.

        Raises:
            OSError: recvmmsg is not available here.
        """
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available on this platform")
        self.fd = fd
        self.size = batch
        self.slot = max_datagram + 1
        self.control_size = control_size
        self.payloads = ctypes.create_string_buffer(self.slot * batch)
        self.names = ctypes.create_string_buffer(SOCKADDR_UN_SIZE * batch)
        self.controls = ctypes.create_string_buffer(max(1, control_size) * batch)
        self.iovecs = (_Iovec * batch)()
        self.headers = (_Mmsghdr * batch)()
        self._wire()
        self.view = memoryview(self.payloads).cast("B")
        self.name_view = memoryview(self.names).cast("B")
        self.control_view = memoryview(self.controls).cast("B")
        self.fields = memoryview(self.headers).cast("B").cast("I")
        self._headers_ptr = ctypes.cast(self.headers, ctypes.POINTER(_Mmsghdr))

    def _wire(self) -> None:
        base = ctypes.addressof(self.payloads)
        names = ctypes.addressof(self.names)
        controls = ctypes.addressof(self.controls)
        for i in range(self.size):
            self.iovecs[i].iov_base = base + i * self.slot
            self.iovecs[i].iov_len = self.slot
            hdr = self.headers[i].msg_hdr
            hdr.msg_name = names + i * SOCKADDR_UN_SIZE
            hdr.msg_namelen = SOCKADDR_UN_SIZE
            hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            hdr.msg_iovlen = 1
            if self.control_size:
                hdr.msg_control = controls + i * self.control_size
                hdr.msg_controllen = self.control_size

    def receive(self) -> int:
        """Receive what is queued, up to BATCH datagrams, without blocking.

        Returns:
            How many datagrams were received (0 when the socket is empty).

        Raises:
            OSError: any error other than EAGAIN/EINTR.
        """
        assert _LIBC is not None
        while True:
            count = int(_LIBC.recvmmsg(self.fd, self._headers_ptr, self.size, MSG_DONTWAIT, None))
            if count >= 0:
                return count
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    def reset(self, count: int) -> None:
        """Restore the in/out lengths the kernel overwrote in the first ``count`` headers."""
        fields, stride = self.fields, _STRIDE
        for i in range(count):
            fields[i * stride + _NAMELEN] = SOCKADDR_UN_SIZE
            if self.control_size:
                fields[i * stride + _CONTROLLEN] = self.control_size

    def length(self, i: int) -> int:
        """Bytes the kernel delivered for datagram ``i`` (its full size if truncated)."""
        return int(self.fields[i * _STRIDE + _LEN])

    def truncated(self, i: int) -> bool:
        """True if datagram ``i`` did not fit its slot."""
        return bool(self.fields[i * _STRIDE + _FLAGS] & MSG_TRUNC)

    def payload(self, i: int, n: int) -> memoryview:
        """The first ``n`` bytes of slot ``i``."""
        start = i * self.slot
        return self.view[start : start + n]

    def address(self, i: int) -> bytes:
        """Sender address of datagram ``i`` as ring bytes: path, ``\\0name``, or b""."""
        namelen = int(self.fields[i * _STRIDE + _NAMELEN])
        if namelen <= 2:
            return b""  # unbound sender: only sa_family
        start = i * SOCKADDR_UN_SIZE + 2
        raw = bytes(self.name_view[start : start + namelen - 2])
        return raw if raw[:1] == b"\0" else raw.rstrip(b"\0")

    def control(self, i: int) -> bytes:
        """The ancillary data of datagram ``i`` (credentials when SO_PASSCRED is on)."""
        size = int(self.fields[i * _STRIDE + _CONTROLLEN])
        start = i * self.control_size
        return bytes(self.control_view[start : start + size])


CMSG_HEADER = struct.Struct("@Nii")  # cmsg_len (size_t), cmsg_level, cmsg_type


def credentials_from_control(control: bytes, scm_credentials: int) -> tuple[int, int, int] | None:
    """Parse ``(pid, uid, gid)`` from raw ancillary data; None when absent or pid is 0."""
    offset = 0
    while offset + CMSG_HEADER.size <= len(control):
        length, level, kind = CMSG_HEADER.unpack_from(control, offset)
        if length < CMSG_HEADER.size:
            return None
        if level == socket.SOL_SOCKET and kind == scm_credentials:
            pid, uid, gid = struct.unpack_from("iII", control, offset + CMSG_HEADER.size)
            return (pid, uid, gid) if pid else None
        offset += (length + 7) & ~7
    return None

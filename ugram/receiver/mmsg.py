"""Batched receive: ``recvmmsg(2)`` through ctypes, one syscall for up to BATCH datagrams.

The message headers, address buffers and payload slots are allocated once; after each call
the fields the receiver needs (payload length, flags, address length) are read through a
``memoryview`` of the header array instead of ctypes attribute access, which is several
times slower per field. Linux only: :func:`available` says whether it can be used, and the
receiver falls back to a ``recvfrom_into`` drain elsewhere (macOS, the portable profile).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
import sys

from .. import portable, speedups
from ..ordering import words
from .rights import close_in_control

BATCH = 64
SOCKADDR_UN_SIZE = 110  # sa_family_t + sun_path[108]
MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
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
STRIDE, NAMELEN, FLAGS, LEN = _STRIDE, _NAMELEN, _FLAGS, _LEN


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The C library this Python already runs on (dlopen(NULL)): ctypes.util.find_library
        # would run ldconfig in a subprocess at every receiver start, to find the same one.
        libc = ctypes.CDLL(None, use_errno=True)
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
    """True where recvmmsg can be called (Linux with a C library that has it) and the
    platform lets it be used (not under the portable profile, :mod:`ugram.portable`)."""
    if not portable.current().has_recvmmsg:
        return False
    return _LIBC is not None and ctypes.sizeof(ctypes.c_void_p) == 8


SENTINEL = 0xFFFF_FFFF  # msg_len of a slot the kernel has not filled
_DESC = 64  # bytes of descriptor at the start of the shared area
_PLACED = 0  # u64 slot: slots below this index are in a ring (or rejected)
_READY = 1  # u64 slot: _MAGIC once the slots were initialised
_MAGIC = 0x5547_5343_5241_5443
PLACED = _PLACED  # for a caller's inlined hot loop (same as mark_placed)
_NAME_STRIDE = 112  # sockaddr_un, 8-aligned


def scratch_size(max_datagram: int, control_size: int, batch: int) -> int:
    """Bytes of shared memory a :class:`BatchReceiver` needs."""
    per_slot = ctypes.sizeof(_Mmsghdr) + ctypes.sizeof(_Iovec) + _NAME_STRIDE
    per_slot += (control_size + 7) & ~7
    per_slot += (max_datagram + 1 + 7) & ~7
    return _DESC + batch * per_slot


class BatchReceiver:
    """Receives up to ``batch`` datagrams per call into preallocated slots.

    Each slot is ``max_datagram + 1`` bytes so that a datagram over the limit is detected
    (MSG_TRUNC or a length past the limit) and never passed on truncated.

    Everything lives in one shared mapping that the supervisor creates (the scratch area),
    so a receiver killed with a batch in hand loses nothing: the kernel writes each
    message's length as it copies it (a length of SENTINEL means "not filled"), and
    the ``placed`` index says how far the dead receiver got; its successor places the rest
    (:meth:`unplaced`). At most the one datagram being placed at the kill is placed twice.
    """

    def __init__(
        self,
        fd: int,
        max_datagram: int,
        control_size: int = 0,
        batch: int = BATCH,
        scratch_fd: int = -1,
        use_speedups: bool = True,
    ) -> None:
        """Map the scratch area (``scratch_fd``, or private memory when -1) for socket ``fd``;
        ``use_speedups``: reset slots with the C helper when it was built.

        Raises:
            OSError: recvmmsg is not available here.
        """
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available on this platform")
        self.fd = fd
        self.size = batch
        self.slot = max_datagram + 1
        self.control_size = control_size
        self.closed_fds = 0  # descriptors the last receive() closed
        total = scratch_size(max_datagram, control_size, batch)
        fresh = scratch_fd < 0
        self._mm = mmap.mmap(-1, total) if fresh else mmap.mmap(scratch_fd, total)
        self._native = speedups.native(use_speedups)
        self._layout(batch)
        self._wire()
        if self.desc[_READY] != _MAGIC:  # a new area: every slot starts empty
            self.complete(batch)
            self.desc[_READY] = _MAGIC

    def _layout(self, batch: int) -> None:
        mm, offset = self._mm, 0
        self.desc = words(mm, 0, _DESC // 8)  # read by a successor: ordered (ugram.ordering)
        offset = _DESC
        self.headers = (_Mmsghdr * batch).from_buffer(mm, offset)
        offset += ctypes.sizeof(self.headers)
        self.iovecs = (_Iovec * batch).from_buffer(mm, offset)
        offset += ctypes.sizeof(self.iovecs)
        self._names_at = offset
        offset += _NAME_STRIDE * batch
        self._controls_at = offset
        self._control_stride = (self.control_size + 7) & ~7
        offset += self._control_stride * batch
        self._payloads_at = offset
        self._slot_stride = (self.slot + 7) & ~7
        self.view = memoryview(mm)
        self.fields = memoryview(self.headers).cast("B").cast("I")
        self._headers_ptr = ctypes.cast(self.headers, ctypes.POINTER(_Mmsghdr))
        # Byte offsets of the slots' fields, for the C helper (ugram/_speedups.c).
        self.native_layout = (
            _DESC,
            ctypes.sizeof(_Mmsghdr),
            _Mmsghdr.msg_len.offset,
            _Msghdr.msg_flags.offset,
            _Msghdr.msg_namelen.offset,
            self._names_at,
            _NAME_STRIDE,
            self._payloads_at,
            self._slot_stride,
        )
        # Where each slot's ancillary data is (the senders' credentials), for the C helper.
        self.native_credentials = (
            (
                _Msghdr.msg_controllen.offset,
                self._controls_at,
                self._control_stride,
                self.control_size,
            )
            if self.control_size
            else None
        )

    def _wire(self) -> None:
        # Pointers are per process (each maps the area at its own address): set them anew.
        base = ctypes.addressof(self.headers) - _DESC
        for i in range(self.size):
            self.iovecs[i].iov_base = base + self._payloads_at + i * self._slot_stride
            self.iovecs[i].iov_len = self.slot
            hdr = self.headers[i].msg_hdr
            hdr.msg_name = base + self._names_at + i * _NAME_STRIDE
            hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            hdr.msg_iovlen = 1
            if self.control_size:
                hdr.msg_control = base + self._controls_at + i * self._control_stride

    def receive(self) -> int:
        """Receive what is queued, up to ``batch`` datagrams, without blocking.

        Every descriptor a sender passed with them is closed at once (see
        :mod:`ugram.receiver.rights`); :attr:`closed_fds` says how many this call closed.

        Returns:
            How many datagrams were received (0 when the socket is empty).

        Raises:
            OSError: any error other than EAGAIN/EINTR.
        """
        assert _LIBC is not None
        self.closed_fds = 0
        while True:
            count = int(_LIBC.recvmmsg(self.fd, self._headers_ptr, self.size, MSG_DONTWAIT, None))
            if count >= 0:
                if self.control_size:  # no control buffer: the kernel closed them itself
                    self.closed_fds = sum(close_in_control(self.control(i)) for i in range(count))
                return count
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    def drain_native(
        self,
        rings: tuple[list[mmap.mmap], list[int]],
        span: tuple[int, int],
        limit: int,
        calls: int,
        counters: tuple[memoryview, tuple[int, int, int, int]],
        pack_ns: int = 0,
    ) -> tuple[bool, int, int, int, int, int]:
        """Receive and place in the C helper, up to ``calls`` batches, over the first
        ``active`` rings: in the first whose worker keeps up (within ``pack_ns``, as
        :func:`ugram.ring.room` judges it, when Routes.rejudge would), else round-robin from
        ``next_ring`` (``span``; ``pack_ns`` 0: round-robin only); ``rings`` holds the rings'
        mappings and their consumers' wake-up eventfds. Each datagram is counted in the
        counter block at the slots ``(received, bytes, oversized, fds_closed)``
        (``counters``); with a ``control_size``, each record carries its sender's
        credentials, and the descriptors senders passed are closed as :meth:`receive`
        closes them (counted at ``fds_closed``). Only
        when :attr:`native`; see ``drain`` in ugram/_speedups.c.

        Returns:
            ``(empty, next_ring, placed, oversized, count, following)``: ``count`` and
            ``following`` are non-zero when a full ring stopped it in a batch of ``count``,
            at slot ``following`` (the caller places or holds the rest).

        Raises:
            OSError: a receive error other than EAGAIN/EINTR.
            ValueError: a ring's head or tail is corrupt.
        """
        assert self._native is not None
        maps, wakes = rings
        active, next_ring = span
        block, slots = counters
        empty, *rest = self._native.drain(
            self.fd,
            self._mm,
            self.native_layout,
            self.size,
            maps,
            wakes,
            active,
            next_ring,
            limit,
            calls,
            block,
            slots,
            self.native_credentials,
            pack_ns,
        )
        following_ring, placed, oversized, count, following = (int(x) for x in rest)
        return bool(empty), following_ring, placed, oversized, count, following

    @property
    def native(self) -> bool:
        """True when slots are reset (and can be drained) by the C helper."""
        return self._native is not None

    def mark_placed(self, i: int) -> None:
        """Slot ``i`` is in a ring (or was rejected): a successor must not place it again."""
        self.desc[_PLACED] = i + 1

    def complete(self, count: int) -> None:
        """Ready the first ``count`` slots for the next call (lengths back to SENTINEL)."""
        if self._native is not None:
            self._native.reset_slots(
                self._mm,
                self.native_layout,
                count,
                _Msghdr.msg_controllen.offset,
                self.control_size,
            )
            return
        fields, stride = self.fields, _STRIDE
        for i in range(count):
            at = i * stride
            fields[at + _LEN] = SENTINEL
            fields[at + _NAMELEN] = SOCKADDR_UN_SIZE
            if self.control_size:
                fields[at + _CONTROLLEN] = self.control_size
        self.desc[_PLACED] = 0  # after the reset: a kill in between finds nothing to redo

    def unplaced(self) -> list[int]:
        """Slots a dead predecessor had received but not placed, in order."""
        first = int(self.desc[_PLACED])
        return [i for i in range(first, self.size) if self.fields[i * _STRIDE + _LEN] != SENTINEL]

    def close(self) -> None:
        """Release the mapping's views (the mapping itself goes with the process)."""
        self.desc.release()
        self.fields.release()
        self.view.release()

    def length(self, i: int) -> int:
        """Bytes the kernel delivered for datagram ``i`` (its full size if truncated)."""
        return int(self.fields[i * _STRIDE + _LEN])

    def truncated(self, i: int) -> bool:
        """True if datagram ``i`` did not fit its slot."""
        return bool(self.fields[i * _STRIDE + _FLAGS] & MSG_TRUNC)

    def payload(self, i: int, n: int) -> memoryview:
        """The first ``n`` bytes of slot ``i``."""
        start = self._payloads_at + i * self._slot_stride
        return self.view[start : start + n]

    @property
    def layout(self) -> tuple[memoryview, int, int]:
        """``(fields, payload offset, slot stride)`` for a caller's inlined hot loop; the
        u32 ``fields`` of slot ``i`` start at ``i * STRIDE`` (see LEN, FLAGS, NAMELEN)."""
        return self.fields, self._payloads_at, self._slot_stride

    def address(self, i: int) -> bytes:
        """Sender address of datagram ``i`` as ring bytes: path, ``\\0name``, or b""."""
        namelen = int(self.fields[i * _STRIDE + _NAMELEN])
        if namelen <= 2:
            return b""  # unbound sender: no name, or only sa_family
        start = self._names_at + i * _NAME_STRIDE + 2
        raw = self._mm[start : start + namelen - 2]
        return raw if raw[:1] == b"\0" else raw.rstrip(b"\0")

    def control(self, i: int) -> bytes:
        """The ancillary data of datagram ``i`` (credentials when SO_PASSCRED is on)."""
        size = int(self.fields[i * _STRIDE + _CONTROLLEN])
        start = self._controls_at + i * self._control_stride
        return self._mm[start : start + min(size, self.control_size)]


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

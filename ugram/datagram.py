"""The :class:`Datagram` a handler may ask for: payload, metadata and ``reply``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from .errors import ReplyError


def decode_address(raw: bytes) -> str | None:
    """Render a sender address: a path, ``@name`` for an abstract name, None if unbound."""
    if not raw:
        return None
    if raw[0] == 0:
        return "@" + raw[1:].decode("utf-8", "backslashreplace")
    return os.fsdecode(raw)


class Datagram:
    """One received datagram and where it came from.

    Attributes:
        data: the payload, byte-exact.
        received_at: when the receiver read it (seconds since the epoch, a float: ~0.24 µs
            apart at today's dates).
        received_ns: the same in integer nanoseconds, exact: datagrams read together get
            consecutive values, so it orders them as they were received, even across
            workers (a float ``received_at`` may tie).
        sender: the sender's bound address (a path or ``@name``), None if it bound none.
        pid, uid, gid: the sender's kernel-verified credentials, None when not collected.
    """

    __slots__ = (
        "_address",
        "_on_reply_error",
        "_sock",
        "data",
        "gid",
        "pid",
        "received_at",
        "received_ns",
        "uid",
    )

    def __init__(
        self,
        data: bytes,
        recv_ns: int,
        address: bytes,
        sock: socket.socket | None,
        creds: tuple[int, int, int] | None = None,
        on_reply_error: Callable[[], object] | None = None,
    ) -> None:
        self.data = data
        self.received_ns = recv_ns
        self.received_at = recv_ns / 1e9
        self._address = address
        self._sock = sock
        self._on_reply_error = on_reply_error
        self.pid: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        if creds is not None:
            self.pid, self.uid, self.gid = creds

    @property
    def sender(self) -> str | None:
        """The sender's address, or None when it did not bind one (and cannot get replies)."""
        return decode_address(self._address)

    def reply(self, payload: bytes) -> None:
        """Send ``payload`` back to the sender through the server socket.

        Raises:
            ReplyError: the sender bound no address, is gone, or its queue is full.
        """
        try:
            self._send_reply(payload)
        except ReplyError:
            if self._on_reply_error is not None:
                self._on_reply_error()
            raise

    def _send_reply(self, payload: bytes) -> None:
        if not self._address:
            raise ReplyError("the sender bound no address: it cannot receive a reply")
        if self._sock is None:
            raise ReplyError("replies are not available here")
        target: str | bytes = self._address if self._address[0] == 0 else os.fsdecode(self._address)
        try:
            self._sock.sendto(payload, socket.MSG_DONTWAIT, target)
        except OSError as exc:
            raise ReplyError(f"cannot reply to {self.sender}: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"Datagram({len(self.data)} bytes from {self.sender!r})"

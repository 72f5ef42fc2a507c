"""The :class:`Datagram` a handler may ask for: payload, metadata and ``reply``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from . import portable, safefs
from .errors import ReplyError, UnsafePathError
from .escaping import printable


def decode_address(raw: bytes) -> str | None:
    """Render a sender address: a path, ``@name`` for an abstract name, None if unbound."""
    if not raw:
        return None
    if raw[0] == 0:
        return "@" + raw[1:].decode("utf-8", "backslashreplace")
    return os.fsdecode(raw)


def abstract_reply_refused(sender: str) -> ReplyError:
    """The error for a reply to the abstract name ``sender`` while those are not allowed."""
    return ReplyError(
        f"refusing to reply to {printable(sender)}: an abstract name proves no ownership (once "
        "its sender exits, any local user may bind it and get the reply); bind the sender "
        "to a socket path (ugram.Client.request does), or set allow_abstract_replies = true"
    )


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
        id: names this record for the server's whole run (see :attr:`id`).
    """

    __slots__ = (
        "_address",
        "_allow_abstract",
        "_on_reply_error",
        "_origin",
        "_position",
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
        *,
        allow_abstract: bool = False,
        origin: str | None = None,
        position: int = 0,
    ) -> None:
        self.data = data
        self._origin = origin
        self._position = position
        self.received_ns = recv_ns
        self.received_at = recv_ns / 1e9
        self._address = address
        self._sock = sock
        self._on_reply_error = on_reply_error
        self._allow_abstract = allow_abstract
        self.pid: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        if creds is not None:
            self.pid, self.uid, self.gid = creds

    @property
    def id(self) -> str | None:
        """``<server id>-<worker slot>-<ring resets>-<position>``: the same string when this
        record is replayed (its worker died before acknowledging it), a different one for
        every other record of this server run. The server id is drawn at random at each
        start, so ids never repeat across restarts (nor across hosts). None for a Datagram
        that did not come from a worker's ring.

        A forwarding sink uses it as the broker's deduplication key (``ugram.forward``).
        """
        if self._origin is None:
            return None
        return f"{self._origin}-{self._position}"

    @property
    def sender(self) -> str | None:
        """The sender's address, or None when it did not bind one (and cannot get replies)."""
        return decode_address(self._address)

    def reply(self, payload: bytes) -> None:
        """Send ``payload`` back to the sender through the server socket.

        Only an address the sender provably owns gets a reply: a path only if it is
        absolute, crosses no symlink, and is a socket owned by the sender's uid (credentials
        are collected for this whenever the handler may reply; where the kernel gives none,
        macOS, only a socket in a directory its owner alone may change, as
        :func:`ugram.safefs.open_owned_socket` checks). An abstract name proves
        nothing (whoever binds it next would get the reply), so it gets one only with
        ``allow_abstract_replies = true``.

        Raises:
            ReplyError: the sender bound no address, does not own it, bound an abstract
                name (unless allowed), is gone, or its queue is full.
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
        if self._address[0] == 0:  # abstract: no file, no owner, nothing to check
            if not self._allow_abstract:
                raise abstract_reply_refused(self.sender or "@")
            self._sendto(payload, self._address)
            return
        self._reply_to_path(payload, os.fsdecode(self._address))

    def _reply_to_path(self, payload: bytes, path: str) -> None:
        # A sender could bind a path, then swap it for a symlink to a socket it may not write
        # (or bind a relative name that resolves in our working directory): reply only to
        # a socket file its uid owns, reached through a descriptor of that very inode.
        if self.uid is None and portable.current().has_credentials:
            raise ReplyError(
                f"cannot reply to {printable(path)}: the sender's credentials were not "
                "collected, so its ownership of the path cannot be checked (turn credentials on)"
            )
        try:
            if self.uid is None:  # no credentials here (macOS): the file system proves it
                handle, _ = safefs.open_owned_socket(path)
            else:
                handle = safefs.open_peer_socket(path, self.uid)
        except UnsafePathError as exc:
            raise ReplyError(f"cannot reply to {printable(path)}: {exc}") from None
        if handle < 0:  # no O_PATH (macOS): the path just checked
            self._sendto(payload, path)
            return
        try:
            self._sendto(payload, f"/proc/self/fd/{handle}")
        finally:
            os.close(handle)

    def _sendto(self, payload: bytes, target: str | bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(payload, socket.MSG_DONTWAIT, target)
        except OSError as exc:
            raise ReplyError(
                f"cannot reply to {printable(self.sender or '')}: {exc.strerror or exc}"
            ) from None

    def __repr__(self) -> str:
        return f"Datagram({len(self.data)} bytes from {self.sender!r})"

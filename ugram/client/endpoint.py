"""Where a client's datagrams go: server addresses, connecting by safe paths, and the private
bound address a request receives its reply on."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from typing import Final

from .. import portable, safefs
from ..errors import ConfigError

MAX_REPLY: Final = 1 << 18  # larger than any AF_UNIX datagram the default wmem_max allows

# The peer is gone (closed, or never there): reconnect, perhaps to a successor.
GONE_ERRNOS: Final = frozenset(
    {errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE}
)


def server_address(path: str | os.PathLike[str]) -> str | bytes:
    """The ``connect`` address of a server path, ``@name`` being a Linux abstract name.

    Raises:
        ConfigError: an abstract name on a platform without them (macOS, the portable
            profile).
    """
    text = os.fspath(path)
    if not text.startswith("@"):
        return text
    here = portable.current()
    if not here.has_abstract:
        raise ConfigError(f"{text}: {here.unavailable(portable.NO_ABSTRACT)}")
    return b"\0" + text[1:].encode()


def fit_send_buffer(sock: socket.socket, max_datagram: int) -> None:
    """Raise ``sock``'s SO_SNDBUF so that a datagram of ``max_datagram`` bytes fits, where
    the default is smaller (macOS: 2048 bytes, ``net.local.dgram.maxdgram``).

    The system may grant less (its ceiling: ``kern.ipc.maxsockbuf``, ``net.core.wmem_max``);
    a datagram over what it granted then fails with a :class:`PayloadTooLargeError` that
    says so. Never lowers it: in-flight bytes count against it too.
    """
    here = portable.current()
    if here.dgram_limit(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)) >= max_datagram:
        return
    with contextlib.suppress(OSError):  # above the ceiling (macOS: ENOBUFS): keep the default
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max_datagram + here.dgram_overhead)


def send_limit(sock: socket.socket) -> tuple[int, int]:
    """``sock``'s SO_SNDBUF and the largest datagram it lets through."""
    sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return sndbuf, portable.current().dgram_limit(sndbuf)


def connect_to(sock: socket.socket, address: str | bytes) -> None:
    """Connect ``sock`` to a server address from :func:`server_address`.

    An abstract name is connected as it is; a path through :func:`ugram.safefs.socket_target`,
    which follows no symlink another user could have planted.

    Raises:
        UnsafePathError: a component of the path is an untrusted symlink or not a directory
            (``errno`` ``ENOENT`` when a directory is missing).
        OSError: the connect failed (``ENOENT``, ``ECONNREFUSED``: no server there).
    """
    if isinstance(address, bytes):
        sock.connect(address)
        return
    with safefs.socket_target(address) as target:
        sock.connect(target)


class ReplyEndpoint:
    """A private bound address for one request: ``reply.sock`` in a fresh directory of its
    own, connected to the server, so only the server's replies are received.

    Not an abstract name: any local user may bind one once it is free, so a server refuses
    to reply to those by default. Until the socket is connected, the directory is 0700:
    nobody can queue a forged reply. Connected, the kernel takes datagrams for it from the
    server's socket only, and the directory (0711) and socket (0622) let a server that runs
    as another, unprivileged user reach it.
    """

    def __init__(self, server: str | bytes) -> None:
        """Bind the private address (nothing is connected yet).

        Raises:
            OSError: the directory or the socket could not be made.
        """
        self.server = server
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        self._dir_fd = -1
        try:
            self._dir = tempfile.mkdtemp(prefix="ugram-", dir=_reply_parent())
            # Its modes are changed through this descriptor later, never by its path,
            # which another user could swap in a directory without the sticky bit.
            self._dir_fd = os.open(self._dir, os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self.path = os.path.join(self._dir, "reply.sock")
            self.sock.bind(self.path)
        except BaseException:
            self.close()
            raise

    def connect(self) -> bool:
        """Connect to the server; False while no server listens.

        Raises:
            OSError: connecting failed for another reason than a missing server.
        """
        try:
            connect_to(self.sock, self.server)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                return False
            raise
        # Inside our own 0700 directory nobody else can replace the socket's name.
        os.chmod("reply.sock", 0o622, dir_fd=self._dir_fd)
        os.fchmod(self._dir_fd, 0o711)
        return True

    def close(self) -> None:
        """Close the socket and remove its directory."""
        self.sock.close()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _reply_parent() -> str:
    """Where request sockets are made: the temporary directory, resolved (a server refuses
    to reply through a symlink), or ``/tmp`` when that would make a path too long."""
    parent = os.path.realpath(tempfile.gettempdir())
    # "/ugram-" + 8 random characters + "/reply.sock" must fit in sun_path with its NUL
    fits = len(os.fsencode(parent)) + 26 <= portable.current().sun_path_max
    return parent if fits else "/tmp"

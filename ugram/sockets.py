"""The socket file: bind safely, refuse what is not ours, and unlink only our own inode."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
from dataclasses import dataclass

from . import portable, safefs
from .errors import (
    NotASocketError,
    PathTooLongError,
    SocketError,
    SocketInUseError,
    UnsafePathError,
)

log = logging.getLogger("ugram.sockets")

# Linux 6.16: with it off, the kernel refuses datagrams that carry file descriptors (the
# sender's sendmsg fails with EPERM). Not named by Python yet.
SO_PASSRIGHTS = 83


@dataclass(frozen=True)
class BoundSocket:
    """A datagram socket ugram receives on, and how to clean it up.

    Attributes:
        sock: the bound, non-blocking AF_UNIX SOCK_DGRAM socket.
        path: the filesystem path, or ``@name`` for a Linux abstract socket.
        identity: ``(st_dev, st_ino)`` of the file we created, None when there is no file.
        adopted: the socket came from systemd (socket activation) and is not ours to shut.
    """

    sock: socket.socket
    path: str
    identity: tuple[int, int] | None
    adopted: bool = False

    @property
    def is_abstract(self) -> bool:
        """True for a Linux abstract socket (``@name``), which has no file."""
        return self.path.startswith("@")


def adopt_systemd(
    environ: dict[str, str] | None = None, credentials: bool = False
) -> BoundSocket | None:
    """Adopt the datagram socket systemd passed us (socket activation), if any.

    Follows sd_listen_fds(3): ``LISTEN_PID`` must be our pid and ``LISTEN_FDS`` >= 1; the
    socket is fd 3. The variables are removed so that child processes do not see them. An
    adopted socket is never unlinked at exit: systemd owns its file. Like a socket ugram binds,
    it is told to refuse passed descriptors (:func:`refuse_rights`).

    Raises:
        SocketError: the inherited fd is not an AF_UNIX datagram socket, or several were passed.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()) or not env.get("LISTEN_FDS"):
        return None
    count = int(env["LISTEN_FDS"])
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if count != 1:
        raise SocketError(f"systemd passed {count} sockets; ugram serves exactly one")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise SocketError(f"fd {SD_LISTEN_FDS_START} from systemd is not a socket: {exc}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_DGRAM:
        sock.detach()
        raise SocketError(
            "the socket systemd passed is not AF_UNIX/SOCK_DGRAM: set ListenDatagram= "
            "in the .socket unit"
        )
    sock.setblocking(False)
    if credentials:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    refuse_rights(sock)
    name = sock.getsockname()
    path = "@" + name[1:].decode() if isinstance(name, bytes) and name[:1] == b"\0" else str(name)
    return BoundSocket(sock, path, None, adopted=True)


SD_LISTEN_FDS_START = 3


def bind_socket(
    path: str,
    mode: int,
    gid: int = -1,
    mkdir: bool = False,
    credentials: bool = False,
    allow_unsafe: bool = False,
) -> BoundSocket:
    """Bind an AF_UNIX datagram socket at ``path`` with permission bits ``mode`` and group.

    The file is created in a private directory of ours with exactly ``mode`` and ``gid``, then
    linked into place (:func:`ugram.safefs.bind_at`): it never exists at ``path`` with wider
    permissions, and no chmod or chown ever goes through a path another user could swap.

    Raises:
        PathTooLongError: the path exceeds the AF_UNIX limit.
        SocketInUseError: a live server already receives on the path.
        NotASocketError: something that is not a socket (or a symlink) sits at the path.
        UnsafePathError: the directory is one other users may write (see ``allow_unsafe``), or
            a component is an untrusted symlink.
        SocketError: any other failure (missing directory, permissions, unknown group).
    """
    if path.startswith("@"):
        return _bind_abstract(path, credentials)
    path = os.path.abspath(path)
    _check_length(path)
    sock = _new_socket(credentials)
    try:
        identity = bind_path(sock, path, mode, gid, mkdir=mkdir, allow_unsafe=allow_unsafe)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return BoundSocket(sock, path, identity)


def bind_path(
    sock: socket.socket,
    path: str,
    mode: int,
    gid: int = -1,
    *,
    mkdir: bool = False,
    allow_unsafe: bool = False,
    what: str = "socket directory",
) -> tuple[int, int]:
    """Bind ``sock`` (datagram or stream) at the absolute ``path``, safely; return its identity.

    With ``mkdir``, missing directories are created with :func:`mkdir_mode` and group
    ``gid``, so that whoever may send to the socket can reach it.

    Raises:
        SocketInUseError, NotASocketError, UnsafePathError, SocketError: as :func:`bind_socket`.
    """
    parent = safefs.parent_of(
        path,
        create=mkdir,
        mode=mkdir_mode(mode),
        gid=gid,
        allow_unsafe=allow_unsafe,
        what=what,
    )
    with parent as (d, name):
        if d.kind != "private":
            log.warning("%s %s: %s; prefer a private directory", what, d.path, d.reason)
        _clear_stale_at(d, name, path)
        try:
            info = safefs.bind_at(d, name, sock, mode, gid)
        except FileExistsError:
            raise SocketInUseError(
                f"{path} appeared while ugram was binding it (another process is using it)"
            ) from None
        except OSError as exc:
            if isinstance(exc, SocketError):
                raise
            raise SocketError(
                f"cannot bind {path} with group {gid} and mode {mode:04o}: {exc.strerror}"
            ) from None
    return info.st_dev, info.st_ino


def mkdir_mode(mode: int) -> int:
    """The mode of directories ``--mkdir`` creates for a socket of mode ``mode``.

    0750: the owner and the socket's group may reach the socket (the directories get its
    group); 0755 when the socket lets others write to it, so they can reach it too.
    """
    return 0o755 if mode & 0o002 else 0o750


def _new_socket(credentials: bool) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if credentials:
        # Before bind: the kernel attaches credentials only to datagrams queued while the
        # option is on; one sent earlier would read as pid 0, uid/gid 65534.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    refuse_rights(sock)  # before bind too: no sender can queue descriptors in between
    return sock


def refuse_rights(sock: socket.socket) -> bool:
    """Have the kernel refuse file descriptors sent to ``sock`` (SCM_RIGHTS), where it can.

    With SO_PASSRIGHTS off (Linux 6.16 and later) a sender's ``sendmsg`` that passes
    descriptors fails with EPERM, so none ever reaches the receiver, whose close of one
    could block (:mod:`ugram.receiver.rights`). Older kernels, and other systems, lack the
    option: the receiver then closes what it is passed.

    Returns:
        True if the kernel now refuses them; False if it cannot (ENOPROTOOPT).

    Raises:
        OSError: any other error from setsockopt.
    """
    if not sys.platform.startswith("linux"):
        return False  # the number may name another option elsewhere
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return False
        raise
    return True


# What a queued datagram costs the receive buffer beyond its payload (macOS: the sender's
# address and mbuf headers), and the buffer asked for at least, so small datagrams queue deep.
RCVBUF_SLACK = 512
RCVBUF_FLOOR = 1 << 20


def size_receive_buffer(sock: socket.socket, max_datagram: int) -> int:
    """Where the server's SO_RCVBUF holds its whole queue (macOS: 4 KiB by default,
    ``net.local.dgram.recvspace``), raise it so datagrams up to ``max_datagram`` fit, several
    at a time; return what it is now. Elsewhere (Linux) it does not matter and is left alone.

    Raises:
        SocketError: the system grants less than one datagram of ``max_datagram`` needs.
    """
    here = portable.current()
    if not here.rcvbuf_holds_queue:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    need = max_datagram + RCVBUF_SLACK
    want = max(RCVBUF_FLOOR, 4 * need)
    while want >= need:  # above the ceiling (kern.ipc.maxsockbuf) macOS says ENOBUFS
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
            break
        except OSError:
            want //= 2
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < need:
        default, ceiling = here.rcvbuf_sysctls
        raise SocketError(
            f"max_datagram={max_datagram} does not fit the socket's receive buffer: "
            f"{here.refusing} holds a datagram socket's whole queue there and granted "
            f"SO_RCVBUF {got} bytes (at least {need} needed); lower max_datagram, or raise "
            f"{ceiling} (the most it grants; the default is {default})"
        )
    return got


def sender_limit_warning(max_datagram: int) -> str | None:
    """A warning when a sender's default send buffer cannot carry ``max_datagram`` (macOS:
    2048 bytes), or None: such datagrams fail in the sender with EMSGSIZE."""
    here = portable.current()
    limit = here.default_dgram_limit
    if limit is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            limit = here.dgram_limit(probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    if max_datagram <= limit:
        return None
    default, ceiling = here.sndbuf_sysctls
    return (
        f"max_datagram={max_datagram} is more than a sender's default send buffer carries "
        f"on {here.refusing} ({limit} bytes, {default}): a larger datagram fails in its "
        f"sender with EMSGSIZE unless the sender raises SO_SNDBUF (ugram.Client and ugram "
        f"send do, up to {ceiling}) or {default} is raised"
    )


def max_path_bytes() -> int:
    """The longest socket path here, in bytes without its NUL: sun_path is 108 bytes on
    Linux, 104 on macOS and the BSDs (and under the portable profile), the NUL included."""
    return portable.current().sun_path_max


def check_abstract(path: str) -> None:
    """Refuse an abstract ``@name`` where the system has none (macOS, the portable profile).

    Raises:
        SocketError: abstract names do not exist here.
    """
    here = portable.current()
    if not here.has_abstract:
        raise SocketError(f"{path}: {here.unavailable(portable.NO_ABSTRACT)}")


def _bind_abstract(path: str, credentials: bool = False) -> BoundSocket:
    check_abstract(path)
    name = b"\0" + path[1:].encode()
    if len(name) > max_path_bytes() + 1:
        raise PathTooLongError(f"abstract name {path} is longer than {max_path_bytes()} bytes")
    sock = _new_socket(credentials)
    try:
        sock.bind(name)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUseError(f"{path} is already in use by another server") from None
        raise SocketError(f"cannot bind {path}: {exc.strerror}") from None
    sock.setblocking(False)
    return BoundSocket(sock, path, None)


def _check_length(path: str) -> None:
    size = len(os.fsencode(path))
    if size > max_path_bytes():
        raise PathTooLongError(portable.current().path_too_long(path, size))


def probe(path: str) -> str:
    """Tell what sits at ``path``: ``"missing"``, ``"stale"``, ``"live"`` or ``"unknown"``.

    ``"unknown"`` means a socket we may not connect to (permission denied): possibly live.

    Raises:
        NotASocketError: the path exists and is not a socket (symlinks included).
        SocketError: the path cannot be inspected (a parent is not a directory, ...).
    """
    path = os.path.abspath(path)
    try:
        with safefs.parent_of(path, allow_unsafe=True) as (d, name):
            return _probe_at(d, name, path)
    except UnsafePathError as exc:
        if exc.errno == errno.ENOENT:  # a directory of the path is missing
            return "missing"
        raise SocketError(f"cannot use {path}: {exc}") from None
    except SocketError:
        raise
    except OSError as exc:
        raise SocketError(f"cannot use {path}: {exc.strerror}") from None


def _probe_at(d: safefs.Dir, name: str, path: str) -> str:
    state, info = safefs.probe_at(d, name)
    if state == "other" and info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise NotASocketError(f"{path} is a symbolic link; refusing to follow or remove it")
        kind = "directory" if stat.S_ISDIR(info.st_mode) else "regular file"
        if not stat.S_ISDIR(info.st_mode) and not stat.S_ISREG(info.st_mode):
            kind = "special file"
        raise NotASocketError(f"{path} is a {kind}, not a socket; refusing to remove it")
    if state == "stale" and info is not None and info.st_uid not in safefs.trusted_uids():
        raise SocketInUseError(
            f"{path} is a leftover socket of {safefs.owner_name(info.st_uid)}; ugram does not "
            "remove other users' files: remove it or choose another path"
        )
    return state


def _clear_stale_at(d: safefs.Dir, name: str, path: str) -> None:
    state = _probe_at(d, name, path)
    if state == "live":
        raise SocketInUseError(f"{path} is already in use by another server")
    if state == "unknown":
        raise SocketInUseError(
            f"{path} is a socket this user may not connect to; it may belong to a live "
            "server, so it is left alone"
        )
    if state == "stale":
        # Nobody receives on it: a leftover of a server that died. Replacing it is safe.
        safefs.unlink_at(d, name)


def unlink_if_ours(bound: BoundSocket) -> bool:
    """Remove the socket file if the path still holds the inode we created.

    A successor may have re-bound the path after we unlinked ours: its file is left alone.
    The directory is walked safely again, so a swapped parent cannot redirect the unlink.

    Returns:
        True if the file was removed.
    """
    if bound.identity is None:
        return False
    try:
        with safefs.parent_of(bound.path, allow_unsafe=True) as (d, name):
            return safefs.unlink_at(d, name, bound.identity)
    except OSError:
        return False


def abstract_address(path: str) -> str | bytes:
    """The address to bind or connect to for ``path``: a NUL-led name for ``@name``."""
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def bind_stream_socket(
    path: str, mode: int, gid: int = -1, *, allow_unsafe: bool = False
) -> BoundSocket:
    """Bind and listen on an AF_UNIX stream socket at ``path`` (or ``@name``).

    Like the server socket (:func:`bind_path`): created with exactly ``mode`` and ``gid``
    in a private directory and linked into place, a stale socket of ours replaced, anything
    else refused. Clients may not pass descriptors, where the kernel can refuse them
    (:func:`refuse_rights`).

    Raises:
        SocketInUseError: another process listens on the path (or holds an abstract name).
        UnsafePathError: the directory is unsafe, or a component an untrusted symlink.
        SocketError: the path is too long, not a socket, or cannot be bound.
    """
    if not path.startswith("@"):
        _check_length(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Connections inherit it: a client cannot leave descriptors whose close would block.
        refuse_rights(sock)
        identity = None
        if path.startswith("@"):
            _bind_abstract_stream(sock, path)
        else:
            path = os.path.abspath(path)
            identity = bind_path(sock, path, mode, gid, allow_unsafe=allow_unsafe)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        if isinstance(exc, SocketError):
            raise
        raise SocketError(f"cannot bind {path}: {exc.strerror}") from None
    return BoundSocket(sock, path, identity)


def _bind_abstract_stream(sock: socket.socket, path: str) -> None:
    check_abstract(path)
    try:
        sock.bind(abstract_address(path))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUseError(f"{path} is already in use by another process") from None
        raise

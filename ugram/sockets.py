"""The socket file: bind safely, refuse what is not ours, and unlink only our own inode."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
from dataclasses import dataclass

from .errors import NotASocketError, PathTooLongError, SocketError, SocketInUseError

# sun_path is 108 bytes on Linux, 104 on the BSDs and Darwin, including the trailing NUL.
MAX_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103


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
    adopted socket is never unlinked at exit: systemd owns its file.

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
    name = sock.getsockname()
    path = "@" + name[1:].decode() if isinstance(name, bytes) and name[:1] == b"\0" else str(name)
    return BoundSocket(sock, path, None, adopted=True)


SD_LISTEN_FDS_START = 3


def bind_socket(
    path: str, mode: int, gid: int = -1, mkdir: bool = False, credentials: bool = False
) -> BoundSocket:
    """Bind an AF_UNIX datagram socket at ``path`` with permission bits ``mode`` and group.

    The file never exists with wider permissions than ``mode``, not even for a moment: it is
    created with the owner's bits only (umask), then given its group, then its full mode.
    (It is bound at its final path, not under a temporary name linked into place: the kernel
    keeps the bound name as the server's address, the source of every reply.) A sender of
    the group may therefore get EACCES during the microseconds before chmod.

    Raises:
        PathTooLongError: the path exceeds the AF_UNIX limit.
        SocketInUseError: a live server already receives on the path.
        NotASocketError: something that is not a socket (or a symlink) sits at the path.
        SocketError: any other failure (missing directory, permissions, unknown group).
    """
    if path.startswith("@"):
        return _bind_abstract(path, credentials)
    path = os.path.abspath(path)
    _check_length(path)
    if mkdir:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    _clear_stale(path)
    sock = _new_socket(credentials)
    try:
        _bind_restricted(sock, path, mode)
        info = os.lstat(path)
        _apply_perms(path, mode, gid)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return BoundSocket(sock, path, (info.st_dev, info.st_ino))


def _new_socket(credentials: bool) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if credentials:
        # Before bind: the kernel attaches credentials only to datagrams queued while the
        # option is on; one sent earlier would read as pid 0, uid/gid 65534.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


def _bind_abstract(path: str, credentials: bool = False) -> BoundSocket:
    if not sys.platform.startswith("linux"):
        raise SocketError(f"abstract socket names such as {path} exist only on Linux")
    name = b"\0" + path[1:].encode()
    if len(name) > MAX_PATH_BYTES + 1:
        raise PathTooLongError(f"abstract name {path} is longer than {MAX_PATH_BYTES} bytes")
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
    if size > MAX_PATH_BYTES:
        raise PathTooLongError(
            f"socket path {path} is {size} bytes; AF_UNIX allows at most {MAX_PATH_BYTES}: "
            "use a shorter path"
        )


def probe(path: str) -> str:
    """Tell what sits at ``path``: ``"missing"``, ``"stale"``, ``"live"`` or ``"unknown"``.

    ``"unknown"`` means a socket we may not connect to (permission denied): possibly live.

    Raises:
        NotASocketError: the path exists and is not a socket (symlinks included).
        SocketError: the path cannot be inspected (a parent is not a directory, ...).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:  # e.g. a parent that is a regular file (ENOTDIR)
        raise SocketError(f"cannot use {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise NotASocketError(f"{path} is a symbolic link; refusing to follow or remove it")
    if not stat.S_ISSOCK(info.st_mode):
        kind = "directory" if stat.S_ISDIR(info.st_mode) else "regular file"
        if not stat.S_ISDIR(info.st_mode) and not stat.S_ISREG(info.st_mode):
            kind = "special file"
        raise NotASocketError(f"{path} is a {kind}, not a socket; refusing to remove it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        try:
            client.connect(path)
        except ConnectionRefusedError:
            return "stale"
        except PermissionError:
            return "unknown"
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:  # a live stream socket
                return "live"
            raise SocketError(f"cannot probe {path}: {exc.strerror}") from None
    return "live"


def _clear_stale(path: str) -> None:
    state = probe(path)
    if state == "live":
        raise SocketInUseError(f"{path} is already in use by another server")
    if state == "unknown":
        raise SocketInUseError(
            f"{path} is a socket this user may not connect to; it may belong to a live "
            "server, so it is left alone"
        )
    if state == "stale":
        # Nobody receives on it: a leftover of a server that died. Replacing it is safe.
        os.unlink(path)


def _bind_restricted(sock: socket.socket, path: str, mode: int) -> None:
    # Only the owner's bits at creation: group and others get nothing until chown has given
    # the file its final group, so no one outside `mode` can ever reach it.
    old = os.umask(0o777 & ~(mode & 0o700))
    try:
        sock.bind(path)
    except OSError as exc:
        raise _bind_error(path, exc) from None
    finally:
        os.umask(old)


def _bind_error(path: str, exc: OSError) -> SocketError:
    if exc.errno == errno.EADDRINUSE:
        return SocketInUseError(f"{path} is already in use by another server")
    if exc.errno == errno.ENOENT:
        parent = os.path.dirname(path)
        return SocketError(
            f"cannot bind {path}: directory {parent} does not exist (create it, or pass --mkdir)"
        )
    return SocketError(f"cannot bind {path}: {exc.strerror}")


def _apply_perms(path: str, mode: int, gid: int) -> None:
    try:
        if gid != -1:
            os.chown(path, -1, gid)
        os.chmod(path, mode)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise SocketError(
            f"cannot set group {gid} and mode {mode:04o} on {path}: {exc.strerror}"
        ) from None


def unlink_if_ours(bound: BoundSocket) -> bool:
    """Remove the socket file if the path still holds the inode we created.

    A successor may have re-bound the path after we unlinked ours: its file is left alone.

    Returns:
        True if the file was removed.
    """
    if bound.identity is None:
        return False
    try:
        info = os.lstat(bound.path)
    except FileNotFoundError:
        return False
    if (info.st_dev, info.st_ino) != bound.identity:
        return False
    try:
        os.unlink(bound.path)
    except FileNotFoundError:
        return False
    return True

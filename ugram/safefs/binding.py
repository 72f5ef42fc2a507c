"""The server's own socket files: probe what is at a name, bind, unlink only our inode.

Rules 3 and 6 of :mod:`ugram.safefs`: mode and group are set only on the inode ugram
bound and checked, and the live/stale probe never waits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from ..errors import UnsafePathError
from .walk import DIR_FLAGS, LINUX, O_PATH, Dir, check_name, open_path_fd, set_owner_mode


def probe_at(directory: Dir, name: str) -> tuple[str, os.stat_result | None]:
    """Tell what sits at ``name``: ``missing``, ``stale``, ``live``, ``unknown`` or ``other``.

    The socket is reached through a descriptor of the inode that was inspected, so a swap
    between the check and the connect cannot point the probe elsewhere. ``unknown`` is a
    socket we may not connect to; ``other`` is anything that is not a socket (symlinks too).

    Returns:
        The state, and the inode's ``lstat`` (None when missing).
    """
    try:
        info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing", None
    if not stat.S_ISSOCK(info.st_mode):
        return "other", info
    return _connect_state(directory, name), info


def _connect_state(directory: Dir, name: str) -> str:
    try:
        handle = open_path_fd(directory, name)
    except FileNotFoundError:
        return "missing"
    target = f"/proc/self/fd/{handle}" if LINUX else directory.join(name)
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            state = _try_connect(kind, target)
            if state is not None:
                return state
        return "live"  # neither type (SOCK_SEQPACKET): someone is bound there
    finally:
        os.close(handle)


def _try_connect(kind: socket.SocketKind, target: str) -> str | None:
    """What a non-blocking ``connect`` of a ``kind`` socket to ``target`` tells.

    Non-blocking, because a stream socket whose listener never accepts has a full backlog
    and a blocking connect would wait for it forever (a squatter could hang start-up and
    ``ugram doctor``). Datagram connects never wait: they only name the peer.

    Returns:
        ``live`` (connected, or a backlog that is full: someone listens), ``stale``
        (refused: nobody is bound), ``unknown`` (not ours to connect to), or None (a socket
        of the other type).
    """
    with socket.socket(socket.AF_UNIX, kind) as client:
        client.setblocking(False)
        try:
            client.connect(target)
        except BlockingIOError:  # EAGAIN (a full backlog) or EINPROGRESS
            return "live"
        except ConnectionRefusedError:
            return "stale"
        except PermissionError:
            return "unknown"
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                return None
            raise
    return "live"


def bind_at(directory: Dir, name: str, sock: socket.socket, mode: int, gid: int) -> os.stat_result:
    """Bind ``sock`` as ``name`` in ``directory`` with exactly ``mode`` and group ``gid``.

    ``bind`` never follows or replaces anything (EADDRINUSE). In a private or sticky shared
    directory nobody else can rename our entry, so the socket is bound at its real path (the
    kernel keeps that name as the server's address: the source of every reply), created
    owner-only, then given its group and mode through an ``O_PATH`` descriptor of the inode
    just checked (a socket of ours with one link). In an unsafe directory (accepted with
    ``allow_unsafe``) another user could swap the entry between bind and chmod, so the file
    is created inside a fresh private (0700) directory, given its group and mode there, and
    hard-linked to ``name`` (``link`` fails if anything took ``name`` meanwhile); the
    socket's own address is then that private name.

    The caller removes a stale socket first (:func:`probe_at`, :func:`unlink_at`).

    Returns:
        The socket file's ``lstat`` (its identity for :func:`unlink_at`).

    Raises:
        FileExistsError: something took ``name`` first.
        UnsafePathError: the bound inode is not the one we created.
        OSError: the bind, chown, chmod or link failed.
    """
    check_name(name)
    if directory.kind == "unsafe" or not O_PATH:
        return _bind_linked(directory, name, sock, mode, gid)
    # At most the owner's bits of ``mode`` until its group and mode are set below, so the
    # file is never wider than asked, not even for a moment.
    old = os.umask(0o777 & ~(mode & 0o700))
    try:
        sock.bind(directory.join(name))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise FileExistsError(exc.errno, exc.strerror, directory.join(name)) from None
        raise
    finally:
        os.umask(old)
    handle = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
    try:
        info = os.fstat(handle)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            raise UnsafePathError(f"{directory.join(name)} changed while ugram bound it")
        try:
            set_owner_mode(f"/proc/self/fd/{handle}", mode, gid)
        except BaseException:
            unlink_at(directory, name, (info.st_dev, info.st_ino))
            raise
        return os.fstat(handle)
    finally:
        os.close(handle)


def _bind_linked(
    directory: Dir, name: str, sock: socket.socket, mode: int, gid: int
) -> os.stat_result:
    private = _private_dir(directory, name)
    temp = "s"
    try:
        old = os.umask(0o777 & ~(mode & 0o700))  # as in bind_at
        try:
            sock.bind(private.at(temp))
        finally:
            os.umask(old)
        if gid != -1:
            os.chown(temp, -1, gid, dir_fd=private.fd, follow_symlinks=False)
        os.chmod(temp, mode & 0o7777, dir_fd=private.fd)
        info = os.stat(temp, dir_fd=private.fd, follow_symlinks=False)
        os.link(temp, name, src_dir_fd=private.fd, dst_dir_fd=directory.fd, follow_symlinks=False)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=private.fd)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.basename(private.path), dir_fd=directory.fd)
        private.close()
    return info


def _private_dir(directory: Dir, name: str) -> Dir:
    for _ in range(16):
        sub = f".{name[:40]}.{os.urandom(4).hex()}"
        try:
            os.mkdir(sub, 0o700, dir_fd=directory.fd)
        except FileExistsError:
            continue
        fd = os.open(sub, DIR_FLAGS, dir_fd=directory.fd)
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            os.close(fd)
            raise UnsafePathError(f"{directory.join(sub)} was changed by another user")
        return Dir(fd, directory.join(sub), "private", "")
    raise UnsafePathError(f"cannot create a private directory in {directory.path}")


def unlink_at(directory: Dir, name: str, identity: tuple[int, int] | None = None) -> bool:
    """Remove ``name`` from ``directory`` if it is still the inode ``identity`` (any if None).

    Returns:
        True if it was removed.
    """
    try:
        info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if identity is not None and (info.st_dev, info.st_ino) != identity:
        return False
    try:
        os.unlink(name, dir_fd=directory.fd)
    except FileNotFoundError:
        return False
    return True

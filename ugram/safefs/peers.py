"""Sockets of others that ugram sends to: a reply's sender, a client's server.

Each is reached through an ``O_PATH`` descriptor of the inode that was checked, so no later
swap of the path redirects what is sent (rules 9 and 10 of ``docs/security.md``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from ..errors import UnsafePathError
from ..escaping import printable
from .walk import (
    MAX_SYMLINKS,
    O_PATH,
    Dir,
    check_name,
    open_dir,
    open_path_fd,
    owner_name,
    trusted_uids,
)


def open_peer_socket(path: str, uid: int) -> int:
    """Open the socket file a reply goes to, proving that user ``uid`` owns it.

    The path must be absolute, no component may be a symlink, and the file must be a socket
    owned by ``uid``. The returned ``O_PATH`` descriptor names that very inode: send to
    ``/proc/self/fd/N`` so no later swap of the path can redirect the reply. Linux only.

    Raises:
        UnsafePathError: the path is relative, crosses a symlink, is not a socket, or is
            owned by another user (or the platform has no ``O_PATH``).
    """
    if not O_PATH:
        raise UnsafePathError("replies to socket paths need O_PATH (Linux)")
    parts = _plain_parts(path)
    fd = os.open("/", _DIR_WALK)
    try:
        for part in parts[:-1]:
            nfd = _open_component(path, part, fd)
            os.close(fd)
            fd = nfd
        target, info = _final(path, parts[-1], fd)
    finally:
        os.close(fd)
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != uid:
        os.close(target)
        what = "not a socket" if not stat.S_ISSOCK(info.st_mode) else "owned by another user"
        raise UnsafePathError(f"{printable(path)} is {what}: the sender does not own it")
    return target


def open_owned_socket(path: str) -> tuple[int, int]:
    """Open the socket file a reply goes to where the kernel gives no sender credentials
    (macOS, the portable profile), proving from the file system alone that one user, and
    so the sender, owns it.

    The path must be absolute and cross no symlink; the file must be a socket with one link
    (no hard link of another's socket planted in a directory its sender can write); its
    directory must be owned by the socket's owner and writable by nobody else; and every
    directory above must be root's or that owner's and, where others may write it, sticky.
    Then nobody but that user (and root) can have bound it, or can swap it: the sender,
    which bound the path, is that user.

    Returns:
        An ``O_PATH`` descriptor of the socket (send to ``/proc/self/fd/N``), or -1 where
        the platform has no ``O_PATH`` (send to the path: a swap by its owner between the
        check and the send is then possible); and the owner's uid.

    Raises:
        UnsafePathError: one of those does not hold.
    """
    parts = _plain_parts(path)
    chain: list[os.stat_result] = []
    fd = os.open("/", _DIR_WALK)
    try:
        for part in parts[:-1]:
            chain.append(os.fstat(fd))
            nfd = _open_component(path, part, fd)
            os.close(fd)
            fd = nfd
        chain.append(os.fstat(fd))
        target, info = _final(path, parts[-1], fd)
    finally:
        os.close(fd)
    try:
        _check_owned(path, info, chain)
    except UnsafePathError:
        if target >= 0:
            os.close(target)
        raise
    return target, info.st_uid


_DIR_WALK = (O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _plain_parts(path: str) -> list[str]:
    if not path.startswith("/"):
        raise UnsafePathError(f"{printable(path)} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafePathError(f"{printable(path)} is not a plain absolute path")
    return parts


def _open_component(path: str, part: str, fd: int) -> int:
    try:
        return os.open(part, _DIR_WALK, dir_fd=fd)
    except OSError as exc:
        raise UnsafePathError(
            f"{printable(path)}: {printable(part)} is not a plain directory ({exc.strerror})"
        ) from None


def _final(path: str, name: str, fd: int) -> tuple[int, os.stat_result]:
    """The last component: an ``O_PATH`` descriptor and its status, or -1 and its lstat."""
    try:
        if not O_PATH:
            return -1, os.stat(name, dir_fd=fd, follow_symlinks=False)
        target = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        raise UnsafePathError(f"{printable(path)}: {exc.strerror}") from None
    return target, os.fstat(target)


def _check_owned(path: str, info: os.stat_result, chain: list[os.stat_result]) -> None:
    """Raise unless the socket ``info`` and its directories ``chain`` are one user's."""
    owner = info.st_uid
    shared = stat.S_IWGRP | stat.S_IWOTH
    if not stat.S_ISSOCK(info.st_mode):
        why = "is not a socket"
    elif info.st_nlink != 1:
        why = f"has {info.st_nlink} links: it may be another user's socket linked there"
    elif chain[-1].st_uid != owner or chain[-1].st_mode & shared:
        why = "is in a directory that another user owns or may write"
    elif any(
        d.st_uid not in (0, owner) or (d.st_mode & shared and not d.st_mode & stat.S_ISVTX)
        for d in chain[:-1]
    ):
        why = "is below a directory that another user owns or may change"
    else:
        return
    raise UnsafePathError(
        f"{printable(path)} {why}: without the sender's credentials (none on this platform) "
        "only a socket in a directory of its owner's own proves who the sender is; bind the "
        "sender there (ugram.Client.request does)"
    )


@contextlib.contextmanager
def socket_target(path: str) -> Iterator[str]:
    """Yield an address that reaches the socket file at ``path`` for ``connect``/``sendto``.

    The path is walked by the rules of :func:`open_dir` (any directory class is accepted:
    a client creates nothing), and a symlink, whether a directory or the last component, is
    followed only if it is owned by root or us in a directory other users may not change.
    On Linux the address is ``/proc/self/fd/N`` of an ``O_PATH`` descriptor of the inode
    found, closed on exit, so no later swap of the path redirects the connect; elsewhere it
    is the resolved path (the walk's race accepted).

    Raises:
        FileNotFoundError: the file is missing.
        UnsafePathError: a component is an untrusted symlink or not a directory (its
            ``errno`` is ``ENOENT`` when a directory is missing).
    """
    full = os.path.abspath(path)
    for _ in range(MAX_SYMLINKS):
        head, name = os.path.split(full)
        with open_dir(head or "/", allow_unsafe=True, what="socket directory") as directory:
            check_name(name)
            info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                full = os.path.join(head, _trusted_link(directory, name, info))
                continue
            if not O_PATH:
                yield directory.join(name)
                return
            handle = open_path_fd(directory, name)
        try:
            if not stat.S_ISLNK(os.fstat(handle).st_mode):  # swapped since the stat: retry
                yield f"/proc/self/fd/{handle}"
                return
        finally:
            os.close(handle)
    raise UnsafePathError(f"too many symbolic links in {path}")


def _trusted_link(directory: Dir, name: str, info: os.stat_result) -> str:
    """The target of the symlink ``name`` in ``directory`` if rule 1 lets us follow it.

    Raises:
        UnsafePathError: it is owned by another user, or sits in an unsafe directory.
    """
    if info.st_uid not in trusted_uids() or directory.kind == "unsafe":
        raise UnsafePathError(
            f"{directory.join(name)} is a symbolic link owned by {owner_name(info.st_uid)} in "
            "a directory other users may change; refusing to follow it"
        )
    return os.readlink(name, dir_fd=directory.fd)

"""Regular files in a walked directory: checked before use, created with their mode.

Rule 4 of :mod:`ugram.safefs` (an existing file must be a regular file of ours, with one
link, writable by nobody else, checked on its descriptor) and rule 5 (explicit modes).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

from ..errors import UnsafePathError
from .walk import Dir, check_name, owner_name, trusted_uids


def check_existing(info: os.stat_result, path: str) -> None:
    """Refuse an existing file that ugram should not write into.

    Raises:
        UnsafePathError: not a regular file, owned by another non-root user, hard-linked
            elsewhere, or writable by group or others.
    """
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(
            f"{path} is {_kind_of(info)}, not a regular file; refusing to use it (another "
            "user may have planted it): remove it or choose another path"
        )
    if info.st_uid not in trusted_uids():
        raise UnsafePathError(
            f"{path} is owned by {owner_name(info.st_uid)}, not by the server's user; "
            "remove it or choose another path"
        )
    if info.st_nlink != 1:
        raise UnsafePathError(
            f"{path} has {info.st_nlink} hard links (another file's contents could be "
            "reached through it); remove it or choose another path"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run chmod go-w {path} or remove it"
        )


def _kind_of(info: os.stat_result) -> str:
    """What a non-regular file is, for messages ("a FIFO (named pipe)", ...)."""
    mode = info.st_mode
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((text for test, text in kinds if test(mode)), "a special file")


def open_file(directory: Dir, name: str, flags: int, mode: int) -> int:
    """Open (creating with exactly ``mode`` if missing) the file ``name`` in ``directory``.

    ``flags`` are the access flags (``os.O_WRONLY | os.O_APPEND``, ...); ``O_CREAT``,
    ``O_NOFOLLOW``, ``O_NOCTTY`` and ``O_CLOEXEC`` are added. An existing file must pass
    :func:`check_existing`; it is opened non-blocking and checked before it is used, so a
    FIFO planted at ``name`` is refused instead of blocking the caller forever.

    Raises:
        UnsafePathError: the existing file fails the checks (a FIFO, a device, another
            user's file, ...), or ``name`` is a symlink.
        OSError: the file cannot be opened or created.
    """
    check_name(name)
    base = flags | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode & 0o777, dir_fd=directory.fd)
    except FileExistsError:
        pass
    else:
        os.fchmod(fd, mode & 0o7777)
        return fd
    return _open_existing(directory, name, base)


def _open_existing(directory: Dir, name: str, flags: int) -> int:
    """Open an existing ``name`` (``flags`` include ``O_NOFOLLOW``) that passes the checks.

    The open is non-blocking (a FIFO without a reader, or a device, would block it) and
    ``O_NONBLOCK`` is cleared again only once the descriptor proved to be a regular file.

    Raises:
        UnsafePathError: ``name`` is a symbolic link or fails :func:`check_existing`.
        OSError: it cannot be opened (``FileNotFoundError`` when it is gone).
    """
    try:
        fd = os.open(name, flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=directory.fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise UnsafePathError(
                f"{directory.join(name)} is a symbolic link; refusing to follow it"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads, or a device with no unit
            _refuse_special(directory, name)
        raise
    try:
        check_existing(os.fstat(fd), directory.join(name))
        if not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refuse_special(directory: Dir, name: str) -> None:
    """Raise :func:`check_existing`'s refusal for ``name`` if it is not a regular file.

    Raises:
        UnsafePathError: ``name`` is a FIFO, a device, a socket, ...
    """
    info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    if not stat.S_ISREG(info.st_mode):
        check_existing(info, directory.join(name))


def write_replace(directory: Dir, name: str, data: bytes, mode: int, fsync: bool = True) -> None:
    """Replace ``name`` in ``directory`` with ``data`` atomically (a fresh temp file, renamed).

    The temp file has a random name and is created ``O_EXCL``, so nothing planted is written
    through; the rename replaces the directory entry, never a file a symlink points to.

    Raises:
        UnsafePathError: an existing ``name`` is not ours (see :func:`check_existing`).
        OSError: the write or the rename failed (the temp file is removed).
    """
    check_name(name)
    _check_target(directory, name)
    temp = f".{name}.{os.urandom(6).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, mode & 0o777, dir_fd=directory.fd)
    try:
        os.fchmod(fd, mode & 0o7777)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temp, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory.fd)
        raise


def read_file(directory: Dir, name: str) -> bytes:
    """Read the file ``name`` in ``directory``; it must pass :func:`check_existing`.

    The file is opened as :func:`open_file` opens an existing one (``O_NOFOLLOW``, non-blocking:
    a FIFO planted there cannot block the reader) and checked on the descriptor, so what is
    read is the inode that was checked.

    Raises:
        FileNotFoundError: there is no ``name``.
        UnsafePathError: ``name`` is a symbolic link or fails :func:`check_existing`.
        OSError: the file cannot be read.
    """
    check_name(name)
    fd = _open_existing(directory, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_target(directory: Dir, name: str) -> None:
    try:
        info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(f"{directory.join(name)} is a symbolic link; refusing to replace it")
    check_existing(info, directory.join(name))


def rename_in(directory: Dir, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` inside ``directory`` (rotation); ``new`` must be ours if it exists.

    Raises:
        UnsafePathError: an existing ``new`` is not ours.
        OSError: the rename failed.
    """
    check_name(old)
    check_name(new)
    _check_target(directory, new)
    os.rename(old, new, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)

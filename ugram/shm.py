"""Nameless shared memory: the files the rings, the counters and the scratch area live in.

The supervisor creates each before any child starts and passes it by descriptor, so no
name exists for a resource tracker to unlink or for another process to open. A memfd
(Linux) never has a name. Without one (macOS, the portable profile) the file is made in a
fresh directory of our own, mode 0700, with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600,
and unlinked (the directory too) before this function returns, so before any other process
could have opened it by name: only root and our own user, who can read our memory anyway,
could even have seen it.
"""

from __future__ import annotations

import os
import stat

from . import portable
from .errors import UnsafePathError

_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_shared_fd(size: int) -> int:
    """Create a nameless shared-memory file of ``size`` bytes and return its fd.

    Raises:
        UnsafePathError: the private directory is not what this process made.
        OSError: the file could not be created or sized (no room).
    """
    fd = os.memfd_create("ugram", 0) if portable.current().has_memfd else _unlinked_file()
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def backing_directory() -> str:
    """Where rings live without memfd: ``/dev/shm`` (memory, like a memfd) where it is a
    directory, else the temporary directory (``$TMPDIR``: per user on macOS)."""
    if os.path.isdir("/dev/shm"):
        return "/dev/shm"
    import tempfile  # here: only this fallback needs it (~0.3 MiB in every process)

    return tempfile.gettempdir()


def _unlinked_file() -> int:
    """A file of our own, opened and then unlinked with its private directory."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="ugram-", dir=backing_directory())  # mode 0700
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_private(directory, os.fstat(dir_fd))
            fd = os.open("shared", _FILE_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                os.unlink("shared", dir_fd=dir_fd)
            except BaseException:
                os.close(fd)
                raise
        finally:
            os.close(dir_fd)
    finally:
        os.rmdir(directory)
    return fd


def _check_private(directory: str, info: os.stat_result) -> None:
    # mkdtemp made it 0700 with mkdir's O_EXCL semantics; what we opened must be that very
    # directory (no symlink followed: O_NOFOLLOW), ours and closed to everyone else.
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise UnsafePathError(
            f"{directory}: the private directory for shared memory is not ours alone "
            f"(uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o})"
        )

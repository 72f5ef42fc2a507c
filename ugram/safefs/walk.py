"""Walking to a directory without following untrusted symlinks, and what it is.

:func:`open_dir` opens a path one component at a time from ``/`` (rule 1 of
:mod:`ugram.safefs`), classifies each directory (:func:`classify`, rule 2) and may create
the missing ones with an explicit group and mode, on their descriptors (rule 5). The
helpers the other modules of the package share (a plain file name, an ``O_PATH``
descriptor, owner and mode through ``/proc/self/fd``) live here too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ..errors import UnsafePathError

DirKind = Literal["private", "shared", "unsafe"]

O_PATH = getattr(os, "O_PATH", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
MAX_SYMLINKS = 40
LINUX = sys.platform.startswith("linux")


def trusted_uids() -> frozenset[int]:
    """The owners whose files and directories ugram trusts: root and the effective user."""
    return frozenset((0, os.geteuid()))


def owner_name(uid: int) -> str:
    """``uid`` as ``name (uid N)`` where the name is known."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def classify(info: os.stat_result, trusted: frozenset[int] | None = None) -> tuple[DirKind, str]:
    """Tell whether a directory is private, shared (sticky) or unsafe, and why.

    Args:
        info: the directory's status.
        trusted: the owners that may make it private (default :func:`trusted_uids`).

    Returns:
        The kind, and a reason a log line can print ("" for private).
    """
    if info.st_uid not in (trusted or trusted_uids()):
        return "unsafe", f"owned by another user, {owner_name(info.st_uid)}"
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not writable:
        return "private", ""
    who = "everyone" if info.st_mode & stat.S_IWOTH else "its group"
    if info.st_mode & stat.S_ISVTX:
        return "shared", f"writable by {who} (sticky)"
    return "unsafe", f"writable by {who} without the sticky bit"


@dataclass
class Dir:
    """An open directory ugram walked to safely; names are resolved relative to ``fd``.

    Attributes:
        fd: the directory's descriptor (``O_DIRECTORY``, close-on-exec).
        path: the path it was opened by, for messages.
        kind: ``private``, ``shared`` or ``unsafe`` (the worst of it and its ancestors).
        reason: why it is not private ("" when it is).
    """

    fd: int
    path: str
    kind: DirKind
    reason: str

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def at(self, name: str = "") -> str:
        """A path that reaches ``name`` in this directory without re-walking its path.

        On Linux it goes through ``/proc/self/fd`` (short enough for ``sun_path`` too);
        elsewhere it is the directory's path (callers there accept the walk's race).
        """
        base = f"/proc/self/fd/{self.fd}" if LINUX else self.path
        return f"{base}/{name}" if name else base

    def join(self, name: str) -> str:
        """``path/name``, for messages."""
        return os.path.join(self.path, name)


UNSAFE_ADVICE = (
    "use a directory only the server's user can write (for example a systemd "
    "RuntimeDirectory=), or accept the risk with --allow-unsafe-dir"
)


@dataclass(frozen=True)
class _Making:
    """How a walk creates missing directories (None: it does not)."""

    mode: int
    gid: int
    allow_unsafe: bool
    advice: str  # what the refusal of an unsafe directory tells the operator to do


def open_dir(
    path: str,
    *,
    create: bool = False,
    mode: int = 0o750,
    gid: int = -1,
    allow_unsafe: bool = False,
    what: str = "directory",
    advice: str = UNSAFE_ADVICE,
    trusted: frozenset[int] | None = None,
) -> Dir:
    """Walk to the directory ``path`` without following untrusted symlinks, and open it.

    Args:
        path: the directory (relative paths are taken from the working directory).
        create: create missing components (each with ``mode`` and group ``gid``, owned by
            us). Below an unsafe directory they are created only with ``allow_unsafe``:
            otherwise the walk refuses before creating anything.
        mode: the permission bits of directories created here.
        gid: the group of directories created here (-1: the process's).
        allow_unsafe: accept a directory other users may write (the operator's choice).
        what: what the directory is for, in messages ("socket directory", ...).
        advice: what the refusal of an unsafe directory tells the operator to do.
        trusted: the owners whose directories and symlinks count as private (default
            :func:`trusted_uids`; ``ugram stats`` adds the owner of the file it checks).

    Raises:
        UnsafePathError: a component is an untrusted symlink, is not a directory, is missing
            (without ``create``; its ``errno`` is then ``ENOENT``), was created by someone
            else while we created it, or the directory is unsafe and ``allow_unsafe`` is
            off. Its ``errno`` is the system call's where one failed.
    """
    full = os.path.abspath(path)
    making = _Making(mode, gid, allow_unsafe, advice) if create else None
    try:
        fd, kind, reason = _walk(full, making, what, trusted or trusted_uids())
    except UnsafePathError:
        raise
    except OSError as exc:
        raise _path_error(f"cannot open {what} {full}: {exc.strerror or exc}", exc.errno) from None
    if kind == "unsafe" and not allow_unsafe:
        os.close(fd)
        raise UnsafePathError(_refusal(f"{what} {full}", reason, advice))
    return Dir(fd, full, kind, reason)


def _refusal(what: str, reason: str, advice: str) -> str:
    """The refusal of an unsafe directory: ``what`` is its role and path."""
    consequence = "so another user could replace what ugram creates there"
    return f"refusing {what}: {reason}, {consequence}; {advice}"


def _path_error(message: str, code: int | None) -> UnsafePathError:
    """An :class:`UnsafePathError` whose ``errno`` says what failed (ENOENT: missing)."""
    error = UnsafePathError(message)
    error.errno = code  # callers tell a missing path from a refused one by it
    return error


def _walk(
    full: str, making: _Making | None, what: str, trusted: frozenset[int]
) -> tuple[int, DirKind, str]:
    parts = deque(p for p in full.split("/") if p)
    fd = os.open("/", DIR_FLAGS)
    kind, reason = classify(os.fstat(fd), trusted)
    where, hops = "/", 0
    try:
        while parts:
            name = parts.popleft()
            if name == ".":
                continue
            nfd = _step(fd, name, where, (kind, reason), making, f"{what} {full}", trusted)
            if isinstance(nfd, str):  # a trusted symlink: walk its target instead
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise UnsafePathError(f"too many symbolic links in {full}")
                parts.extendleft(reversed([p for p in nfd.split("/") if p]))
                if nfd.startswith("/"):
                    os.close(fd)
                    fd, where = os.open("/", DIR_FLAGS), "/"
                continue
            os.close(fd)
            fd, where = nfd, os.path.join(where, name)
            kind, reason = _worse((kind, reason), classify(os.fstat(fd), trusted), where)
    except BaseException:
        os.close(fd)
        raise
    return fd, kind, reason


def _worse(
    parent: tuple[DirKind, str], child: tuple[DirKind, str], where: str
) -> tuple[DirKind, str]:
    # An unsafe ancestor lets its writers swap everything below it; a sticky one does not
    # (others cannot rename our entries), so "shared" is a property of the last one only.
    if parent[0] == "unsafe":
        return parent
    if child[0] != "private":
        return child[0], f"{where} is {child[1]}"
    return child


def _step(
    fd: int,
    name: str,
    where: str,
    state: tuple[DirKind, str],
    making: _Making | None,
    what: str,
    trusted: frozenset[int],
) -> int | str:
    """Open ``name`` in ``fd`` as a directory; a trusted symlink returns its target.

    ``state`` is the kind of ``fd`` (and its ancestors) and why.
    """
    kind = state[0]
    try:
        return _open_dir_at(fd, name)
    except FileNotFoundError:
        if making is None:
            raise _path_error(
                f"{what} does not exist: {os.path.join(where, name)} is missing (create it, "
                "or pass --mkdir)",
                errno.ENOENT,
            ) from None
        if kind == "unsafe" and not making.allow_unsafe:
            # Other users could swap what we create here, and the walk would be refused at
            # its end anyway: refuse before the first mkdir, leaving nothing behind.
            raise UnsafePathError(_refusal(what, state[1], making.advice)) from None
        return _make_dir_at(fd, name, making, where)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    here = os.path.join(where, name)
    if not stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(f"{here}: Not a directory")
    if info.st_uid not in trusted or kind == "unsafe":
        raise UnsafePathError(
            f"{here} is a symbolic link owned by {owner_name(info.st_uid)} in a directory "
            "other users may change; refusing to follow it"
        )
    return os.readlink(name, dir_fd=fd)


def _open_dir_at(fd: int, name: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=fd)
    except PermissionError:
        if not O_PATH:  # a searchable but unreadable directory (0711) as a non-root user
            raise
        return os.open(name, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)


def _make_dir_at(fd: int, name: str, making: _Making, where: str) -> int:
    here = os.path.join(where, name)
    # Owner-only until its group and mode are set below: never wider than asked.
    # Raced with someone: the checks below decide whether what is there is usable.
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, making.mode & 0o700, dir_fd=fd)
    nfd = _open_dir_at(fd, name)
    try:
        info = os.fstat(nfd)
        if info.st_uid != os.geteuid():
            raise UnsafePathError(
                f"{here} was created by {owner_name(info.st_uid)}, not by ugram; remove it or "
                "create the directory yourself"
            )
        # On the descriptor of the directory just checked, never by path: explicit group
        # and mode, whatever the umask (chown first: it may clear set-id bits).
        _fd_set_owner_mode(nfd, making.mode, making.gid)
    except BaseException:
        os.close(nfd)
        raise
    return nfd


def _fd_set_owner_mode(fd: int, mode: int, gid: int) -> None:
    """``fchown``/``fchmod`` ``fd``; an ``O_PATH`` descriptor goes through ``/proc/self/fd``."""
    try:
        if gid != -1:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode & 0o7777)
    except OSError as exc:
        if exc.errno != errno.EBADF or not LINUX:
            raise
        set_owner_mode(f"/proc/self/fd/{fd}", mode, gid)  # the inode of fd, not a path


def set_owner_mode(path: str, mode: int, gid: int) -> None:
    if gid != -1:
        os.chown(path, -1, gid)
    os.chmod(path, mode & 0o7777)


@contextlib.contextmanager
def parent_of(
    path: str,
    *,
    create: bool = False,
    mode: int = 0o750,
    gid: int = -1,
    allow_unsafe: bool = False,
    what: str = "directory",
) -> Iterator[tuple[Dir, str]]:
    """Open the directory of ``path`` safely; yield it and the file name in it.

    Raises:
        UnsafePathError: see :func:`open_dir`.
    """
    full = os.path.abspath(path)
    head, name = os.path.split(full)
    directory = open_dir(
        head or "/", create=create, mode=mode, gid=gid, allow_unsafe=allow_unsafe, what=what
    )
    try:
        yield directory, name
    finally:
        directory.close()


def check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePathError(f"{name!r} is not a plain file name")


def open_path_fd(directory: Dir, name: str) -> int:
    if O_PATH:
        return os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
    return os.dup(directory.fd)  # no O_PATH (Darwin): the caller connects by path

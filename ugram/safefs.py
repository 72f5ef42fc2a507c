"""Every file, directory and socket file ugram creates, opens or changes: the trust rules.

ugram may run as root next to hostile local users, and ``fs.protected_symlinks`` /
``fs.protected_regular`` may be off, so nothing here relies on them. The rules (also in
``docs/security.md``):

1. **No symlink is followed** where another user could have planted it. Paths are walked one
   component at a time from ``/`` with ``O_DIRECTORY | O_NOFOLLOW``; a symlink component is
   followed only if it is owned by root or by us and sits in a directory no other user may
   write (``/var/run -> /run`` is fine, ``/tmp/evil -> /etc`` is not). Files are opened
   ``O_NOFOLLOW | O_CLOEXEC`` relative to the directory fd, never by path again. A client
   connecting to a socket path (:func:`socket_target`) keeps the same rule, for the last
   component too, and connects through a descriptor of the inode it checked.
2. **Directories are classified** (:func:`classify`): *private* (owned by root or us, writable
   by nobody else), *shared* (world- or group-writable with the sticky bit, like ``/tmp``:
   allowed, warned) and *unsafe* (writable by others without the sticky bit, or owned by
   another non-root user, or below such a directory): refused unless the operator passes
   ``allow_unsafe``. Nothing is created below an unsafe directory that will be refused:
   the walk refuses before its first ``mkdir`` there.
3. **Mode and owner are set only on an inode ugram created itself**, through a descriptor or
   inside a private directory of its own, never through a path another user could swap. A
   socket file is bound inside a fresh 0700 directory, given its group and mode there, then
   hard-linked into place (``link`` never replaces what is there) after the live/stale probe.
4. **A file that already exists** is used only if it is a regular file owned by root or us,
   with a single link (a hard link to ``/etc/shadow`` would pass every other test) and not
   writable by group or others; otherwise the caller gets :class:`UnsafePathError` naming the
   path, its owner and what to do. It is opened ``O_NONBLOCK | O_NOCTTY`` and checked on the
   descriptor before it is used, so a FIFO or a device planted at the name can neither block
   the server nor become its terminal.
5. **Explicit modes**: every file and directory gets the mode the caller names (``fchmod``
   after creation), whatever the umask; a directory created for a socket also gets the
   socket's group (``fchown`` on the directory's descriptor).
6. **Probes never wait**: telling a live socket from a stale one is a non-blocking
   ``connect``, so a squatter whose queue is full cannot hang start-up or ``ugram doctor``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import stat
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .errors import UnsafePathError
from .escaping import printable

DirKind = Literal["private", "shared", "unsafe"]

_O_PATH = getattr(os, "O_PATH", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_MAX_SYMLINKS = 40
_LINUX = sys.platform.startswith("linux")


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
        base = f"/proc/self/fd/{self.fd}" if _LINUX else self.path
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
    fd = os.open("/", _DIR_FLAGS)
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
                if hops > _MAX_SYMLINKS:
                    raise UnsafePathError(f"too many symbolic links in {full}")
                parts.extendleft(reversed([p for p in nfd.split("/") if p]))
                if nfd.startswith("/"):
                    os.close(fd)
                    fd, where = os.open("/", _DIR_FLAGS), "/"
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
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except PermissionError:
        if not _O_PATH:  # a searchable but unreadable directory (0711) as a non-root user
            raise
        return os.open(name, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)


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
        if exc.errno != errno.EBADF or not _LINUX:
            raise
        _set_owner_mode(f"/proc/self/fd/{fd}", mode, gid)  # the inode of fd, not a path


def state_dir() -> str:
    """ugram's own data directory: ``/var/lib/ugram`` for root, else the XDG state home."""
    if os.geteuid() == 0:
        return "/var/lib/ugram"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "ugram")


def default_data_path(socket_path: str, suffix: str) -> str:
    """Where a file that belongs to the server on ``socket_path`` goes by default.

    Beside the socket file when its directory is private; otherwise (``/tmp``, an abstract
    name) in :func:`state_dir`, named after the socket, so another user can neither plant
    nor read it.
    """
    if not socket_path.startswith("@"):
        full = os.path.abspath(socket_path)
        try:
            with open_dir(os.path.dirname(full)) as directory:
                if directory.kind == "private":
                    return full + suffix
        except UnsafePathError:
            pass
        name = full.strip("/").replace("/", "_")
    else:
        name = "ugram-" + socket_path[1:].replace("/", "_")
    return os.path.join(state_dir(), name + suffix)


# -- files -------------------------------------------------------------------------------------


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
    _check_name(name)
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
    _check_name(name)
    _check_target(directory, name)
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
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
    _check_name(name)
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
    _check_name(old)
    _check_name(new)
    _check_target(directory, new)
    os.rename(old, new, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise UnsafePathError(f"{name!r} is not a plain file name")


# -- socket files ------------------------------------------------------------------------------


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
        handle = _open_path_fd(directory, name)
    except FileNotFoundError:
        return "missing"
    target = f"/proc/self/fd/{handle}" if _LINUX else directory.join(name)
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


def _open_path_fd(directory: Dir, name: str) -> int:
    if _O_PATH:
        return os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
    return os.dup(directory.fd)  # no O_PATH (Darwin): the caller connects by path


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
    _check_name(name)
    if directory.kind == "unsafe" or not _O_PATH:
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
    handle = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.fd)
    try:
        info = os.fstat(handle)
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
            raise UnsafePathError(f"{directory.join(name)} changed while ugram bound it")
        try:
            _set_owner_mode(f"/proc/self/fd/{handle}", mode, gid)
        except BaseException:
            unlink_at(directory, name, (info.st_dev, info.st_ino))
            raise
        return os.fstat(handle)
    finally:
        os.close(handle)


def _set_owner_mode(path: str, mode: int, gid: int) -> None:
    if gid != -1:
        os.chown(path, -1, gid)
    os.chmod(path, mode & 0o7777)


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
        sub = f".{name[:40]}.{secrets.token_hex(4)}"
        try:
            os.mkdir(sub, 0o700, dir_fd=directory.fd)
        except FileExistsError:
            continue
        fd = os.open(sub, _DIR_FLAGS, dir_fd=directory.fd)
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


# -- reply targets -----------------------------------------------------------------------------


def open_peer_socket(path: str, uid: int) -> int:
    """Open the socket file a reply goes to, proving that user ``uid`` owns it.

    The path must be absolute, no component may be a symlink, and the file must be a socket
    owned by ``uid``. The returned ``O_PATH`` descriptor names that very inode: send to
    ``/proc/self/fd/N`` so no later swap of the path can redirect the reply. Linux only.

    Raises:
        UnsafePathError: the path is relative, crosses a symlink, is not a socket, or is
            owned by another user (or the platform has no ``O_PATH``).
    """
    if not _O_PATH:
        raise UnsafePathError("replies to socket paths need O_PATH (Linux)")
    if not path.startswith("/"):
        raise UnsafePathError(f"{printable(path)} is not an absolute path")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UnsafePathError(f"{printable(path)} is not a plain absolute path")
    flags = _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except OSError as exc:
                raise UnsafePathError(
                    f"{printable(path)}: {printable(part)} is not a plain directory "
                    f"({exc.strerror})"
                ) from None
            os.close(fd)
            fd = nfd
        try:
            target = os.open(parts[-1], flags, dir_fd=fd)
        except OSError as exc:
            raise UnsafePathError(f"{printable(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)
    info = os.fstat(target)
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != uid:
        os.close(target)
        what = "not a socket" if not stat.S_ISSOCK(info.st_mode) else "owned by another user"
        raise UnsafePathError(f"{printable(path)} is {what}: the sender does not own it")
    return target


# -- clients -----------------------------------------------------------------------------------


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
    for _ in range(_MAX_SYMLINKS):
        head, name = os.path.split(full)
        with open_dir(head or "/", allow_unsafe=True, what="socket directory") as directory:
            _check_name(name)
            info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                full = os.path.join(head, _trusted_link(directory, name, info))
                continue
            if not _O_PATH:
                yield directory.join(name)
                return
            handle = _open_path_fd(directory, name)
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

"""``ugram.builtin:LogSink``: JSON lines to a file shared by every worker, rotated by size,
with an fsync policy (use case 1, a local logging daemon)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from .. import safefs
from ..datagram import decode_address
from ..errors import UnsafePathError
from ..escaping import printable
from ..logs import RateLimited
from ..ring import Record
from .options import load_options
from .record import LineEncoder, escaped, line_ends

log = logging.getLogger("ugram.builtin.sink")
_warn = RateLimited(log)

FILE_MODE = 0o640  # the log and its rotated files: the owner writes, its group may read
LOCK_MODE = 0o600


class SinkOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """:class:`LogSink` options (``UGSINK_<NAME>``).

    Attributes:
        path: the JSON lines file (relative to the server's working directory).
        max_bytes: rotate before a write would make the file larger (0: never rotate).
        backups: rotated files kept, ``path.1`` (newest) to ``path.<backups>``.
        fsync: ``always`` (before each batch is acknowledged), ``interval`` (every
            ``fsync_interval`` seconds) or ``never`` (leave it to the kernel).
        fsync_interval: seconds between two fsyncs with ``fsync = "interval"``.
    """

    path: Annotated[str, msgspec.Meta(min_length=1)] = "ugram-sink.jsonl"
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 100 * 1024 * 1024
    backups: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 5
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class RotatingFile:
    """A file appended to by several processes at once and rotated by size.

    Each write is one ``write(2)`` on an ``O_APPEND`` descriptor, so lines from different
    workers never interleave. Rotation happens under an exclusive ``flock`` on ``<path>.lock``;
    every writer checks, under the same lock, that its descriptor is still the file at
    ``path`` and reopens it when another process rotated it away.

    Every name is opened, renamed and created through :mod:`ugram.safefs`, relative to the
    directory's descriptor: a symbolic link or another user's file planted at ``path``,
    ``path.lock`` or ``path.N`` is never followed or written into. The file is created 0640,
    the lock 0600, whatever the umask. A rotation that cannot be done (a backup name taken by
    something that is not ours) is logged and skipped: the lines go on to the current file.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, sync_on_rotate: bool) -> None:
        """Open (create) the file and its lock.

        Raises:
            UnsafePathError: the directory is unsafe (writable by others without the sticky
                bit, owned by another user, reached through another user's symlink), or
                ``path`` or ``path.lock`` is a symlink or a file that is not ours.
            OSError: the directory is missing or the file cannot be opened.
        """
        self.path = os.path.abspath(path)
        head, self.name = os.path.split(self.path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.sync_on_rotate = sync_on_rotate
        self._dir = _open_directory(head or "/")
        try:
            self._lock = safefs.open_file(self._dir, self.name + ".lock", os.O_RDWR, LOCK_MODE)
            try:
                self._fd = self._open()
            except BaseException:
                os.close(self._lock)
                raise
        except BaseException:
            self._dir.close()
            raise

    def _open(self) -> int:
        return safefs.open_file(self._dir, self.name, os.O_WRONLY | os.O_APPEND, FILE_MODE)

    def write(self, lines: list[bytes]) -> None:
        """Append ``lines``, rotating before a line that would make the file pass
        ``max_bytes`` (a line is never split; one longer than ``max_bytes`` gets a file).

        Raises:
            OSError: the file cannot be written (disk full, permissions, ...).
        """
        self.write_lines(b"".join(lines), list(itertools.accumulate(map(len, lines))))

    def write_lines(self, data: bytes | bytearray, ends: Sequence[int] | None = None) -> None:
        """:meth:`write` for lines already joined: ``data``, and ``ends``, the offset just
        past each line (None: each line ends in its only ``\\n``, as JSON lines do; then
        they are found only for a rotation). A batch that fits is one ``write(2)``.

        Raises:
            OSError: the file cannot be written (disk full, permissions, ...).
        """
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            size = self._follow()
            if not self.max_bytes or size + len(data) <= self.max_bytes:
                self._write_all(data)  # no line can pass max_bytes: no rotation
            else:
                self._write_rotating(data, line_ends(data) if ends is None else ends, size)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _write_rotating(self, data: bytes | bytearray, ends: Sequence[int], size: int) -> None:
        """Write ``data`` line by line, rotating before a line that would pass ``max_bytes``."""
        written = start = 0  # the first byte not written yet; the current line's
        rotating = True
        for end in ends:
            if rotating and size and size + end - start > self.max_bytes:
                self._write_all(data[written:start])
                written = start
                if self._rotate():
                    size = 0
                else:  # logged; try again with the next write, not for every line
                    rotating = False
            size += end - start
            start = end
        self._write_all(data[written:start])

    def _write_all(self, data: bytes | bytearray) -> None:
        # No memoryview: one left in a traceback would keep the encoder's reused buffer
        # from growing. A short write (rare on a file) copies the rest.
        while data:
            done = os.write(self._fd, data)
            data = data[done:]

    def _follow(self) -> int:
        """Reopen ``path`` if another writer rotated it; return its size (two system calls
        a batch when it was not rotated: this runs under the lock for every write)."""
        mine = os.fstat(self._fd)
        if self._at_path(mine):
            return mine.st_size
        self._reopen()
        return os.fstat(self._fd).st_size

    def _at_path(self, mine: os.stat_result | None = None) -> bool:
        """True if the entry at ``path`` is the file this writer writes to (``mine``: its
        ``fstat``, when the caller has it)."""
        mine = mine or os.fstat(self._fd)
        try:
            current = os.stat(self.name, dir_fd=self._dir.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)

    def _reopen(self) -> bool:
        """Open ``path`` anew; when that is refused, keep the old descriptor (logged)."""
        try:
            fd = self._open()
        except OSError as exc:
            _warn.warning(
                "LogSink: cannot reopen %s (%s); still writing to the old file", self.path, exc
            )
            return False
        os.close(self._fd)
        self._fd = fd
        return True

    def _rotate(self) -> bool:
        """Shift ``path.N`` up, move ``path`` to ``path.1``, open a new ``path``.

        Returns:
            False when a rename was refused or failed (logged): nothing more is moved and
            the current file goes on.
        """
        if not self._at_path():
            # Still writing to a file rotated away, as ``path`` could not be reopened: the
            # entry at ``path`` is not ours to move.
            _warn.warning("LogSink: %s is not the file being written; not rotating", self.path)
            return False
        if self.sync_on_rotate:
            os.fsync(self._fd)
        try:
            for index in range(self.backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    safefs.rename_in(self._dir, f"{self.name}.{index}", f"{self.name}.{index + 1}")
            if self.backups:
                safefs.rename_in(self._dir, self.name, self.name + ".1")
            else:
                os.unlink(self.name, dir_fd=self._dir.fd)
        except OSError as exc:
            _warn.warning("LogSink: cannot rotate %s (%s); appending to it", self.path, exc)
            return False
        return self._reopen()

    def fsync(self) -> None:
        """Flush what was written to the disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file, the lock file's and the directory's descriptors."""
        os.close(self._fd)
        os.close(self._lock)
        self._dir.close()


def _open_directory(path: str) -> safefs.Dir:
    """The log file's directory, opened safely; one other users may write is refused.

    Raises:
        UnsafePathError: see :class:`RotatingFile`.
    """
    directory = safefs.open_dir(path, allow_unsafe=True, what="log sink directory")
    if directory.kind == "unsafe":
        directory.close()
        raise UnsafePathError(
            f"refusing the log sink directory {path}: {directory.reason}, so another user "
            "could plant or swap the log file there; choose a UGSINK_PATH in a directory only "
            "the server's user can write"
        )
    if directory.kind == "shared":
        # The reason names the directory already ("/tmp is writable by everyone (sticky)").
        log.warning(
            "LogSink: %s: other users may take the names the sink rotates to", directory.reason
        )
    return directory


class LogSink:
    """Append each message as one JSON line to a file (``--codec`` decides what a message is).

    A line holds ``time`` (when received), ``sender``, ``pid``/``uid``/``gid`` when
    credentials are collected, and the message: ``text`` (or ``base64``) and ``size`` for raw
    bytes, ``data`` for anything decoded (a JSON value, a syslog message, a statsd line).
    Every worker appends to the same file; a batch of records is written with one system call
    before it is acknowledged, so a worker crash loses nothing that was acknowledged.

        UGSINK_PATH=/var/log/app.jsonl UGSINK_FSYNC=always \\
            ugram serve ugram.builtin:LogSink --codec syslog --socket /run/app/log.sock
    """

    def __init__(self, **options: Any) -> None:
        """Read the options: keyword arguments > ``UGSINK_*`` variables > file > defaults.

        Raises:
            ConfigError: an invalid or unknown option (see :class:`SinkOptions`).
        """
        self.options = load_options("UGSINK_", SinkOptions, options)
        self.tick_interval = self.options.fsync_interval
        self._file: RotatingFile | None = None
        self._unsynced = False
        self._encoder = LineEncoder()
        self.error_records = 0  # messages written as error records (see handle_batch)

    def setup(self) -> None:
        """Open (create) the file and its lock, ``PATH.lock``.

        Raises:
            UnsafePathError: the directory or a file there is not safe to write (the
                message names it, its owner and what to do); the server stops (exit 3).
        """
        o = self.options
        try:
            self._file = RotatingFile(o.path, o.max_bytes, o.backups, o.fsync != "never")
        except UnsafePathError as exc:
            raise UnsafePathError(f"LogSink (UGSINK_PATH={o.path}): {exc}") from None

    def handle_batch(self, messages, records: list[Record]) -> None:  # type: ignore[no-untyped-def]
        """Write one JSON line per message; ``messages`` is untyped on purpose: it takes
        whatever the codec gives (bytes with raw, JSON values, SyslogMessage, ...), and
        ``records`` the ring's :class:`~ugram.ring.Record` of each (where it came from and
        when: a Datagram a record would cost the worker about as much as its line;
        :func:`ugram.builtin.record.datagram` makes one from a record).

        A message that cannot be encoded as JSON (a msgpack ``Ext``, ...) costs nothing to
        the others: it is written as an error record (its datagram in base64 and an
        ``error``), counted in :attr:`error_records` and logged (rate-limited).
        """
        assert self._file is not None, "setup() was not called"
        encoder = self._encoder
        for record, error in encoder.encode(messages, records):
            self.error_records += 1
            _warn.warning(
                "LogSink: a message from %s was written as an error record: %s",
                escaped(decode_address(record.address)),
                printable(error),
            )
        self._file.write_lines(encoder.buffer)  # JSON lines: no ends needed
        if self.options.fsync == "always":
            self._file.fsync()
        else:
            self._unsynced = True

    def tick(self) -> None:
        """fsync what was written since the last tick (``fsync = "interval"``)."""
        if self._file is not None and self._unsynced and self.options.fsync == "interval":
            self._file.fsync()
            self._unsynced = False

    def teardown(self) -> None:
        """fsync (unless ``fsync = "never"``) and close."""
        if self._file is None:
            return
        if self._unsynced and self.options.fsync != "never":
            self._file.fsync()
        self._file.close()
        self._file = None
        if self.error_records:
            log.warning(
                "LogSink: %d message(s) could not be encoded and were written as error records",
                self.error_records,
            )

"""``ugram.builtin:LogSink``: JSON lines to a file shared by every worker, rotated by size,
with an fsync policy (use case 1, a local logging daemon)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Annotated, Any, Literal

import msgspec

from ..datagram import Datagram
from .options import load_options
from .record import encode, record


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
    """

    def __init__(self, path: str, max_bytes: int, backups: int, sync_on_rotate: bool) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.sync_on_rotate = sync_on_rotate
        self._lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, lines: list[bytes]) -> None:
        """Append ``lines``, rotating before a line that would make the file pass
        ``max_bytes`` (a line is never split; one longer than ``max_bytes`` gets a file).

        Raises:
            OSError: the file cannot be written (disk full, permissions, ...).
        """
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            size = self._follow()
            pending: list[bytes] = []
            for line in lines:
                if self.max_bytes and size and size + len(line) > self.max_bytes:
                    self._write_all(b"".join(pending))
                    pending, size = [], 0
                    self._rotate()
                pending.append(line)
                size += len(line)
            self._write_all(b"".join(pending))
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _follow(self) -> int:
        """Reopen ``path`` if another writer rotated it; return its size."""
        mine = os.fstat(self._fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(self._fd)
            self._fd = self._open()
            mine = os.fstat(self._fd)
        return mine.st_size

    def _rotate(self) -> None:
        if self.sync_on_rotate:
            os.fsync(self._fd)
        for index in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{index}", f"{self.path}.{index + 1}")
        if self.backups:
            os.replace(self.path, self.path + ".1")
        else:
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = self._open()

    def fsync(self) -> None:
        """Flush what was written to the disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file and the lock file's descriptor."""
        os.close(self._fd)
        os.close(self._lock)


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

    def setup(self) -> None:
        """Open (create) the file."""
        o = self.options
        self._file = RotatingFile(o.path, o.max_bytes, o.backups, o.fsync != "never")

    def handle_batch(self, messages, dgrams: list[Datagram]) -> None:  # type: ignore[no-untyped-def]
        """Write one JSON line per message; ``messages`` is untyped on purpose: it takes
        whatever the codec gives (bytes with raw, JSON values, SyslogMessage, ...)."""
        assert self._file is not None, "setup() was not called"
        pairs = zip(messages, dgrams, strict=True)
        self._file.write([encode(record(m, d)) + b"\n" for m, d in pairs])
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

"""The dead-letter file: poison records moved aside as JSON lines, with a size cap."""

from __future__ import annotations

import base64
import fcntl
import os
import time

import msgspec

from .. import safefs
from ..datagram import decode_address
from ..escaping import printable
from ..ring import Record


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the dead-letter file."""

    time: float
    reason: str
    attempts: int
    sender: str | None
    pid: int | None
    uid: int | None
    gid: int | None
    size: int
    data_base64: str


def write_dead_letter(
    path: str, record: Record, reason: str, attempts: int, max_bytes: int
) -> None:
    """Append ``record`` to the dead-letter file, rotating it to ``path.1`` past ``max_bytes``.

    The file therefore never holds much more than ``2 x max_bytes`` on disk.

    Raises:
        OSError: the file cannot be written, or is not safe to write (``UnsafePathError``:
            see :mod:`ugram.safefs`); the caller logs it and the record is still counted.
    """
    creds = record.uid != -1 or record.gid != -1
    sender = decode_address(record.address)
    line = msgspec.json.encode(
        DeadLetter(
            time=time.time(),
            reason=reason,
            attempts=attempts,
            # The sender chose its name: printable, one line whatever reads the file (and a
            # path that is not UTF-8 could not be encoded at all).
            sender=None if sender is None else printable(sender),
            pid=record.pid if creds else None,
            uid=record.uid if creds else None,
            gid=record.gid if creds else None,
            size=len(record.payload),
            data_base64=base64.b64encode(record.payload).decode("ascii"),
        )
    )
    # The file and its directory go through the trust rules: no symlink followed, a file
    # planted by another user (or hard-linked to one of root's) refused, mode 0600. The
    # default directory (ugram's state directory) is created private when missing.
    create = os.path.dirname(path) == safefs.state_dir()
    where = safefs.parent_of(path, create=create, mode=0o700, what="dead-letter directory")
    with where as (directory, name):
        fd = safefs.open_file(directory, name, os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # workers share the file; rotate under the lock
            size = os.fstat(fd).st_size
            if size and size + len(line) + 1 > max_bytes:
                safefs.rename_in(directory, name, name + ".1")
                os.close(fd)
                fd = safefs.open_file(directory, name, os.O_WRONLY | os.O_APPEND, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)

"""A worker's side of its export ring: publishing deltas, and what a replacement skips.

:class:`Publisher` is the ring's producer. It is opened on the first batch (never in
``setup()``: a SIGHUP replacement runs that while the worker it replaces still publishes),
then finds what its predecessor published last (:func:`committed`) and says hello. A delta
is put before ``handle_batch`` returns, so before its records are acknowledged; when the
ring is full (the supervisor behind) the worker waits, as the receiver waits for a worker:
backpressure, never loss.
"""

from __future__ import annotations

import logging
import time

from ... import context
from ...errors import RingCorruptError
from ...ring import NOTES, Ring, unacknowledged
from .wire import FINAL, HELLO, PART, PREFIX, Delta, Hello, encode

log = logging.getLogger("ugram.builtin.statsd")

Position = tuple[int, int]  # (the worker's ring resets, a byte position in it)


class ExportError(Exception):
    """The export ring cannot take a delta (corrupt, or the supervisor is gone)."""


def committed(ring: Ring) -> Position | None:
    """The position of the last batch whose delta a dead producer published whole: from the
    last ``FINAL`` record still in the ring, else from the notes the consumer keeps of the
    last one it applied (written before it acknowledges it, so read after the tail here).
    None when nothing was ever published.

    Raises:
        RingCorruptError: the ring cannot be read.
    """
    for record in reversed(unacknowledged(ring)):
        resets, end, _, kind = PREFIX.unpack_from(record.payload)
        if kind == FINAL:
            return resets, end
    noted = int(ring.ctl[NOTES[0]])
    return (noted - 1, int(ring.ctl[NOTES[1]])) if noted else None


def write_note(ring: Ring, position: Position) -> None:
    """The consumer's side of :func:`committed`: the last ``FINAL`` applied (call before
    acknowledging it)."""
    ring.ctl[NOTES[1]] = position[1]
    ring.ctl[NOTES[0]] = position[0] + 1


class Publisher:
    """The producer of one export ring."""

    def __init__(self, fd: int, hello: Hello) -> None:
        """Open the ring in ``fd`` and read what the previous producer committed.

        Raises:
            RingCorruptError: the ring is not readable.
        """
        self.ring = Ring(fd)
        self.committed = committed(self.ring)
        self._hello = hello
        self.max_part = max(4096, self.ring.capacity // 4 - PREFIX.size - 64)
        self.say_hello()

    def say_hello(self) -> None:
        """Tell the consumer to start this worker's tables afresh."""
        self._put(PREFIX.pack(0, -1, 0, HELLO) + encode(self._hello))

    def publish(self, delta: Delta, position: Position, last_ns: int) -> None:
        """Put one batch's delta (in parts if it is large), up to ``position``.

        Raises:
            ExportError: the ring is corrupt, or the supervisor is gone.
        """
        body = encode(delta)
        resets, end = position
        cut = self.max_part
        for at in range(0, max(1, len(body)), cut):
            kind = FINAL if at + cut >= len(body) else PART
            self._put(PREFIX.pack(resets, end, last_ns, kind) + body[at : at + cut])

    def _put(self, payload: bytes) -> None:
        ring, pause = self.ring, 0.0005
        while not ring.try_put(payload, b"", 0):
            if ring.marked_corrupt:
                raise ExportError("the export ring was found corrupt")
            if context.orphaned():
                raise ExportError("the supervisor is gone")
            context.keep_alive()  # waiting on the supervisor, not stuck on a record
            time.sleep(pause)
            pause = min(0.01, pause * 2)
        if ring.marked_corrupt:
            raise ExportError("the export ring was found corrupt")


def open_publisher(hello: Hello) -> Publisher | None:
    """This worker slot's publisher, or None outside a worker serving ``/metrics``.

    Raises:
        ExportError: the ring is corrupt.
    """
    fd = context.export_fd()
    if fd < 0:
        return None
    try:
        return Publisher(fd, hello)
    except RingCorruptError as exc:
        raise ExportError(f"the export ring is corrupt: {exc}") from None

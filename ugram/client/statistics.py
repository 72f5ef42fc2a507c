"""What a client counts: the mutable :class:`Counters` and their frozen snapshots."""

from __future__ import annotations

import time
from typing import Final

import msgspec


class Drops(msgspec.Struct, frozen=True, kw_only=True):
    """Datagrams a client did not send, by reason.

    Attributes:
        full: ``drop`` policy: the server's queue was full.
        timeout: ``block_with_timeout``: no room in the server's queue within the timeout.
        unavailable: no server listened (``drop`` at once; ``block_with_timeout`` once the
            timeout ran out).
        overflow: ``buffer`` policy: pushed out of the full buffer (oldest or newest).
        closed: ``buffer`` policy: still buffered when ``close()`` stopped waiting.
        error: ``buffer`` policy: the kernel refused it in the background (also in ``errors``).
    """

    full: int = 0
    timeout: int = 0
    unavailable: int = 0
    overflow: int = 0
    closed: int = 0
    error: int = 0

    @property
    def total(self) -> int:
        """Every datagram dropped, whatever the reason."""
        return (
            self.full + self.timeout + self.unavailable + self.overflow + self.closed + self.error
        )


DROP_REASONS: Final = tuple(Drops.__struct_fields__)


class ClientStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What a client has done since it was created.

    ``sent + dropped.total + buffered`` is every datagram handed to ``send``/``send_many``
    (plus the requests sent by ``request``).

    Attributes:
        sent: datagrams the kernel accepted (they are in the server's queue or handled).
        dropped: datagrams not sent, by reason.
        buffered: datagrams in the ``buffer`` policy's buffer right now.
        peak_buffered: the most that were ever buffered at once.
        retries: sends attempted again after a full queue or a missing server.
        errors: unexpected errors from the kernel (raised, or counted under ``dropped.error``).
        outages: times the server was found missing (ENOENT or ECONNREFUSED).
        unavailable_seconds: total time without a server, including an outage going on now.
        replies: replies received by ``request``.
        request_timeouts: requests that got no reply in time.
    """

    sent: int
    dropped: Drops
    buffered: int
    peak_buffered: int
    retries: int
    errors: int
    outages: int
    unavailable_seconds: float
    replies: int
    request_timeouts: int


class Counters:
    """The live counts behind :class:`ClientStatistics`; the client serialises access.

    Plain attributes, incremented in place: the send path pays one attribute update.
    """

    __slots__ = (
        "down_since",
        "down_total",
        "dropped",
        "errors",
        "outages",
        "peak",
        "replies",
        "request_timeouts",
        "retries",
        "sent",
    )

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.peak = 0
        self.retries = 0
        self.errors = 0
        self.outages = 0
        self.down_since: float | None = None
        self.down_total = 0.0
        self.replies = 0
        self.request_timeouts = 0

    def drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` datagrams dropped for ``reason`` (a :class:`Drops` field)."""
        self.dropped[reason] += count

    def server_missing(self, now: float) -> None:
        """No server answered: an outage begins, unless one is going on."""
        if self.down_since is None:
            self.down_since = now
            self.outages += 1

    def server_found(self, now: float) -> None:
        """A server answered: the outage going on, if any, ends."""
        if self.down_since is not None:
            self.down_total += now - self.down_since
            self.down_since = None

    def snapshot(self, buffered: int) -> ClientStatistics:
        """The counts now, with ``buffered`` datagrams waiting in the client's buffer."""
        down = self.down_total
        if self.down_since is not None:
            down += time.monotonic() - self.down_since
        return ClientStatistics(
            sent=self.sent,
            dropped=Drops(**self.dropped),
            buffered=buffered,
            peak_buffered=self.peak,
            retries=self.retries,
            errors=self.errors,
            outages=self.outages,
            unavailable_seconds=down,
            replies=self.replies,
            request_timeouts=self.request_timeouts,
        )

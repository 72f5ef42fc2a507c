"""The sender side: :class:`Client` and :class:`AsyncClient`.

With Unix datagrams, loss happens at the sender. A full receive queue (11 datagrams by
default, shared by every sender) blocks a blocking sender or fails a non-blocking one with
EAGAIN, and most client libraries then drop silently. Here the caller picks what happens, and
every datagram not sent is counted by reason in :meth:`Client.statistics`:

* ``block`` (default): wait for room, and for an absent server, however long it takes.
* ``block_with_timeout``: wait at most ``timeout`` seconds, then drop.
* ``buffer``: keep up to ``buffer_size`` datagrams in memory, sent in order in the background
  as room appears; when the buffer is full, drop the oldest or the newest.
* ``drop``: never wait; drop at once when there is no room or no server.

A restarted server is survived: when the path disappears or is re-bound by a new server
(ENOENT, ECONNREFUSED), the client reconnects with exponential backoff instead of raising
on every call, and accounts the gap (``outages``, ``unavailable_seconds``).

The socket is connected once, so the kernel resolves the path once, and ``poll`` on it tells
when the *server's* queue has room again (an unconnected socket would always look writable).

A path is resolved by :func:`ugram.safefs.socket_target` before each connect: a symlink is
followed only if it is owned by root or the client's user in a directory nobody else may
change, so a link another user planted cannot send a privileged client's datagrams to a
socket of its choosing (:class:`~ugram.errors.UnsafePathError` instead).

The package: :mod:`.core` holds what both clients share (options, encoding, backoff, the
policy's decisions, the buffer, the counts), :mod:`.sync` and :mod:`.aio` only how each
waits; :mod:`.options`, :mod:`.statistics` and :mod:`.endpoint` the types, records and
addresses they use.
"""

from __future__ import annotations

from .aio import AsyncClient as AsyncClient
from .core import CHUNK as CHUNK
from .core import FULL as FULL
from .core import GONE as GONE
from .core import SENT as SENT
from .core import WAIT_SLICE as WAIT_SLICE
from .endpoint import GONE_ERRNOS as GONE_ERRNOS
from .endpoint import MAX_REPLY as MAX_REPLY
from .endpoint import connect_to as connect_to
from .endpoint import server_address as server_address
from .options import DEFAULT_MAX_DATAGRAM as DEFAULT_MAX_DATAGRAM
from .options import ClientCodec as ClientCodec
from .options import Overflow as Overflow
from .options import Payload as Payload
from .options import Policy as Policy
from .options import make_encoder as make_encoder
from .statistics import DROP_REASONS as DROP_REASONS
from .statistics import ClientStatistics as ClientStatistics
from .statistics import Drops as Drops
from .sync import Client as Client

__all__ = [
    "CHUNK",
    "DEFAULT_MAX_DATAGRAM",
    "DROP_REASONS",
    "FULL",
    "GONE",
    "GONE_ERRNOS",
    "MAX_REPLY",
    "SENT",
    "WAIT_SLICE",
    "AsyncClient",
    "Client",
    "ClientCodec",
    "ClientStatistics",
    "Drops",
    "Overflow",
    "Payload",
    "Policy",
    "connect_to",
    "make_encoder",
    "server_address",
]

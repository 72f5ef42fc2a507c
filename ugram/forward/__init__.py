"""Forwarding to NATS JetStream with ugram's guarantee extended to the broker.

A record's ring slot is acknowledged only after JetStream acknowledged what the handler
published for it (:meth:`JetStreamSink.flush` returns then), and each message carries a
``Nats-Msg-Id`` that is the same when a dead worker's batch is replayed
(:attr:`ugram.Datagram.id`), so the stream's duplicate window stores it once: exactly once
from the socket into the stream, within that window. While the stream cannot be reached or
refuses, the sink retries: the ring fills, the receiver stops reading, senders block.

* :class:`JetStreamSink`: for a handler of your own (``publish()`` then ``flush()``).
* ``ugram.builtin:Forward``: forwards every datagram, with options from ``UGFORWARD_*``.

Needs ``nats-py`` (``pip install 'ugram[nats]'``). docs/many-hosts.md says what is and is
not covered.
"""

from __future__ import annotations

from .options import ForwardOptions as ForwardOptions
from .pipeline import Delivery as Delivery
from .sink import JetStreamSink as JetStreamSink
from .subjects import Template as Template

__all__ = ["Delivery", "ForwardOptions", "JetStreamSink", "Template"]

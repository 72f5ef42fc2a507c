"""Event fan-out (use case 3): publishers send events on a topic, every subscriber of that
topic receives them.

    ugram serve examples.fanout:FanOut --codec json --route-by topic --socket /tmp/events.sock

A subscriber sends ``{"topic": "orders", "op": "subscribe"}`` from a socket bound to a path
it owns: it gets ``{"subscribed": "orders"}`` back, then every event published on ``orders``,
byte for byte as the publisher sent it. (Not an abstract ``@name``: the server refuses to
reply to one by default, since whoever binds the name after the subscriber would get it.)
Publishing needs no address: ``{"topic": "orders", "data": ...}`` (``op`` defaults to ``publish``).

``--route-by topic`` sends every datagram of one topic to the same worker, so each worker
holds the subscribers of its own topics and events keep their order per topic. A slow
subscriber (its queue full) misses events instead of blocking the others; a subscriber that
is gone (its socket closed) is forgotten.

    python examples/fanout.py subscribe /tmp/events.sock orders    # prints events
    python examples/fanout.py publish /tmp/events.sock orders '{"id": 1}'
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import weakref
from typing import Literal

import msgspec

import ugram

log = logging.getLogger("examples.fanout")


class Message(msgspec.Struct):
    """What publishers and subscribers send; other fields (the event's data) pass through."""

    topic: str
    op: Literal["publish", "subscribe", "unsubscribe"] = "publish"


def unix_address(sender: str) -> str | bytes:
    """A ``Datagram.sender`` as a ``sendto`` address (``@name`` is an abstract name)."""
    return b"\0" + sender[1:].encode() if sender.startswith("@") else sender


class FanOut:
    """Keeps the subscribers of this worker's topics and forwards each event to them."""

    def setup(self) -> None:
        self.subscribers: dict[str, set[str]] = {}
        self.missed = 0  # events a full subscriber queue did not take
        self.out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.out.setblocking(False)

    def handle(self, msg: Message, dgram: ugram.Datagram) -> None:
        if msg.op == "publish":
            self.publish(msg.topic, dgram.data)
        elif dgram.sender is None:
            log.warning("a %s for %r from an unbound socket: bind one", msg.op, msg.topic)
        elif msg.op == "subscribe":
            self.subscribers.setdefault(msg.topic, set()).add(dgram.sender)
            dgram.reply(msgspec.json.encode({"subscribed": msg.topic}))
        else:
            self.subscribers.get(msg.topic, set()).discard(dgram.sender)
            dgram.reply(msgspec.json.encode({"unsubscribed": msg.topic}))

    def publish(self, topic: str, event: bytes) -> None:
        subscribers = self.subscribers.get(topic, set())
        for address in list(subscribers):
            try:
                self.out.sendto(event, unix_address(address))
            except BlockingIOError:
                self.missed += 1  # never block every other subscriber for a slow one
            except (FileNotFoundError, ConnectionRefusedError):
                subscribers.discard(address)  # gone

    def teardown(self) -> None:
        self.out.close()


def subscribe(path: str, *topics: str, timeout: float = 5.0) -> socket.socket:
    """Bind a socket in a fresh private directory and subscribe it to ``topics``.

    The directory is removed once the socket is garbage-collected (or at exit).

    Returns:
        The socket: ``recv()`` on it returns the events.

    Raises:
        TimeoutError: the server did not confirm a subscription within ``timeout`` seconds.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    home = tempfile.mkdtemp(prefix="fanout-")
    weakref.finalize(sock, shutil.rmtree, home, True)
    sock.bind(os.path.join(home, "events.sock"))
    sock.settimeout(timeout)
    for topic in topics:
        sock.sendto(msgspec.json.encode({"topic": topic, "op": "subscribe"}), path)
        while msgspec.json.decode(sock.recv(65536)) != {"subscribed": topic}:
            pass  # an event of a topic subscribed just before
    sock.settimeout(None)
    return sock


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "subscribe":
        sock = subscribe(argv[1], *argv[2:])
        while True:
            print(sock.recv(65536).decode(errors="replace"), flush=True)
    elif len(argv) == 4 and argv[0] == "publish":
        event = {"topic": argv[2], "data": msgspec.json.decode(argv[3])}
        with ugram.Client(argv[1], codec="json") as client:
            client.send(event)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

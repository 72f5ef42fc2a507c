"""Service registry (use case 4): services register their address in JSON, clients look
services up and get the answer as a reply.

    ugram serve examples.registry:Registry --codec json --route-by name --socket /tmp/reg.sock

Requests (a reply goes to senders that bound an address, e.g. ``ugram.Client.request``):

    {"op": "register", "name": "db", "address": "/run/db.sock", "ttl": 30}
        -> {"name": "db", "addresses": ["/run/db.sock"]}
    {"op": "deregister", "name": "db", "address": "/run/db.sock"}  -> {"name": "db", ...}
    {"op": "lookup", "name": "db"}                                 -> {"name": "db", ...}

A registration lasts ``ttl`` seconds (re-register to stay listed). ``--route-by name`` sends
every request about one name to the same worker, so each worker holds its share of the
services and answers lookups for it. A request that is not valid JSON, or has an unknown
``op``, is counted as ``invalid`` by the server and gets no reply.

    python examples/registry.py register /tmp/reg.sock db /run/db.sock
    python examples/registry.py lookup /tmp/reg.sock db
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Literal

import msgspec

import ugram


class Request(msgspec.Struct, forbid_unknown_fields=True):
    op: Literal["register", "deregister", "lookup"]
    name: Annotated[str, msgspec.Meta(min_length=1)]
    address: str = ""
    ttl: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class Answer(msgspec.Struct):
    name: str
    addresses: list[str]


class Registry:
    """This worker's services: name -> address -> when the registration expires."""

    def setup(self) -> None:
        self.services: dict[str, dict[str, float]] = {}

    def handle(self, req: Request, dgram: ugram.Datagram) -> None:
        entries = self.services.setdefault(req.name, {})
        if req.op == "register" and req.address:
            entries[req.address] = time.monotonic() + req.ttl
        elif req.op == "deregister":
            entries.pop(req.address, None)
        if dgram.sender is not None:  # an unbound sender cannot get an answer
            dgram.reply(msgspec.json.encode(Answer(req.name, self.live(req.name))))

    def live(self, name: str) -> list[str]:
        """The addresses of ``name`` whose registration has not expired."""
        now = time.monotonic()
        entries = self.services.get(name, {})
        for address in [a for a, expires in entries.items() if expires <= now]:
            del entries[address]
        return sorted(entries)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] not in ("register", "deregister", "lookup"):
        sys.exit(__doc__)
    request = {"op": argv[0], "name": argv[2], "address": argv[3] if len(argv) > 3 else ""}
    with ugram.Client(argv[1], codec="json") as client:
        print(client.request(request).decode())


if __name__ == "__main__":
    main(sys.argv[1:])

"""Handlers for the trust-boundary tests."""

from __future__ import annotations

import os

import ugram

OUT = os.environ.get("UGTEST_OUT", "/tmp")


def creds(data: bytes, dgram: ugram.Datagram) -> None:
    """Records ``<payload> <pid> <uid> <gid>`` as the kernel reported them."""
    with open(f"{OUT}/{os.getpid()}.log", "a") as out:
        out.write(f"{data.decode()} {dgram.pid} {dgram.uid} {dgram.gid}\n")

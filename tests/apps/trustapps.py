"""Handlers for the trust-boundary tests."""

from __future__ import annotations

import os

import ugram

OUT = os.environ.get("UGTEST_OUT", "/tmp")


def creds(data: bytes, dgram: ugram.Datagram) -> None:
    """Records ``<payload> <pid> <uid> <gid>`` as the kernel reported them."""
    with open(f"{OUT}/{os.getpid()}.log", "a") as out:
        out.write(f"{data.decode()} {dgram.pid} {dgram.uid} {dgram.gid}\n")


def slow_echo(data: bytes, dgram: ugram.Datagram) -> None:
    """Replies with the payload upper-cased after 0.5 s: time for a sender to swap its path."""
    import time

    time.sleep(0.5)
    try:
        dgram.reply(data.upper())
    finally:
        with open(f"{OUT}/{os.getpid()}.log", "a") as out:
            out.write(f"{data.decode()}\n")

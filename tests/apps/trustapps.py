"""Handlers for the trust-boundary tests."""

from __future__ import annotations

import os

import msgspec

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


def echo_when_told(data: bytes, dgram: ugram.Datagram) -> None:
    """Replies with the payload upper-cased once ``$UGTEST_OUT/go`` exists (20 s at most):
    time for the sender to exit and for another user to bind its name. Records ``holding``
    on receipt, then ``sent`` or ``refused: <why>``."""
    import time

    _note("holding")
    deadline = time.monotonic() + 20
    while not os.path.exists(f"{OUT}/go") and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        dgram.reply(data.upper())
    except ugram.ReplyError as exc:
        _note(f"refused: {exc}".replace("\n", " "))
    else:
        _note("sent")


class Command(msgspec.Struct, forbid_unknown_fields=True):
    """A strict message: any field but ``op`` makes it undecodable."""

    op: str = "echo"


def strict_echo(cmd: Command, dgram: ugram.Datagram) -> None:
    """Replies with ``op``; an ``op`` starting with ``raise`` raises an error quoting it."""
    try:
        if cmd.op.startswith("raise"):
            raise ValueError(f"unknown op {cmd.op}")
        dgram.reply(cmd.op.encode())
    finally:
        _note("handled")


def _note(line: str) -> None:
    with open(f"{OUT}/{os.getpid()}.log", "a") as out:
        out.write(line + "\n")

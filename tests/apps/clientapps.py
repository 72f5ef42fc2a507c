"""Test handlers for the client tests, run by real ugram workers (and by ugram.testing)."""

from __future__ import annotations

import os
import time

import msgspec

import ugram

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class Record:
    """Appends every payload, one line each, to ``$UGTEST_OUT/<pid>.log``."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle(self, data: bytes) -> None:
        os.write(self.fd, data + b"\n")

    def teardown(self) -> None:
        os.close(self.fd)


class SlowRecord(Record):
    """Like Record, but slower than any sender: 1 ms asleep every 16 records."""

    count = 0

    def handle(self, data: bytes) -> None:
        os.write(self.fd, data + b"\n")
        self.count += 1
        if self.count % 16 == 0:
            time.sleep(0.001)


def echo(data: bytes, dgram: ugram.Datagram) -> None:
    """Replies with the payload upper-cased."""
    dgram.reply(data.upper())


def silent(data: bytes) -> None:
    """Never replies."""


class Metric(msgspec.Struct):
    name: str
    value: float


def total(msg: Metric, dgram: ugram.Datagram) -> None:
    """Replies ``<name>=<value * 2>`` to senders that can get replies; raises on negative
    values (a handler error)."""
    if msg.value < 0:
        raise ValueError(f"negative value for {msg.name}")
    if dgram.sender is not None:
        dgram.reply(f"{msg.name}={msg.value * 2:g}".encode())


class Counter:
    """Counts metrics per name and replies with the running count; ``events`` shows the
    lifecycle (setup, teardown)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.events: list[str] = []

    def setup(self) -> None:
        self.events.append("setup")

    def handle(self, msg: Metric, dgram: ugram.Datagram) -> None:
        self.counts[msg.name] = self.counts.get(msg.name, 0) + 1
        dgram.reply(str(self.counts[msg.name]).encode())

    def teardown(self) -> None:
        self.events.append(f"teardown {sum(self.counts.values())}")

"""Test handlers run by real ugram workers. Each record is appended to a per-process file."""

from __future__ import annotations

import os
import time

import msgspec

import ugram

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class Recorder:
    """Appends every payload (one line each) to ``$UGTEST_OUT/<pid>.log``."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle(self, data: bytes) -> None:
        os.write(self.fd, data + b"\n")

    def teardown(self) -> None:
        os.write(self.fd, b"#teardown\n")
        os.close(self.fd)


class Sizes:
    """Records the length and a digest of each payload: ``<len> <hex sha1>``."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle(self, data: bytes) -> None:
        import hashlib

        os.write(self.fd, f"{len(data)} {hashlib.sha1(data).hexdigest()}\n".encode())


def raise_every_tenth(data: bytes) -> None:
    """Raises on payloads whose integer value is a multiple of 10."""
    if int(data) % 10 == 0:
        raise ValueError(f"bad record {data!r}")


def echo(data: bytes, dgram: ugram.Datagram) -> None:
    """Replies with the payload upper-cased."""
    dgram.reply(data.upper())


class Point(msgspec.Struct):
    x: int
    y: int


def points(msg: Point, dgram: ugram.Datagram) -> None:
    """Replies with x + y of a decoded Point."""
    dgram.reply(str(msg.x + msg.y).encode())


def slow(data: bytes) -> None:
    """Takes 1 ms per record."""
    time.sleep(0.001)


class SlowRecorder(Recorder):
    """A :class:`Recorder` that sleeps after each record: 1 ms in the first worker to start,
    0.1 ms in the others, so that under a flood one ring stays full and the others fill and
    empty (the receiver alternates between placing round them and waiting for space)."""

    def setup(self) -> None:
        super().setup()
        try:
            os.close(os.open(f"{OUT}/slowest", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            self.pause = 0.001
        except FileExistsError:
            self.pause = 0.0001

    def handle(self, data: bytes) -> None:
        super().handle(data)
        time.sleep(self.pause)


STALL = 4.0  # seconds: longer than the tests that use it wait for the other records


class StallRecorder(Recorder):
    """A :class:`Recorder` that first sleeps :data:`STALL` seconds on a ``stall`` payload: a
    worker stuck in one long call (a blocked write, a slow query)."""

    def handle(self, data: bytes) -> None:
        if data == b"stall":
            time.sleep(STALL)
        super().handle(data)

"""Batch handlers for the batching tests."""

from __future__ import annotations

import os
import time

import ugram
from ugram.ring import Record

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class Collector:
    """A class batch handler: appends each batch's payloads, one line each."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.batches = 0

    def handle_batch(self, items: list[bytes]) -> None:
        self.batches += 1
        os.write(self.fd, b"".join(item + b"\n" for item in items))

    def teardown(self) -> None:
        with open(f"{OUT}/{os.getpid()}.batches", "w") as out:
            out.write(str(self.batches))
        os.close(self.fd)


@ugram.batch
def sized(items: list[bytes], dgrams: list[ugram.Datagram]) -> None:
    """A function batch handler: records ``<len> <first byte or ->`` per item."""
    with open(f"{OUT}/{os.getpid()}.log", "a") as out:
        for item, dgram in zip(items, dgrams, strict=True):
            assert dgram.data == item
            out.write(f"{len(item)} {item[:1].hex() or '-'}\n")


class PoisonBatch:
    """A batch handler that kills its process when a batch holds ``POISON``."""

    def handle_batch(self, items: list[bytes]) -> None:
        if b"POISON" in items:
            os._exit(7)
        with open(f"{OUT}/{os.getpid()}.log", "ab") as out:
            out.write(b"".join(item + b"\n" for item in items))


class LeakyBatch:
    """A batch handler that keeps 16 KiB per item forever (a memory leak) and appends each
    batch's payloads, one line each, to ``$UGTEST_OUT/<pid>.log``."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.hoard: list[bytes] = []

    def handle_batch(self, items: list[bytes]) -> None:
        self.hoard.extend(b"x" * 16384 + item for item in items)  # touched: resident grows
        os.write(self.fd, b"".join(item + b"\n" for item in items))


class Sizes:
    """A batch handler that writes ``<records> <payload bytes>`` per batch to ``<pid>.sizes``
    and each payload's length and first byte, one line each, to ``<pid>.log``. After its
    first batch it waits for the file ``go`` (up to 30 s): the test fills the ring meanwhile.
    """

    def setup(self) -> None:
        # Line-buffered: the test reads them while the server runs; closed at teardown.
        self.out = open(f"{OUT}/{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115
        self.sizes = open(f"{OUT}/{os.getpid()}.sizes", "a", buffering=1)  # noqa: SIM115
        self.first = True

    def handle_batch(self, items: list[bytes]) -> None:
        self.sizes.write(f"{len(items)} {sum(map(len, items))}\n")
        self.out.writelines(f"{len(item)} {item[:1].decode()}\n" for item in items)
        if self.first:
            self.first = False
            deadline = time.monotonic() + 30.0
            while not os.path.exists(f"{OUT}/go") and time.monotonic() < deadline:
                time.sleep(0.01)

    def teardown(self) -> None:
        self.sizes.close()
        self.out.close()


class PerDatagram:
    """A batch handler taking the ring's records (``--codec lines``): writes, per datagram,
    its lines joined by ``+`` and what its record says of the sender."""

    def setup(self) -> None:
        self.out = open(f"{OUT}/{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115

    def handle_batch(self, packets: list[list[bytes]], records: list[Record]) -> None:
        for lines, record in zip(packets, records, strict=True):
            assert record.recv_ns > 0
            sender = os.fsdecode(record.address)
            self.out.write(f"{b'+'.join(lines).decode()} {sender} {record.pid} {record.uid}\n")

    def teardown(self) -> None:
        self.out.close()


class PerLine(PerDatagram):
    """:class:`PerDatagram` taking the lines flat: each line beside its datagram's record."""

    def handle_batch(self, lines: list[bytes], records: list[Record]) -> None:  # type: ignore[override]
        super().handle_batch([[line] for line in lines], records)

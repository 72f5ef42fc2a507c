"""Handlers that write each record's payload and Datagram.id: ``<payload> <id>`` lines in
``$UGTEST_OUT/<pid>.log``."""

from __future__ import annotations

import os
import time

import ugram

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class BatchIds:
    """A batch handler; a batch of more than one record is held ``UGTEST_DELAY`` seconds
    after it was written, before it is acknowledged (a kill then makes it replayed)."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle_batch(self, messages: list[bytes], dgrams: list[ugram.Datagram]) -> None:
        lines = b"".join(
            m + b" " + str(d.id).encode() + b"\n" for m, d in zip(messages, dgrams, strict=True)
        )
        os.write(self.fd, lines)
        if len(messages) > 1:
            time.sleep(float(os.environ.get("UGTEST_DELAY", "0.05")))


def record_ids(data: bytes, dgram: ugram.Datagram) -> None:
    """One record at a time."""
    with open(f"{OUT}/{os.getpid()}.log", "ab") as out:
        out.write(data + b" " + str(dgram.id).encode() + b"\n")

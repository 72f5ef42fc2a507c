"""Forwarding handlers for tests/nats: the built-in, slowed down where a test kills workers."""

from __future__ import annotations

import os
import time

import ugram
from ugram.builtin.forward import Forward


class SlowForward(Forward):
    """Forward, then wait ``UGTEST_ACK_DELAY`` seconds before the batch is acknowledged in
    the ring: a worker killed then has its batch in the stream but not acknowledged, and
    its replacement publishes it again (the stream must store it once). Batches of one
    record (a replacement going carefully through what its predecessor held) do not wait."""

    def handle_batch(self, messages, dgrams: list[ugram.Datagram]) -> None:  # type: ignore[no-untyped-def]
        super().handle_batch(messages, dgrams)
        if len(dgrams) > 1:
            time.sleep(float(os.environ.get("UGTEST_ACK_DELAY", "0.2")))

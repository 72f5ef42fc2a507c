"""StatsdAggregator whose first worker process SIGKILLs itself at one exact point of its
``$UGTEST_KILL_AFTER``-th batch (``$UGTEST_KILL_AT``): ``after-publish`` (the batch's delta
is in the export ring, the batch not acknowledged: its replay must be skipped) or
``before-publish`` (nothing published: its replay must count). Only the first worker dies;
the marker file ``$UGTEST_OUT/killed`` says it did.

And :class:`SlowAggregator`, which holds each batch ``$UGTEST_BATCH_DELAY`` seconds before
aggregating it: a worker killed from outside while it works through a flood then almost
surely holds a batch (the compiled parser alone would be done with it before the kill)."""

from __future__ import annotations

import os
import signal
import time

from ugram.builtin import StatsdAggregator
from ugram.codecs.statsd import Line
from ugram.ring import Record

OUT = os.environ.get("UGTEST_OUT", "/tmp")
KILL_AT = os.environ.get("UGTEST_KILL_AT", "after-publish")
KILL_AFTER = int(os.environ.get("UGTEST_KILL_AFTER", "3"))


def _first_to_die() -> bool:
    try:
        os.close(os.open(f"{OUT}/killed", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


class KillingAggregator(StatsdAggregator):
    """Counts its batches and dies at the one named (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.armed = not os.path.exists(f"{OUT}/killed")

    def handle_batch(self, packets: list[list[Line]], records: list[Record]) -> None:
        self.batches += 1
        due = self.armed and self.batches == KILL_AFTER
        if due and KILL_AT == "before-publish" and _first_to_die():
            os.kill(os.getpid(), signal.SIGKILL)
        super().handle_batch(packets, records)
        if due and KILL_AT == "after-publish" and _first_to_die():
            os.kill(os.getpid(), signal.SIGKILL)


class SlowAggregator(StatsdAggregator):
    """Waits ``$UGTEST_BATCH_DELAY`` seconds (default 0.005) with each batch in hand."""

    delay = float(os.environ.get("UGTEST_BATCH_DELAY", "0.005"))

    def handle_batch(self, packets: list[list[Line]], records: list[Record]) -> None:
        time.sleep(self.delay)
        super().handle_batch(packets, records)

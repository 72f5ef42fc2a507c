"""The peer bench's handler that is not in ``bench.handlers``: ``StatsdAggregator`` doing the
bench's bookkeeping (kept apart so that the other bench workers never import the codecs).

``CountingAggregator`` aggregates each line exactly as ``ugram.builtin:StatsdAggregator``
does, and counts it and notes when as ``bench.handlers.Count`` does (the raw handler it is
compared with), reporting both on teardown in the same ``$UGBENCH_OUT`` line format.
"""

from __future__ import annotations

import time
from time import monotonic
from typing import Any

from bench.handlers import mark_ready, report_count
from ugram import Datagram
from ugram.builtin import StatsdAggregator
from ugram.codecs.statsd import Line


class CountingAggregator(StatsdAggregator):
    """``StatsdAggregator`` that reports its count, last-line time and CPU like ``Count``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.count = 0
        self.last = 0.0
        self.cpu0 = 0.0

    def setup(self) -> None:
        super().setup()
        self.cpu0 = time.process_time()
        mark_ready()

    def handle(self, line: Line, dgram: Datagram) -> None:
        super().handle(line, dgram)
        self.count += 1
        self.last = monotonic()

    def teardown(self) -> None:
        super().teardown()  # the last worker to stop merges: its CPU is counted
        report_count(self.count, self.last, time.process_time() - self.cpu0)

"""The peer bench's built-ins, with the bench's bookkeeping (kept apart from
``bench.handlers`` so that the other bench workers never import the built-ins or codecs).

* ``CountingAggregator`` aggregates each line exactly as ``ugram.builtin:StatsdAggregator``
  does (the worker calls its ``handle_batch``), and counts the lines and notes when as
  ``bench.handlers.Count`` does (the raw handler it is compared with), reporting both on
  teardown in the same ``$UGBENCH_OUT`` line format.
* ``ReadySink`` is ``ugram.builtin:LogSink`` that says when it is set up, for the bench's
  ``profile`` scenario (the peer bench runs ``LogSink`` itself and counts its file).

Both mark the worker ready in ``$UGBENCH_READY``, and default their output to that
directory's parent (the run's scratch directory) when ``UGSTATSD_DIR`` / ``UGSINK_PATH``
are not set, so that a bench run never writes into the working directory.
"""

from __future__ import annotations

import os
import time
from time import monotonic
from typing import Any

from bench.handlers import mark_ready, report_count
from bench.work import READY_ENV
from ugram import Datagram
from ugram.builtin import LogSink, StatsdAggregator
from ugram.codecs.statsd import Line
from ugram.ring import Record


def scratch(name: str, variable: str, options: dict[str, Any], option: str) -> dict[str, Any]:
    """``options`` with ``option`` set to ``name`` in the run's scratch directory, unless the
    option or its variable is set (or there is no scratch directory)."""
    ready = os.environ.get(READY_ENV)
    if ready and option not in options and not os.environ.get(variable):
        return {**options, option: os.path.join(os.path.dirname(ready), name)}
    return options


class CountingAggregator(StatsdAggregator):
    """``StatsdAggregator`` that reports its count, last-line time and CPU like ``Count``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**scratch("statsd", "UGSTATSD_DIR", options, "dir"))
        self.count = 0
        self.last = 0.0
        self.cpu0 = 0.0

    def setup(self) -> None:
        super().setup()
        self.cpu0 = time.process_time()
        mark_ready()

    if hasattr(StatsdAggregator, "handle_batch"):  # what the worker calls

        def handle_batch(self, packets: list[list[Line]], records: list[Record]) -> None:
            super().handle_batch(packets, records)
            self.count += sum(map(len, packets))
            self.last = monotonic()

    else:  # an older ugram (--ugram-rev): one line and its Datagram a call

        def handle(self, line: Line, dgram: Datagram) -> None:
            super().handle(line, dgram)
            self.count += 1
            self.last = monotonic()

    def teardown(self) -> None:
        super().teardown()  # the last worker to stop merges: its CPU is counted
        report_count(self.count, self.last, time.process_time() - self.cpu0)


class ReadySink(LogSink):
    """``LogSink`` (rotation off by default) that marks the worker ready once set up."""

    def __init__(self, **options: Any) -> None:
        options = scratch("sink.jsonl", "UGSINK_PATH", options, "path")
        if not os.environ.get("UGSINK_MAX_BYTES"):
            options.setdefault("max_bytes", 0)
        super().__init__(**options)

    def setup(self) -> None:
        super().setup()
        mark_ready()

"""Built-in handlers usable from the CLI without writing any code.

* :func:`print_json` (the default): each datagram as one JSON line on stdout.
* :class:`LogSink`: JSON lines appended to a file shared by every worker, rotated by size,
  with an fsync policy (a local logging daemon).
* :class:`StatsdAggregator`: DogStatsD counters, gauges, sets, histograms, timers and
  distributions aggregated per flush interval, merged across workers, written as JSON.
* ``Forward``: every datagram into a NATS JetStream stream, acknowledged in the ring only once
  the stream acknowledged it (``UGFORWARD_*``; needs ``pip install 'ugram[nats]'``;
  imported on first use).

Options. In Python, pass them as keyword arguments (``sink = LogSink(path="/var/log/a.jsonl")``
in your module, then ``ugram serve app:sink``). From the CLI, where the class is instantiated
with no arguments, they come from environment variables ``UGSINK_<OPTION>`` and
``UGSTATSD_<OPTION>`` (``UGSINK_PATH=/var/log/a.jsonl``), and from a TOML or JSON file named
by ``UGSINK_CONFIG`` / ``UGSTATSD_CONFIG`` (``UGFORWARD_`` likewise; keyword > variable >
file > default). The prefixes are not ``UGRAM_``: those variables are ugram's own options.
A bad or unknown option stops the server at start-up (exit code 4) with a message naming it.
"""

from __future__ import annotations

import sys
from typing import Any

from ..datagram import Datagram
from .options import load_options as load_options
from .record import encode_line
from .sink import LogSink as LogSink
from .sink import RotatingFile as RotatingFile
from .sink import SinkOptions as SinkOptions
from .statsd import StatsdAggregator as StatsdAggregator
from .statsd import StatsdOptions as StatsdOptions

__all__ = [
    "Forward",
    "LogSink",
    "RotatingFile",
    "SinkOptions",
    "StatsdAggregator",
    "StatsdOptions",
    "load_options",
    "print_json",
]


def print_json(dgram: Datagram) -> None:
    """Print each datagram as one JSON line on stdout: time, sender, size, and the payload.

    The payload is under ``text`` when it is valid UTF-8, else under ``base64``; a sender path
    that is not UTF-8 is written with ``\\xNN`` escapes.
    """
    # One write per line: lines from several workers never interleave mid-line.
    sys.stdout.buffer.write(encode_line(dgram.data, dgram)[0])
    sys.stdout.buffer.flush()


def __getattr__(name: str) -> Any:
    # Forward is imported when first named: it brings an event loop and nats-py along, which
    # a worker running another built-in does not need.
    if name == "Forward":
        from .forward import Forward

        return Forward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

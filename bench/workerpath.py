"""What a worker pays per record outside the parser, for the built-ins of the peer bench.

    python bench/workerpath.py [--ugram-rev REV] [--batches N]

Runs the real :class:`ugram.workers.dispatch.Dispatcher` (with the C helper when built) over
batches of 256 ring records in one process, with no receiver and no socket: ``LogSink
--codec syslog`` on the peer bench's 200-byte RFC 3164 lines and ``StatsdAggregator --codec
statsd`` on its DogStatsD lines (the formats ``bench/c/sender`` writes). The codec's parse
is replaced by a look-up of each record's message, parsed just before its batch and never
used before (in the caches, its strings not hashed yet, as a parser's would be): what is
timed is everything the worker does outside the parser (the Dispatcher, the handler, the
sink's encoding and ``write(2)``, the aggregation), the part a C parser does not change.
Prints µs per record, the best of 5 tries.

``--ugram-rev REV`` measures ugram as committed at REV (``bench/snapshot.py``) instead of
the working tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # last: with --ugram-rev, PYTHONPATH's ugram comes first

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

BATCH = 256
FILLER = (
    b"lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    b"incididunt ut labore et dolore magna aliqua; ut enim ad minim veniam, quis nostrud "
)


def syslog_line(seq: int) -> bytes:
    """``bench/c/sender --syslog``'s 200-byte line ``seq``."""
    head = time.strftime("<14>%b %e %H:%M:%S bench[4242]: seq=").encode() + b"%010d " % seq
    return (head + FILLER * 2)[:200]


def statsd_line(seq: int) -> bytes:
    """``bench/c/sender --statsd``'s line ``seq`` (five kinds over 33 series)."""
    k, kind = seq // 5 % 8, seq % 5
    lines = (
        f"bench.requests.{k}:1|c|#env:prod,service:web,shard:{seq % 4}",
        f"bench.latency.{k}:{seq % 500}.{seq % 10}|ms|#env:prod,service:web",
        f"bench.queue.{k}:{seq % 1000}|g|#env:prod",
        f"bench.users:u{seq % 1000}|s|#env:prod",
        f"bench.size.{k}:{seq % 4096}|h|@0.5|#env:prod,service:web",
    )
    return lines[kind].encode()


CASES: dict[str, tuple[str, str, Callable[[int], bytes]]] = {
    "LogSink, syslog 200 B": ("ugram.builtin:LogSink", "syslog", syslog_line),
    "StatsdAggregator, DogStatsD": ("ugram.builtin:StatsdAggregator", "statsd", statsd_line),
}


def measure(spec: str, codec: str, line: Callable[[int], bytes], batches: int) -> float:
    """µs per record through the Dispatcher's step, the parse replaced by a look-up."""
    from ugram.config import make_config
    from ugram.ring import Record, Ring
    from ugram.speedups import NATIVE
    from ugram.stats import SLOTS_PER_BLOCK
    from ugram.workers.dispatch import Dispatcher
    from ugram.workers.handler import load_handler
    from ugram.workers.recycling import Recycler

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["UGSINK_PATH"] = os.path.join(scratch, "sink.jsonl")
        os.environ["UGSINK_MAX_BYTES"] = "0"
        os.environ["UGSTATSD_DIR"] = os.path.join(scratch, "statsd")
        config = make_config(socket=os.path.join(scratch, "s.sock"), handler=spec, codec=codec)
        handler = load_handler(config)
        assert handler.decode is not None
        best = float("inf")
        for _ in range(5):
            parsed: dict[int, Any] = {}  # a record's payload is the key to its message
            fast = dataclasses.replace(handler, decode=parsed.__getitem__)
            if fast.setup is not None:
                fast.setup()
            counters = memoryview(bytearray(8 * SLOTS_PER_BLOCK)).cast("Q")
            ring = Ring.create(1 << 20)
            dispatcher = Dispatcher(
                0, fast, ring, counters, Recycler(0, config), NATIVE, None, False
            )
            start, spent = time.time_ns(), 0.0
            for b in range(batches):
                # Parsed just before, as a worker's parser would: in the CPU's caches.
                batch = []
                for seq in range(b * BATCH, (b + 1) * BATCH):
                    parsed[seq] = handler.decode(line(seq))
                    batch.append((Record(seq, b"", start + seq, 0, -1, -1), 64 * (seq + 1)))
                t0 = time.perf_counter()
                dispatcher.step(batch)
                spent += time.perf_counter() - t0
                parsed.clear()
            best = min(best, spent / (batches * BATCH) * 1e6)
            if fast.teardown is not None:
                fast.teardown()
            ring.close()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ugram-rev", help="measure ugram as committed at this revision")
    parser.add_argument("--batches", type=int, default=100, help="batches of 256 per try")
    args = parser.parse_args(argv)
    if args.ugram_rev:
        from bench.snapshot import ugram_snapshot

        env = {**os.environ, "PYTHONPATH": ugram_snapshot(args.ugram_rev)}
        cmd = [sys.executable, __file__, "--batches", str(args.batches)]
        return subprocess.run(cmd, env=env, check=False).returncode
    import ugram

    print(f"ugram: {Path(ugram.__file__).parent.parent}; per record, outside the parser")
    for label, (spec, codec, line) in CASES.items():
        print(f"{label}: {measure(spec, codec, line, args.batches):.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

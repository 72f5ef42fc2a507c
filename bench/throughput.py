"""End-to-end ugram throughput next to a plain single-process Python receiver.

    python bench/throughput.py [--quick] [--count N] [--repeat N] [--ugram-path DIR]

For 64 B and 1 KB datagrams: the plain Python receiver (one blocking ``recv_into`` per
datagram, counting) and ugram (``bench.handlers:Count``) with 1 and 2 workers, with its
compiled per-datagram loops and with ``--speedups=false`` (its pure-Python ones), all fed by
the same C sender (Python senders when no C compiler exists), in the same run. ugram is timed from
the start of sending until the last record was handled ("msg/s"), and until the server exited
after SIGTERM (drain + teardown + exit: "incl. shutdown"); every run checks handled == sent.
Prints a table, ugram ÷ plain-Python ratio lines and, last, a headline line.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import time  # noqa: E402

from bench.baselines import run_baseline, sender_kind  # noqa: E402
from bench.harness import UgramResult, run_ugram, ugram_snapshot  # noqa: E402
from bench.report import (  # noqa: E402
    busy_note,
    fmt_ratio,
    machine_line,
    rate,
    ratio,
    size_label,
    table,
    ugram_line,
)

SIZES = (64, 1024)
WORKERS = (1, 2)
FULL_COUNT = 500_000
QUICK_COUNT = 200_000


LOOPS = (("compiled", ()), ("pure Python", ("--speedups=false",)))


def best_ugram(
    count: int, size: int, workers: int, repeat: int, path: str | None, flags: tuple[str, ...]
) -> UgramResult:
    """The fastest of ``repeat`` ugram runs (by time to the last handled record)."""
    runs = [
        run_ugram("bench.handlers:Count", count, size, workers, ugram_path=path, extra_args=flags)
        for _ in range(repeat)
    ]
    return max(runs, key=lambda r: r.rate)


def measure_size(
    size: int,
    count: int,
    repeat: int,
    path: str | None,
    rows: list[list[str]],
    ratios: list[str],
    headline: list[str],
) -> None:
    """The plain receiver and ugram with 1 and 2 workers at one size; appends the output."""
    plain = max(run_baseline("blocking", "trivial", None, count, size) for _ in range(repeat))
    label = size_label(size)
    rows.append(["plain Python receiver", label, "-", f"{count:,}", rate(plain), "-", "-", "-"])
    for workers in WORKERS:
        rates: dict[str, float] = {}
        for loops, flags in LOOPS:
            res = best_ugram(count, size, workers, repeat, path, flags)
            rates[loops] = res.rate
            figures = [rate(res.rate), rate(res.rate_exit), f"{res.receiver_us:.2f}"]
            rows.append(
                [
                    f"ugram Count, {loops}",
                    label,
                    str(workers),
                    f"{res.handled:,}",
                    *figures,
                    f"{res.worker_us:.2f}",
                ]
            )
            if loops == "compiled":
                r, r_exit = ratio(res.rate, plain), ratio(res.rate_exit, plain)
                ratios.append(
                    f"ratio {label}, {workers} worker(s): ugram / plain Python = "
                    f"{fmt_ratio(r)} ({fmt_ratio(r_exit)} incl. shutdown)"
                )
                headline.append(f"{label.replace(' ', '')}/{workers}w={fmt_ratio(r)}")
        ratios.append(
            f"ratio {label}, {workers} worker(s): compiled / pure-Python loops = "
            f"{fmt_ratio(ratio(rates['compiled'], rates['pure Python']))}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~30 s)")
    parser.add_argument("--count", type=int, help="datagrams per run")
    parser.add_argument("--repeat", type=int, help="runs per configuration, best kept")
    parser.add_argument("--ugram-path", help="directory put first on the server's PYTHONPATH")
    parser.add_argument("--ugram-rev", help="measure ugram/ as committed at this git revision")
    args = parser.parse_args(argv)
    if args.ugram_rev:
        args.ugram_path = ugram_snapshot(args.ugram_rev)
    count = args.count or (QUICK_COUNT if args.quick else FULL_COUNT)
    repeat = args.repeat or (1 if args.quick else 2)

    started = time.monotonic()
    print(machine_line())
    print(ugram_line(args.ugram_path))
    print(f"load: {sender_kind()} sender x1, {count:,} datagrams per run, best of {repeat}")
    note = busy_note()
    if note:
        print(note)

    rows: list[list[str]] = []
    ratios: list[str] = []
    headline: list[str] = []
    for size in SIZES:
        measure_size(size, count, repeat, args.ugram_path, rows, ratios, headline)

    print()
    headers = ["receiver", "size", "workers", "handled", "msg/s", "incl. shutdown"]
    print(table([*headers, "recv CPU µs/msg", "workers CPU µs/msg"], rows))
    print()
    print("\n".join(ratios))
    print(f"(took {time.monotonic() - started:.0f} s)")
    print("headline: ugram / plain Python receiver, end to end: " + " ".join(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One ugram handler, before and after: a git revision against the working tree, in one run.

    python bench/compare.py --rev REV [--handler MOD:ATTR] [--codec raw|json] [--size 64]
                            [--workers 1] [--count 400000] [--repeat 4] [--flag=--ARG ...]

Runs the C sender against ``ugram serve`` with the handler (default ``bench.handlers:Count``),
alternating ``REV`` (a snapshot with its C helper built, as an install builds it) and the
working tree, ``--repeat`` times each, and checks handled == sent every time. ``--flag``
passes an option to both servers (e.g. ``--flag=--credentials``). Prints each run, the
medians (msg/s, receiver CPU µs per datagram, workers' CPU µs per record) and, last, the
headline: after ÷ before.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import statistics  # noqa: E402

from bench.harness import UgramResult, run_ugram, ugram_snapshot  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--handler", default="bench.handlers:Count")
    parser.add_argument("--codec", default="raw", choices=("raw", "json"))
    parser.add_argument("--size", type=int, default=64, help="datagram size in bytes")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--count", type=int, default=400_000, help="datagrams per run")
    parser.add_argument("--repeat", type=int, default=4, help="runs of each side")
    parser.add_argument("--flag", action="append", default=[], help="a server option")
    return parser.parse_args(argv)


def medians(runs: list[UgramResult]) -> tuple[float, float, float]:
    """Median msg/s, receiver µs per datagram and workers' µs per record."""
    return (
        statistics.median(r.rate for r in runs),
        statistics.median(r.receiver_us for r in runs),
        statistics.median(r.worker_us for r in runs),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sides = {f"before ({args.rev})": ugram_snapshot(args.rev), "after (working tree)": None}
    runs: dict[str, list[UgramResult]] = {name: [] for name in sides}
    for _ in range(max(1, args.repeat)):
        for name, path in sides.items():
            result = run_ugram(
                args.handler,
                args.count,
                args.size,
                args.workers,
                codec=args.codec,
                json_payload=args.codec == "json",
                ugram_path=path,
                extra_args=args.flag,
            )
            runs[name].append(result)
            print(f"{name}: {result.rate:,.0f} msg/s", flush=True)
    rates = []
    for name, results in runs.items():
        rate, receiver, worker = medians(results)
        rates.append(rate)
        print(
            f"{name}: median {rate:,.0f} msg/s, receiver {receiver:.2f} µs/datagram, "
            f"workers {worker:.2f} µs/record"
        )
    what = " ".join([args.handler, *args.flag, f"{args.size} B"])
    print(f"headline: {what}: after ÷ before = {rates[1] / rates[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

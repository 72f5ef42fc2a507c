"""The ugram benchmark: named scenarios, one runner, one table format.

    python bench/run.py [SCENARIO ...] [--quick] [--rounds N] [options]

Scenarios (none named: every one but ``compare``, ``profile``, ``peers`` and
``statsd-export``, in this order)::

    ceilings    C recvmmsg (the machine's ceiling) and C plain recv()
    python      the plain Python receiver (a blocking recv_into() loop)
    asyncio     the stdlib asyncio server
    throughput  ugram end to end, trivial handler, 1 and 2 workers (P1; pure-Python loops too)
    json        a JSON handler: ugram --codec json against the baselines (P2, P3)
    cpu         a CPU-heavy handler, 2 workers against one process (P4)
    latency     p99 receive→handler latency at half of the maximum rate (P5)
    memory      RSS, private memory and USS through a long flood (P6)
    confined    P1 and P2 with every receiver on one CPU, the sender on the others
    netns       P1-P3 inside unshare -n with net.unix.max_dgram_qlen=512 (root only)
    compare     one handler at --rev against the working tree (--handler, --size, ...)
    profile     py-spy (and --perf) on the receiver and workers during a flood
    peers       L1-L4: LogSink against rsyslog, the statsd aggregator against a raw
                handler, the parsers (also ``python bench/peers.py``; rsyslog when installed)
    statsd-export  issue 17: DogStatsD into the exposition and jsonl against a plain Python
                aggregator, scrape times (also ``python bench/statsd_export.py``)

Every scenario's configurations go into one list, and each round measures every one of them
once, in order: a row and its baseline are measured in the same process, rounds apart at
most, under the same conditions. Each scenario then prints one table (``case``, ``subject``,
the median over the rounds, their range, the ratio to the row's baseline: the median of the
per-round ratios) and its goal lines; the last line of the run is the headline: each
scenario's figure. The load is one C sender (``bench/c``; Python senders without a
compiler); every run checks that exactly what was sent was received or handled, and a
failed one is shown as FAILED and makes the exit code 1. Progress goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from bench import cbuild, netns  # noqa: E402
from bench.latency import Latency  # noqa: E402
from bench.measure import Context, Results, run_rounds  # noqa: E402
from bench.memory import Memory  # noqa: E402
from bench.peers import Peers  # noqa: E402
from bench.plan import Plan, Scenario  # noqa: E402
from bench.profile import Profile  # noqa: E402
from bench.scenarios import (  # noqa: E402
    Asyncio,
    Ceilings,
    Compare,
    Confined,
    Cpu,
    Json,
    PlainPython,
    Throughput,
)
from bench.senders import sender_kind  # noqa: E402
from bench.snapshot import ugram_snapshot  # noqa: E402
from bench.statsd_scenario import StatsdExport  # noqa: E402
from bench.table import busy_note, machine_line, ugram_line  # noqa: E402
from bench.work import cpu_iters  # noqa: E402

SCENARIOS: tuple[type[Scenario], ...] = (
    Ceilings,
    PlainPython,
    Asyncio,
    Throughput,
    Json,
    Cpu,
    Latency,
    Memory,
    Confined,
    netns.Netns,
    Compare,
    Profile,
    Peers,
    StatsdExport,
)
NAMES = [s.name for s in SCENARIOS]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="scenarios: " + ", ".join(f"{s.name} ({s.summary})" for s in SCENARIOS),
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="; ".join(NAMES))
    parser.add_argument("--quick", action="store_true", help="64 B and 1 KB, short runs, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds, interleaved (default 3; quick 1)")
    parser.add_argument("--count", type=int, help="datagrams per throughput run (peers: lines)")
    parser.add_argument("--flood", type=int, help="datagrams in the memory flood")
    parser.add_argument("--ugram-path", help="measure the ugram in this directory")
    parser.add_argument("--ugram-rev", help="measure ugram/ as committed at this git revision")
    group = parser.add_argument_group("compare and profile")
    group.add_argument("--rev", help="compare: the git revision to compare against")
    group.add_argument(
        "--handler", default="trivial", help="trivial, json, cpu, latency or MOD:ATTR"
    )
    group.add_argument("--codec", default="", help="the handler's codec (default: its own, or raw)")
    group.add_argument("--size", type=int, default=64, help="datagram size in bytes")
    group.add_argument(
        "--payload",
        choices=["raw", "json", "syslog", "statsd"],
        help="profile: the load (default: json with --codec json or --handler json, else raw)",
    )
    group.add_argument("--workers", type=int, default=1)
    group.add_argument(
        "--flag", action="append", default=[], help="a server option, e.g. --flag=--credentials"
    )
    group.add_argument("--seconds", type=float, default=8.0, help="profile: the window")
    group.add_argument("--perf", action="store_true", help="profile: a perf record window too")
    group.add_argument("--out", help="profile: where to keep the raw stacks")
    parser.add_argument("--netns-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in NAMES]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    if "compare" in args.scenarios and not args.rev:
        parser.error("compare needs --rev REV")
    if args.ugram_rev:
        args.ugram_path = ugram_snapshot(args.ugram_rev)
    return args


def selected(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios to run, in the order of ``SCENARIOS`` (none named: the default ones)."""
    names = args.scenarios or [s.name for s in SCENARIOS if s.default]
    return [s() for s in SCENARIOS if s.name in names]


def header(plan: Plan) -> None:
    print(machine_line())
    print(ugram_line(plan.args.ugram_path))
    print(f"load: {sender_kind()} sender x1; {plan.rounds} round(s), interleaved; medians")
    note = busy_note()
    if note:
        print(note)
    print(f"CPU handler: {cpu_iters()} iterations (~50 µs) per record", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server and sender started is killed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    plan = Plan(args.quick, max(1, args.rounds or (1 if args.quick else 3)), args)
    ctx = Context(args.ugram_path)
    if args.netns_child:
        netns.child_main(plan, ctx)
        return 0
    started = time.monotonic()
    header(plan)
    cbuild.build_all()  # now, not inside the first timed run that needs a program
    scenarios, results = selected(args), Results()
    run_rounds([cfg for s in scenarios for cfg in s.needs(plan)], plan.rounds, ctx, results)
    for scenario in scenarios:
        scenario.run(plan, ctx, results)
    sections = [scenario.report(plan, results) for scenario in scenarios]
    for section in sections:
        print()
        print(section.render())
    failures = len(results.errors) + sum(s.failures() for s in scenarios)
    status = f"{failures} run(s) FAILED" if failures else "every run got exactly what was sent"
    print(f"\n({status}; took {time.monotonic() - started:.0f} s)")
    print("headline: " + " ".join(section.figure for section in sections))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

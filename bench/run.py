"""The whole ugram benchmark in one command: every baseline and ugram, measured in one run.

    python bench/run.py [--quick] [--repeat N] [--flood N] [--no-netns] [--ugram-path DIR]

Receivers, all fed by one C sender (``bench/c/sender``; Python senders without a compiler):

* C ``recvmmsg`` (the machine's ceiling) and C plain ``recv()`` (golib unixgram's design);
* the stdlib asyncio server (``create_datagram_endpoint``) and a plain blocking Python
  ``recv_into`` loop, each running the handler in one process;
* ugram (``python -m ugram serve``) with 1 and 2 workers.

Handlers: trivial (count), JSON (msgspec decode into a Struct; ugram declares ``msg: Record``
and runs with ``--codec json``), CPU-heavy (~50 µs of pure Python per record). Sizes 64 B,
1 KB, 4 KB, 16 KB (``--quick``: 64 B and 1 KB; JSON records need more than 64 B, so JSON runs
start at 1 KB). Every run checks that exactly what was sent was received/handled; a failed run
is reported and makes the exit code 1.

Then the goals, as ratios:

* P1 ugram receiver path (trivial worker, 64 B, the better of 1 and 2 workers) ÷ C recvmmsg;
* P2 ugram end to end, 1 worker JSON into a Struct, 1 KB ÷ C plain-recv receiver;
* P3 the same ÷ the stdlib asyncio server running the same decode;
* P4 CPU-heavy handler, 2 workers ÷ the blocking Python receiver doing the same work;
* P5 p99 receive→handler latency (``Datagram.received_at`` to the handler call) with a paced
  sender at half of ugram's maximum rate with that same handler (``Latency``: trivial, but it
  takes the ``Datagram``, which costs ~1 µs a record more than ``Count``), 1 worker, 64 B;
* P6 RSS of every ugram process (supervisor and children) during a long flood: first sample
  after warm-up vs last, ``flat`` or ``growing``.

P1 and P2's runs are repeated with every receiver confined to the first CPU and the sender
to the others (ugram's receiver and worker then share one CPU: see docs/operations.md, "Small
machines"), reported separately. As root, P1-P3's runs are repeated inside ``unshare -n``
with ``net.unix.max_dgram_qlen=512`` (the default 10 caps every receiver; it is per network
namespace) and reported separately. The last line is the headline.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

from bench import cbuild  # noqa: E402
from bench.baselines import (  # noqa: E402
    CKind,
    HandlerName,
    PythonKind,
    run_baseline,
    run_c_receiver,
    sender_kind,
)
from bench.harness import ProcTrace, UgramResult, run_ugram, ugram_snapshot  # noqa: E402
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
from bench.work import cpu_iters  # noqa: E402

FULL_SIZES = (64, 1024, 4096, 16384)
QUICK_SIZES = (64, 1024)
JSON_MIN_SIZE = 1024
FULL_COUNTS = {64: 400_000, 1024: 400_000, 4096: 200_000, 16384: 100_000}
QUICK_COUNTS = {64: 200_000, 1024: 200_000}
CPU_COUNT = {False: 40_000, True: 15_000}  # keyed by quick
ASYNCIO_SHARE = 6  # asyncio is ~15x slower: send it 1/6 of the datagrams
FLOOD = {False: 10_000_000, True: 1_000_000}
FLOOD_SECONDS = {False: 100.0, True: 15.0}  # cap the flood to about this long at ugram's rate
LATENCY_SECONDS = {False: 4.0, True: 2.0}
NETNS_QLEN = 512
NETNS_TIMEOUT = 600.0
MIB = 1 << 20
GROWTH_LIMIT = 2 * MIB  # RSS growth above this (and above 3 %) after warm-up is "growing"
DEFAULT_RING_SIZE = 8 * MIB  # ugram's default ring_size (the bench never sets it)
RING_HEADER = 32  # bytes of record header in a ring (ugram/ring.py)

UGRAM_HANDLERS = {
    "trivial": ("bench.handlers:Count", "raw"),
    "json": ("bench.handlers:JsonStruct", "json"),
    "cpu": ("bench.handlers:CpuCount", "raw"),
    "latency": ("bench.handlers:Latency", "raw"),
}
HANDLER_LABELS = {
    "trivial": "trivial",
    "json": "JSON→Struct",
    "cpu": "CPU ~50µs",
    "latency": "P5 Latency",
}
RECEIVER_LABELS = {
    "c-mmsg": "C recvmmsg",
    "c-plain": "C plain recv",
    "blocking": "Python blocking",
    "asyncio": "stdlib asyncio",
    "ugram-1": "ugram 1 worker",
    "ugram-2": "ugram 2 workers",
}


PY_KINDS: dict[str, PythonKind] = {"blocking": "blocking", "asyncio": "asyncio"}
PY_HANDLERS: dict[str, HandlerName] = {"trivial": "trivial", "json": "json", "cpu": "cpu"}


@dataclass
class Row:
    """One throughput measurement in msg/s (None when the run failed)."""

    handler: str
    receiver: str
    size: int
    sent: int
    rate: float | None = None
    rate_exit: float | None = None  # ugram: until the server exited after SIGTERM
    error: str | None = None
    recv_us: float | None = None  # ugram: receiver CPU µs per datagram
    worker_us: float | None = None  # ugram: CPU µs per datagram of all workers together

    def cells(self) -> list[str]:
        return [
            HANDLER_LABELS[self.handler],
            RECEIVER_LABELS[self.receiver],
            size_label(self.size),
            f"{self.sent:,}",
            rate(self.rate) if self.error is None else "FAILED",
            rate(self.rate_exit),
            "-" if self.recv_us is None else f"{self.recv_us:.2f}",
            "-" if self.worker_us is None else f"{self.worker_us:.2f}",
        ]


@dataclass
class Latency:
    """P5: one paced ugram run with the ``Latency`` handler."""

    workers: int
    target: float
    result: UgramResult | None = None
    error: str | None = None


@dataclass
class Bench:
    """The options of one run and everything it measured."""

    quick: bool
    repeat: int
    ugram_path: str | None
    # Confine every receiver to the first CPUs, and its senders to the second.
    cpus: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    rows: list[Row] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    flood: UgramResult | None = None
    flood_error: str | None = None
    failures: int = 0

    def count(self, handler: str, receiver: str, size: int) -> int:
        """Datagrams to send for one measurement."""
        if handler == "cpu":
            base = CPU_COUNT[self.quick]
        else:
            base = (QUICK_COUNTS if self.quick else FULL_COUNTS)[size]
        return base // ASYNCIO_SHARE if receiver == "asyncio" else base

    def measure(self, handler: str, receiver: str, size: int) -> Row:
        """Run one receiver ``repeat`` times and keep the best; a failure is recorded."""
        row = Row(handler, receiver, size, self.count(handler, receiver, size))
        progress(" ".join(row.cells()[:3]))
        try:
            for _ in range(self.repeat):
                got = self._once(row)
                if row.rate is None or (got.rate is not None and got.rate > row.rate):
                    row.rate, row.rate_exit = got.rate, got.rate_exit
                    row.recv_us, row.worker_us = got.recv_us, got.worker_us
        except (RuntimeError, OSError) as exc:
            row.rate = row.rate_exit = row.recv_us = row.worker_us = None
            row.error = str(exc).strip()
            self.fail(f"{' '.join(row.cells()[:3])}: {row.error}")
        self.rows.append(row)
        return row

    def _once(self, row: Row) -> Row:
        """One run of ``row``'s receiver: a new Row with its figures."""
        got = Row(row.handler, row.receiver, row.size, row.sent)
        if row.receiver in ("c-mmsg", "c-plain"):
            kind: CKind = "mmsg" if row.receiver == "c-mmsg" else "plain"
            json_payload = row.handler == "json"
            got.rate = run_c_receiver(
                kind, None, row.sent, row.size, json_payload=json_payload, cpus=self.cpus
            )
        elif row.receiver in PY_KINDS:
            kind_py, name = PY_KINDS[row.receiver], PY_HANDLERS[row.handler]
            got.rate = run_baseline(kind_py, name, None, row.sent, row.size, cpus=self.cpus)
        else:
            res = self.ugram(row.handler, row.sent, row.size, int(row.receiver[-1]))
            got.rate, got.rate_exit = res.rate, res.rate_exit
            got.recv_us, got.worker_us = res.receiver_us, res.worker_us
        return got

    def ugram(
        self,
        handler: str,
        count: int,
        size: int,
        workers: int,
        *,
        paced_rate: float | None = None,
        sample_every: float | None = None,
        timeout: float = 120.0,
    ) -> UgramResult:
        """One ugram run with a bench handler (``trivial``, ``json``, ``cpu``, ``latency``)."""
        spec, codec = UGRAM_HANDLERS[handler]
        return run_ugram(
            spec,
            count,
            size,
            workers,
            codec=codec,
            json_payload=handler == "json",
            paced_rate=paced_rate,
            sample_every=sample_every,
            timeout=timeout,
            ugram_path=self.ugram_path,
            cpus=self.cpus,
        )

    def get(self, handler: str, receiver: str, size: int) -> float | None:
        """A measured rate, None if not measured or failed."""
        for row in self.rows:
            if (row.handler, row.receiver, row.size) == (handler, receiver, size):
                return row.rate
        return None

    def fail(self, message: str) -> None:
        self.failures += 1
        print(f"FAILED {message}", file=sys.stderr, flush=True)


def progress(what: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    print(f"... {what}", file=sys.stderr, flush=True)


# -- the plan -------------------------------------------------------------------------------


def run_throughput(bench: Bench, sizes: tuple[int, ...]) -> None:
    """Every receiver at every size with the trivial and JSON handlers, then the CPU one."""
    for size in sizes:
        for receiver in ("c-mmsg", "c-plain", "blocking", "asyncio", "ugram-1", "ugram-2"):
            bench.measure("trivial", receiver, size)
    for size in (s for s in sizes if s >= JSON_MIN_SIZE):
        for receiver in ("blocking", "asyncio", "ugram-1", "ugram-2"):
            bench.measure("json", receiver, size)
    cpu_receivers = ("blocking", "ugram-1", "ugram-2")
    for receiver in cpu_receivers if bench.quick else ("asyncio", *cpu_receivers):
        bench.measure("cpu", receiver, 64)
    bench.measure("latency", "ugram-1", 64)  # P5's maximum: the handler P5 paces


def run_latency(bench: Bench) -> None:
    """P5: the Latency handler with a paced sender at half of the rate the same server took
    in a flood (its row in the throughput table)."""
    peak = bench.get("latency", "ugram-1", 64)
    if peak is None:
        bench.fail("P5 latency: no maximum rate (the Latency handler's flood failed)")
        return
    seconds = LATENCY_SECONDS[bench.quick]
    for workers in (1,) if bench.quick else (1, 2):
        lat = Latency(workers, peak / 2)
        progress(f"P5 latency, {workers} worker(s), paced at {lat.target:,.0f}/s")
        try:
            count = max(1000, int(lat.target * seconds))
            lat.result = bench.ugram("latency", count, 64, workers, paced_rate=lat.target)
        except (RuntimeError, OSError) as exc:
            lat.error = str(exc).strip()
            bench.fail(f"P5 latency, {workers} worker(s): {lat.error}")
        bench.latencies.append(lat)


def flood_count(bench: Bench, wanted: int | None) -> int:
    """The P6 flood size: ``wanted``, else 10 M (quick: 1 M) capped to what ugram's measured
    2-worker rate handles in ``FLOOD_SECONDS``."""
    if wanted:
        return wanted
    peak = bench.get("trivial", "ugram-2", 64)
    count = FLOOD[bench.quick]
    if peak is not None and count / peak > FLOOD_SECONDS[bench.quick]:
        count = int(peak * FLOOD_SECONDS[bench.quick]) // 100_000 * 100_000 or 100_000
    return count


def run_flood(bench: Bench, count: int) -> None:
    """P6: a long flood (trivial handler, 2 workers, 64 B) with RSS sampled throughout."""
    progress(f"P6 RSS during a flood of {count:,} datagrams (2 workers, 64 B)")
    try:
        interval = 0.25 if bench.quick else 0.5
        bench.flood = bench.ugram(
            "trivial", count, 64, 2, sample_every=interval, timeout=max(120.0, count / 20_000)
        )
    except (RuntimeError, OSError) as exc:
        bench.flood_error = str(exc).strip()
        bench.fail(f"P6 flood: {bench.flood_error}")


CONFINED_PLAN = (
    ("trivial", "c-mmsg", 64),
    ("trivial", "ugram-1", 64),
    ("trivial", "c-plain", 1024),
    ("json", "ugram-1", 1024),
)


def run_confined(bench: Bench) -> tuple[list[Row], str | None]:
    """P1 and P2's runs again with every receiver confined to one CPU (ugram: the receiver
    and its worker share it) and the sender to the others; (rows, note if skipped)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [], "skipped: needs 2 CPUs"
    confined = Bench(
        bench.quick, bench.repeat, bench.ugram_path, cpus=((cpus[0],), tuple(cpus[1:]))
    )
    progress(f"receivers confined to CPU {cpus[0]}, senders to the others")
    for handler, receiver, size in CONFINED_PLAN:
        confined.measure(handler, receiver, size)
    bench.failures += confined.failures
    return confined.rows, None


NETNS_PLAN = (
    ("trivial", "c-mmsg", 64),
    ("trivial", "c-plain", 64),
    ("trivial", "blocking", 64),
    ("trivial", "ugram-1", 64),
    ("trivial", "ugram-2", 64),
    ("trivial", "c-plain", 1024),
    ("json", "blocking", 1024),
    ("json", "asyncio", 1024),
    ("json", "ugram-1", 1024),
)


def run_netns_child(bench: Bench) -> None:
    """Inside ``unshare -n``: P1-P3's measurements, printed as one JSON line."""
    for handler, receiver, size in NETNS_PLAN:
        bench.measure(handler, receiver, size)
    print("NETNS " + json.dumps([asdict(row) for row in bench.rows]), flush=True)


def run_netns(args: argparse.Namespace) -> tuple[list[Row], str | None]:
    """Re-run P1-P3 in a new network namespace with a larger queue; (rows, note if skipped)."""
    if args.no_netns:
        return [], "skipped (--no-netns)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return [], "skipped: needs root and unshare(1)"
    progress(f"unshare -n with net.unix.max_dgram_qlen={NETNS_QLEN}")
    script = f'sysctl -qw net.unix.max_dgram_qlen={NETNS_QLEN} && exec "$@"'
    cmd = ["unshare", "-n", "--", "sh", "-c", script, "sh", sys.executable, __file__]
    cmd += ["--netns-child", f"--repeat={args.repeat}", *(["--quick"] if args.quick else [])]
    if args.ugram_path:
        cmd.append(f"--ugram-path={args.ugram_path}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=NETNS_TIMEOUT)
    except subprocess.TimeoutExpired:
        return [], f"failed: no result within {NETNS_TIMEOUT:.0f} s"
    finally:
        stop_child(proc)
    for line in out.splitlines():
        if line.startswith("NETNS "):
            return [Row(**row) for row in json.loads(line[6:])], None
    return [], f"skipped: unshare -n failed (exit {proc.returncode})"


def stop_child(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (the child cleans up its servers), then SIGKILL after a grace period."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the report -----------------------------------------------------------------------------


def print_rows(rows: list[Row]) -> None:
    headers = ["handler", "receiver", "size", "sent", "msg/s", "incl. shutdown"]
    headers += ["recv CPU µs/msg", "workers CPU µs/msg"]
    print(table(headers, [row.cells() for row in rows]))


def us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:,.0f}"


def print_latency(bench: Bench) -> None:
    print(f"P5 latency, trivial handler, 64 B, paced {sender_kind()} sender (µs)")
    headers = ["workers", "target/s", "achieved/s", "recv→handler p50", "p90", "p99", "p99.9"]
    headers += ["max", "send→handler p50", "p99"]
    rows = []
    for lat in bench.latencies:
        res = lat.result
        if res is None:
            rows.append([str(lat.workers), rate(lat.target), "FAILED"])
            continue
        recv, send = res.latency.get("recv", {}), res.latency.get("send", {})
        cells = [str(lat.workers), rate(lat.target), rate(res.paced_rate)]
        cells += [us(recv.get(p)) for p in ("p50", "p90", "p99", "p99.9", "p100")]
        cells += [us(send.get("p50")), us(send.get("p99"))]
        rows.append(cells)
    print(table(headers, rows))


def warm_up_seconds(res: UgramResult) -> float:
    """When P6 starts comparing: after every ring page has been written at least twice (the
    shared rings enter RSS as they are first touched), and not before 1 s or 20 % of the run."""
    per_record = (RING_HEADER + res.size + 7) & ~7
    ring_pass = 2 * res.workers * DEFAULT_RING_SIZE / per_record / max(res.rate, 1.0)
    return max(1.0, 0.2 * res.seconds, ring_pass)


def grew(before: int, after: int) -> bool:
    """More than ``GROWTH_LIMIT`` and more than 3 %."""
    return after - before > GROWTH_LIMIT and after - before > 0.03 * before


def trace_summary(trace: ProcTrace, warm: float) -> tuple[list[str], bool] | None:
    """One P6 table row for a process, and whether its memory grew after ``warm`` seconds."""
    samples = [s for s in trace.samples if s.rss > 0]  # 0: sampled while exiting
    if len(samples) < 3:
        return None
    after = [s for s in samples if s.t >= warm] or samples[-2:]
    first, last = after[0], samples[-1]
    private0, private1 = first.rss - first.shared, last.rss - last.shared
    span = last.t - first.t
    cpu = (last.cpu - first.cpu) / span * 100 if span > 0 else 0.0
    name = " ".join(trace.name.split()[:3]) if trace.name.startswith("ugram:") else trace.name
    cells = [name[:24], str(trace.pid), f"{first.t:.1f}", f"{first.rss / MIB:.1f}"]
    cells += [f"{last.t:.1f}", f"{last.rss / MIB:.1f}", f"{(last.rss - first.rss) / MIB:+.1f}"]
    cells += [f"{private0 / MIB:.1f}", f"{private1 / MIB:.1f}", f"{cpu:.0f}%"]
    return cells, grew(first.rss, last.rss) or grew(private0, private1)


def print_flood(bench: Bench) -> str | None:
    """Print the P6 table; return ``flat``/``growing`` (None when the flood failed)."""
    res = bench.flood
    if res is None:
        print(f"P6 RSS: FAILED ({bench.flood_error})")
        return None
    warm = warm_up_seconds(res)
    print(
        f"P6 RSS during a flood of {res.sent:,} x 64 B, 2 workers ({res.rate:,.0f} msg/s over "
        f"{res.seconds:.0f} s); first sample after a {warm:.1f} s warm-up (every ring page "
        "written twice) vs the last; private = RSS - shared (the rings are shared)"
    )
    if res.sent < FLOOD[bench.quick]:
        print(f"(the flood was capped from {FLOOD[bench.quick]:,} to fit the time budget)")
    headers = ["process", "pid", "t0 s", "RSS0 MiB", "t1 s", "RSS1 MiB", "growth"]
    headers += ["private0 MiB", "private1 MiB", "CPU"]
    rows, growing = [], False
    for trace in res.traces:
        summary = trace_summary(trace, warm)
        if summary is not None:
            rows.append(summary[0])
            growing = growing or summary[1]
    print(table(headers, rows))
    if res.seconds < 2 * warm:
        print("(the flood was too short for a reliable verdict: run longer, e.g. --flood)")
    return "growing" if growing else "flat"


@dataclass
class Goals:
    """P1-P4 ratios from one set of rows."""

    p1: float | None
    p2: float | None
    p3: float | None
    p4: float | None
    lines: list[str]


def goals(bench: Bench) -> Goals:
    g = bench.get
    u1, u2 = g("trivial", "ugram-1", 64), g("trivial", "ugram-2", 64)
    best = max((r for r in (u1, u2) if r is not None), default=None)
    json1 = g("json", "ugram-1", 1024)
    p1 = ratio(best, g("trivial", "c-mmsg", 64))
    p2 = ratio(json1, g("trivial", "c-plain", 1024))
    p3 = ratio(json1, g("json", "asyncio", 1024))
    p4 = ratio(g("cpu", "ugram-2", 64), g("cpu", "blocking", 64))
    lines = [
        f"P1 ugram receiver path (trivial, 64 B, best of 1/2 workers: {rate(best)}) "
        f"÷ C recvmmsg ({rate(g('trivial', 'c-mmsg', 64))}) = {fmt_ratio(p1)}",
        f"P2 ugram 1 worker JSON→Struct 1 KB ({rate(json1)}) "
        f"÷ C plain recv 1 KB ({rate(g('trivial', 'c-plain', 1024))}) = {fmt_ratio(p2)}",
        f"P3 ugram 1 worker JSON→Struct 1 KB ({rate(json1)}) "
        f"÷ stdlib asyncio JSON 1 KB ({rate(g('json', 'asyncio', 1024))}) = {fmt_ratio(p3)}",
        f"P4 ugram 2 workers CPU ~50µs ({rate(g('cpu', 'ugram-2', 64))}) "
        f"÷ Python blocking CPU ({rate(g('cpu', 'blocking', 64))}) = {fmt_ratio(p4)}",
    ]
    return Goals(p1, p2, p3, p4, lines)


def side_ratios(bench: Bench, sizes: tuple[int, ...]) -> list[str]:
    """ugram ÷ the plain blocking Python receiver, per size and handler (for context)."""
    lines = []
    for handler in ("trivial", "json"):
        parts = []
        for size in sizes:
            base = bench.get(handler, "blocking", size)
            for workers in (1, 2):
                r = ratio(bench.get(handler, f"ugram-{workers}", size), base)
                if r is not None:
                    parts.append(f"{size_label(size).replace(' ', '')}/{workers}w={fmt_ratio(r)}")
        if parts:
            lines.append(f"ugram ÷ Python blocking, {HANDLER_LABELS[handler]}: " + " ".join(parts))
    return lines


def p5_figure(bench: Bench) -> tuple[str, int | None]:
    for lat in bench.latencies:
        if lat.workers == 1 and lat.result is not None:
            p99 = lat.result.latency.get("recv", {}).get("p99")
            return ("n/a" if p99 is None else f"{p99 / 1000:.0f}µs"), p99
    return "n/a", None


def report(
    bench: Bench,
    sizes: tuple[int, ...],
    confined: tuple[list[Row], str | None],
    netns: tuple[list[Row], str | None],
) -> str:
    """Print every table and the goal lines; return the headline."""
    print()
    print(
        "Throughput (msg/s; baselines: first to last datagram; ugram: load start to last "
        "record handled, and to the server's exit after SIGTERM; ugram CPU per datagram: "
        "receiver while the load ran, workers setup() to teardown(), idle spinning included)"
    )
    print_rows(bench.rows)
    print()
    print_latency(bench)
    print()
    p6 = print_flood(bench) or "n/a"
    print()
    netns_rows, note = netns
    netns_goals: Goals | None = None
    confined_rows, confined_note = confined
    confined_goals: Goals | None = None
    print(
        "Every receiver confined to one CPU (as `taskset -c 0`; ugram's receiver and worker "
        f"share it), the sender to the others: {confined_note or 'measured'}"
    )
    if confined_rows:
        print_rows(confined_rows)
        confined_goals = goals(
            Bench(bench.quick, bench.repeat, bench.ugram_path, None, confined_rows)
        )
    print()
    print(f"unshare -n, net.unix.max_dgram_qlen={NETNS_QLEN}: {note or 'measured'}")
    if netns_rows:
        print_rows(netns_rows)
        netns_goals = goals(Bench(bench.quick, bench.repeat, bench.ugram_path, None, netns_rows))
    print()
    main_goals = goals(bench)
    print("\n".join(main_goals.lines))
    p5, _ = p5_figure(bench)
    print(f"P5 p99 receive→handler latency at half of the maximum rate, 1 worker = {p5}")
    print(
        f"(P5's maximum: {rate(bench.get('latency', 'ugram-1', 64))} msg/s, its handler in a flood)"
    )
    print(f"P6 RSS during the flood = {p6}")
    print("\n".join(side_ratios(bench, sizes)))
    if confined_goals is not None:
        print(
            f"confined to one CPU: P1={fmt_ratio(confined_goals.p1)} "
            f"P2={fmt_ratio(confined_goals.p2)}"
        )
    if netns_goals is not None:
        print(
            f"with max_dgram_qlen={NETNS_QLEN}: P1={fmt_ratio(netns_goals.p1)} "
            f"P2={fmt_ratio(netns_goals.p2)} P3={fmt_ratio(netns_goals.p3)}"
        )
    return (
        f"headline: P1={fmt_ratio(main_goals.p1)} P2={fmt_ratio(main_goals.p2)} "
        f"P3={fmt_ratio(main_goals.p3)} P4={fmt_ratio(main_goals.p4)} P5={p5} P6={p6}"
    )


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 B and 1 KB, short runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement, best kept")
    parser.add_argument("--flood", type=int, help="datagrams in the P6 flood")
    parser.add_argument("--no-netns", action="store_true", help="skip the unshare -n runs")
    parser.add_argument("--ugram-path", help="directory put first on the server's PYTHONPATH")
    parser.add_argument("--ugram-rev", help="measure ugram/ as committed at this git revision")
    parser.add_argument("--netns-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ugram_rev:
        args.ugram_path = ugram_snapshot(args.ugram_rev)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server and sender started is killed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    bench = Bench(args.quick, max(1, args.repeat), args.ugram_path)
    if args.netns_child:
        run_netns_child(bench)
        return 0
    started = time.monotonic()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    print(machine_line())
    print(ugram_line(args.ugram_path))
    print(f"load: {sender_kind()} sender x1; best of {bench.repeat} run(s) per measurement")
    note = busy_note()
    if note:
        print(note)
    print(f"CPU handler: {cpu_iters()} iterations (~50 µs) per record", flush=True)
    cbuild.build_all()  # now, not inside the first timed run that needs a program
    run_throughput(bench, sizes)
    run_latency(bench)
    run_flood(bench, flood_count(bench, args.flood))
    confined = run_confined(bench)
    netns = run_netns(args)
    headline = report(bench, sizes, confined, netns)
    status = f"{bench.failures} run(s) FAILED" if bench.failures else "every run: handled == sent"
    print(f"({status}; took {time.monotonic() - started:.0f} s)")
    print(headline)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""P6: the memory of every ugram process through a long flood (trivial handler, 2 workers,
64 B), sampled every half second: first sample after warm-up against the last.

Each process's row gives its RSS growth over that window (the figure), its RSS, private
memory (RSS - shared; the rings are shared) and USS (pages no other process maps) at both
ends, and its CPU use. A process "grows" when RSS or private memory rose by more than
2 MiB and 3 %; the verdict is ``flat`` or ``growing`` (``n/a`` when the flood was shorter
than twice the warm-up).
"""

from __future__ import annotations

from bench.measure import Config, Context, Results, progress
from bench.plan import Plan, Scenario, Section
from bench.procs import BenchError, ProcTrace
from bench.server import ServerSpec, UgramResult, run_ugram
from bench.table import Row, Table, median_of

FLOOD = {False: 10_000_000, True: 1_000_000}  # keyed by quick
FLOOD_SECONDS = {False: 100.0, True: 15.0}  # cap the flood to about this long at ugram's rate
MIB = 1 << 20
GROWTH_LIMIT = 2 * MIB
DEFAULT_RING_SIZE = 8 * MIB  # ugram's default ring_size (the bench never sets it)
RING_HEADER = 32  # bytes of record header in a ring (ugram/ring.py)
HEADERS = ["t0 s", "RSS0", "t1 s", "RSS1", "private0", "private1", "USS0", "USS1", "CPU"]


def warm_up_seconds(res: UgramResult, workers: int, size: int) -> float:
    """When the comparison starts: after every ring page has been written at least twice
    (the rings enter RSS as they are first touched), and not before 1 s or 20 % of the run."""
    per_record = (RING_HEADER + size + 7) & ~7
    ring_pass = 2 * workers * DEFAULT_RING_SIZE / per_record / max(res.rate, 1.0)
    return max(1.0, 0.2 * res.seconds, ring_pass)


def grew(before: int, after: int) -> bool:
    """More than ``GROWTH_LIMIT`` and more than 3 %."""
    return after - before > GROWTH_LIMIT and after - before > 0.03 * before


def role(title: str) -> str:
    """``worker 0``, ``receiver`` or ``supervisor`` from a process title (else the title)."""
    words = title.split()  # "ugram: worker 0", "ugram: receiver /tmp/ub.../s"
    if words[:1] != ["ugram:"] or len(words) < 2:
        return title
    return " ".join(words[1:3] if words[1] == "worker" else words[1:2])


def trace_row(trace: ProcTrace, warm: float) -> tuple[Row, bool] | None:
    """A process's row, and whether its memory grew after ``warm`` seconds."""
    samples = [s for s in trace.samples if s.rss > 0]  # 0: sampled while exiting
    if len(samples) < 3:
        return None
    first = ([s for s in samples if s.t >= warm] or samples[-2:])[0]
    last = samples[-1]
    private0, private1 = first.rss - first.shared, last.rss - last.shared
    span = last.t - first.t
    cpu = (last.cpu - first.cpu) / span * 100 if span > 0 else 0.0
    name = role(trace.name)
    mib = [f"{v / MIB:.1f}" for v in (first.rss, last.rss, private0, private1, first.uss, last.uss)]
    extras = [f"{first.t:.1f}", mib[0], f"{last.t:.1f}", *mib[1:], f"{cpu:.0f}%"]
    row = Row("flood 64 B", name, [(last.rss - first.rss) / MIB], None, extras)
    return row, grew(first.rss, last.rss) or grew(private0, private1)


def traces_table(traces: list[ProcTrace], warm: float) -> tuple[Table, bool]:
    """One row per process, and whether any process's memory grew after ``warm`` seconds."""
    table = Table("RSS growth MiB", HEADERS, fmt=lambda v: f"{v:+.1f}")
    growing = False
    for trace in traces:
        summary = trace_row(trace, warm)
        if summary is not None:
            table.rows.append(summary[0])
            growing = growing or summary[1]
    return table, growing


class Memory(Scenario):
    name = "memory"
    summary = "P6: RSS, private memory and USS of every ugram process through a long flood"

    def __init__(self) -> None:
        self.flood: UgramResult | None = None
        self.error = ""

    def rate_config(self, plan: Plan) -> Config:
        return plan.ugram("trivial", 64, 2)

    def needs(self, plan: Plan) -> list[Config]:
        return [self.rate_config(plan)]

    def count(self, plan: Plan, results: Results) -> int:
        """``--flood``, else 10 M (quick: 1 M) capped to ``FLOOD_SECONDS`` at ugram's rate."""
        if plan.args.flood:
            return int(plan.args.flood)
        count, peak = FLOOD[plan.quick], median_of(results.rates(self.rate_config(plan)))
        if peak is not None and count / peak > FLOOD_SECONDS[plan.quick]:
            count = int(peak * FLOOD_SECONDS[plan.quick]) // 100_000 * 100_000 or 100_000
        return count

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        count = self.count(plan, results)
        progress(f"P6 memory during a flood of {count:,} datagrams (2 workers, 64 B)")
        spec = ServerSpec("trivial", 2, ugram_path=ctx.tree(""))
        interval = 0.25 if plan.quick else 0.5
        try:
            timeout = max(120.0, count / 20_000)
            self.flood = run_ugram(spec, count, 64, sample_every=interval, timeout=timeout)
        except (BenchError, OSError) as exc:
            self.error = str(exc).strip()

    def failures(self) -> int:
        return 1 if self.error else 0

    def report(self, plan: Plan, results: Results) -> Section:
        res = self.flood
        if res is None:
            return Section(
                "P6 memory during a flood", lines=[f"FAILED: {self.error}"], figure="P6=n/a"
            )
        warm = warm_up_seconds(res, 2, 64)
        table, growing = traces_table(res.traces, warm)
        title = (
            f"P6 memory (MiB) during a flood of {res.handled:,} x 64 B, 2 workers "
            f"({res.rate:,.0f} msg/s over {res.seconds:.0f} s); the first sample after a "
            f"{warm:.1f} s warm-up (every ring page written twice) against the last"
        )
        lines = []
        if res.handled < FLOOD[plan.quick] and not plan.args.flood:
            lines.append(
                f"(the flood was capped from {FLOOD[plan.quick]:,} to fit the time budget)"
            )
        verdict = "growing" if growing else "flat"
        if res.seconds < 2 * warm:
            lines.append("(the flood was too short for a verdict: run longer, e.g. --flood)")
            verdict = "n/a"
        lines.append(f"P6 memory during the flood = {verdict}")
        return Section(title, [table], lines, f"P6={verdict}")

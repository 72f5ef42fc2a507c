"""The peer bench (issue 16): ugram next to the daemon it would replace, on the same datagrams.

    python bench/peers.py [--quick] [--rounds N] [--count N]
    (the same as ``python bench/run.py peers ...``)

Each round runs, one after the other, fed by the same C sender (``bench/c/sender``):

* syslog, 200-byte RFC 3164 lines (glibc ``syslog(3)``'s local form): rsyslog ``imuxsock`` →
  ``omfile`` with a JSON template (``bench/rsyslog.py``; skipped, and said so, when
  ``rsyslogd`` is not installed: ``apt-get install rsyslog``), then ``ugram serve
  ugram.builtin:LogSink --codec syslog`` with 1 and 2 workers (rotation off, as rsyslog's
  file; fsync as LogSink's default), and with ``--codec raw`` (each line written as text,
  not parsed: what the rest of ugram's path costs, the ceiling of a faster parser). Measured
  from outside (``bench/syslogrun.py``): lines/s until the output file holds every line, CPU
  per line of every process of the server; every line must be written exactly once;
* DogStatsD, one line a datagram (a mix of counters, timers, gauges, sets and sampled
  histograms over 33 series): a raw handler (``bench.handlers:Count``, no decoding) and
  ``StatsdAggregator --codec statsd`` (``bench.peer_handlers:CountingAggregator``), 2
  workers each; the aggregator's totals must hold every line, and exactly the counter sums,
  set members and histogram counts that were sent.

It prints (medians of per-round ratios; a run that failed a check is FAILED, not a figure):

* L1 syslog lines/s, ugram 2 workers ÷ rsyslog (goal ≥ 1.5);
* L2 server CPU per syslog line, ugram 2 workers ÷ rsyslog (goal ≤ 1.0);
* L3 DogStatsD lines/s, the aggregator with 2 workers ÷ the raw handler (goal ≥ 0.7);
* L4 parse cost per line ÷ msgspec JSON decode of a same-size object (goal ≤ 1.5), from
  ``bench/parse.py`` when it exists (run as ``python bench/parse.py``; its ``L4`` lines).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import re  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import msgspec  # noqa: E402

from bench.measure import Context, Results, progress  # noqa: E402
from bench.plan import Plan, Scenario, Section, paired_ratio  # noqa: E402
from bench.procs import BenchError, python_env, socket_dir  # noqa: E402
from bench.rsyslog import INSTALL_HINT, RsyslogSetup, rsyslogd  # noqa: E402
from bench.server import ServerSpec, UgramResult, run_ugram, server_env  # noqa: E402
from bench.syslogrun import SinkSample, run_syslog_server  # noqa: E402
from bench.table import Row, Table, fmt_ratio, median_of, rate, us  # noqa: E402

SYSLOG_SIZE = 200
COUNT = {False: 300_000, True: 50_000}  # lines per run, keyed by quick
SINK = "ugram.builtin:LogSink"
AGGREGATOR = "bench.peer_handlers:CountingAggregator"
RSYSLOG = "rsyslog imuxsock→omfile (JSON)"
PARSE_TIMEOUT = 600
L4_FIGURE = re.compile(r"= *([0-9.]+)")

RAW, AGG = "raw handler, 2 workers", "StatsdAggregator, 2 workers"
Measure = Callable[[], Any]


def sink_label(workers: int, codec: str = "syslog") -> str:
    label = f"ugram LogSink, {workers} worker{'s' if workers > 1 else ''}"
    return label if codec == "syslog" else f"{label}, --codec {codec} (no parsing)"


GOALS = (  # name, what, numerator, denominator, the figure, the goal
    ("L1", "syslog lines/s", sink_label(2), RSYSLOG, "rate", "goal ≥ 1.5"),
    ("L2", "server CPU µs per syslog line", sink_label(2), RSYSLOG, "cpu_us", "goal ≤ 1.0"),
    ("L3", "DogStatsD lines/s", AGG, RAW, "rate", "goal ≥ 0.7"),
)


def measure_rsyslog(executable: str, count: int) -> SinkSample:
    """One rsyslog run (see ``bench/rsyslog.py``)."""
    with socket_dir() as tmp:
        setup = RsyslogSetup(tmp)
        setup.write_config()
        return run_syslog_server(
            setup.command(executable),
            setup.socket,
            setup.output,
            count,
            SYSLOG_SIZE,
            log=Path(tmp, "log"),
            what="rsyslog",
        )


def measure_sink(ctx: Context, workers: int, count: int, codec: str = "syslog") -> SinkSample:
    """One run of ``ugram serve ugram.builtin:LogSink --codec CODEC`` with ``workers``."""
    spec = ServerSpec(SINK, workers, codec, ugram_path=ctx.tree(""))
    with socket_dir() as tmp:
        output, sock = str(Path(tmp, "out.jsonl")), str(Path(tmp, "s"))
        env = server_env(tmp, spec.ugram_path)
        env.update(UGSINK_PATH=output, UGSINK_MAX_BYTES="0")
        return run_syslog_server(
            spec.command(sock),
            sock,
            output,
            count,
            SYSLOG_SIZE,
            env=env,
            cwd=spec.ugram_path or str(ROOT),
            log=Path(tmp, "log"),
            what=sink_label(workers, codec),
        )


def measure_statsd(ctx: Context, handler: str, count: int) -> UgramResult:
    """One run of ``handler`` (2 workers) on DogStatsD lines; the aggregator's totals checked."""
    with socket_dir() as tmp:
        directory = str(Path(tmp, "statsd"))
        codec = "statsd" if handler == AGGREGATOR else "raw"
        env = (("UGSTATSD_DIR", directory),)
        spec = ServerSpec(handler, 2, codec, ugram_path=ctx.tree(""), env=env)
        result = run_ugram(spec, count, 0, payload="statsd", timeout=300.0)
        if handler == AGGREGATOR:
            check_totals(Path(directory, "totals.json"), count)
        return result


def expected_totals(count: int) -> dict[str, Any]:
    """What the sender's ``count`` DogStatsD lines add up to (``bench/c/sender.c``)."""
    kinds = [sum(1 for seq in range(kind, count, 5)) for kind in range(5)]
    return {
        "lines": count,
        "counter_sum": float(kinds[0]),  # every counter line is 1, sample rate 1
        "members": {f"u{seq % 1000}" for seq in range(3, count, 5)},
        "histogram_count": 2.0 * kinds[4],  # each histogram line weighs 1 / 0.5
        "timer_count": float(kinds[1]),
    }


def check_totals(path: Path, count: int) -> None:
    """The aggregator's ``totals.json`` holds exactly what was sent.

    Raises:
        BenchError: it does not (or cannot be read).
    """
    try:
        totals = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        raise BenchError(f"statsd totals unreadable: {exc}") from None
    found = {
        "lines": totals["lines"],
        "counter_sum": sum(c["value"] for c in totals["counters"]),
        "members": {m for s in totals["sets"] for m in s["members"]},
        "histogram_count": sum(h["count"] for h in totals["histograms"]),
        "timer_count": sum(t["count"] for t in totals["timers"]),
    }
    want = expected_totals(count)
    refused = totals["invalid_lines"] + totals["refused_lines"] + totals["refused_series"]
    wrong = [key for key in want if found[key] != want[key]]
    if wrong or refused:
        detail = ", ".join(f"{k}: {_short(found[k])} (sent {_short(want[k])})" for k in wrong)
        raise BenchError(f"statsd totals differ from what was sent: {detail}; refused {refused}")


def _short(value: Any) -> str:
    return f"{len(value)} members" if isinstance(value, set) else f"{value:,}"


def parse_figures() -> list[str]:
    """The ``L4`` lines of ``bench/parse.py`` (the parsers' own bench), [] without it."""
    script = Path(__file__).with_name("parse.py")
    if not script.exists():
        return []
    progress("L4: python bench/parse.py")
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=PARSE_TIMEOUT,
            env=python_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [f"L4: bench/parse.py did not finish in {PARSE_TIMEOUT} s"]
    lines = [line for line in done.stdout.splitlines() if line.startswith("L4")]
    return lines or [f"L4: bench/parse.py printed no L4 line (exit {done.returncode})"]


class Peers(Scenario):
    name = "peers"
    summary = "L1-L3: ugram LogSink vs rsyslog (syslog), the statsd aggregator vs a raw handler"
    default = False

    def __init__(self) -> None:
        self.samples: dict[str, list[Any]] = {}
        self.errors: dict[str, str] = {}
        self.rsyslogd = rsyslogd()
        self.l4: list[str] = []
        self.count = 0

    def measurements(self, ctx: Context) -> list[tuple[str, Measure]]:
        """What each round measures, in order: (label, how)."""
        n, runs = self.count, []
        if self.rsyslogd is not None:
            runs.append((RSYSLOG, lambda exe=self.rsyslogd: measure_rsyslog(exe, n)))
        for workers in (1, 2):
            runs.append((sink_label(workers), lambda w=workers: measure_sink(ctx, w, n)))
        raw = sink_label(1, "raw")
        runs.append((raw, lambda: measure_sink(ctx, 1, n, "raw")))
        runs.append((RAW, lambda: measure_statsd(ctx, "trivial", n)))
        runs.append((AGG, lambda: measure_statsd(ctx, AGGREGATOR, n)))
        return runs

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        self.count = plan.args.count or COUNT[plan.quick]
        runs = self.measurements(ctx)
        for number in range(1, plan.rounds + 1):
            for label, measure in runs:
                if label in self.errors:
                    continue
                progress(f"peers round {number}/{plan.rounds}: {label}")
                try:
                    self.samples.setdefault(label, []).append(measure())
                except (BenchError, OSError) as exc:
                    self.errors[label] = str(exc).strip()
                    print(f"FAILED peers {label}: {exc}", file=sys.stderr, flush=True)
        self.l4 = parse_figures()

    def values(self, label: str, field: str) -> list[float]:
        """``field`` of every round's sample of ``label`` ([] if it failed)."""
        if label in self.errors:
            return []
        return [getattr(s, field) for s in self.samples.get(label, [])]

    def row(self, label: str, case: str, base: Row | None, extras: list[str]) -> Row:
        values = self.values(label, "rate")
        return Row(case, label, values, base, extras, self.errors.get(label))

    def syslog_table(self) -> Table:
        table = Table("lines/s", ["CPU µs/line", "processes"])
        case = f"syslog {SYSLOG_SIZE} B"
        rows: list[Row] = []
        base = None
        if self.rsyslogd is not None:
            base = self.row(RSYSLOG, case, None, self.syslog_extras(RSYSLOG))
            rows.append(base)
        for label in (sink_label(1), sink_label(2), sink_label(1, "raw")):
            rows.append(self.row(label, case, base, self.syslog_extras(label)))
        table.rows = rows
        return table

    def syslog_extras(self, label: str) -> list[str]:
        processes = self.values(label, "processes")
        return [
            us(median_of(self.values(label, "cpu_us"))),
            str(max(processes)) if processes else "-",
        ]

    def statsd_table(self) -> Table:
        table = Table("lines/s", ["recv CPU µs", "workers CPU µs"])
        base = self.row(RAW, "DogStatsD", None, self.statsd_extras(RAW))
        table.rows = [base, self.row(AGG, "DogStatsD", base, self.statsd_extras(AGG))]
        return table

    def statsd_extras(self, label: str) -> list[str]:
        return [
            us(median_of(self.values(label, "receiver_us"))),
            us(median_of(self.values(label, "worker_us"))),
        ]

    def goals(self) -> tuple[list[str], dict[str, float | None]]:
        """The L1-L3 lines, and each ratio by name."""
        lines: list[str] = []
        ratios: dict[str, float | None] = {}
        for name, what, num, den, field, target in GOALS:
            r = paired_ratio(self.values(num, field), self.values(den, field))
            fmt = us if field == "cpu_us" else rate
            a, b = (fmt(median_of(self.values(label, field))) for label in (num, den))
            lines.append(f"{name} {what}: {num} ({a}) ÷ {den} ({b}) = {fmt_ratio(r)} ({target})")
            ratios[name] = r
        if self.rsyslogd is None:
            lines.insert(0, f"rsyslog: skipped, rsyslogd is not installed ({INSTALL_HINT})")
        return lines, ratios

    def report(self, plan: Plan, results: Results) -> Section:
        title = (
            f"Peers: {self.count:,} lines a run, the same C sender; syslog: until the output "
            "file holds every line, CPU of every process of the server; DogStatsD: one line "
            "a datagram, until the last line handled (every line checked, see bench/peers.py)"
        )
        lines, ratios = self.goals()
        lines += self.l4 or ["L4: bench/parse.py is not there yet (the parsers' bench prints it)"]
        figure = " ".join(f"{k}={fmt_ratio(v)}" for k, v in ratios.items())
        figure += " L4=" + (",".join(_l4_values(self.l4)) or "n/a")
        return Section(title, [self.syslog_table(), self.statsd_table()], lines, figure)

    def failures(self) -> int:
        return len(self.errors)


def _l4_values(lines: Sequence[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := L4_FIGURE.search(line))]


if __name__ == "__main__":
    from bench import run

    sys.exit(run.main(["peers", *sys.argv[1:]]))

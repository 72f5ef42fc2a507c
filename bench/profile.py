"""Where the time goes: py-spy (and, with ``--perf``, ``perf record``) on ugram's receiver and
workers during a flood.

Starts ugram with ``--handler`` (``--size``, ``--workers``), floods it with the C sender,
waits one second, then samples the receiver and every worker with ``py-spy record
--nonblocking`` in parallel for ``--seconds``. Prints each process's CPU use over the
window (the table), then per process the top lines (self time) and functions (inclusive
time); py-spy's idle detection misses some waits, so trust the CPU figure. ``--perf`` adds a
``perf record -g`` window for the kernel side (syscalls, wake-ups), which py-spy cannot see.
Raw stacks and perf data are kept in ``--out``. ``--payload syslog`` or ``statsd`` sends what
the peer bench sends, for the built-ins (``--handler bench.peer_handlers:ReadySink --codec
syslog --payload syslog --size 200``: LogSink). Needs ``py-spy`` (``pip install py-spy``),
``perf`` for ``--perf``, and permission to ptrace the children (root).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from bench.measure import Context, Results
from bench.plan import Plan, Scenario, Section
from bench.procs import cpu_seconds, kill_all
from bench.senders import Payload, start_flood
from bench.server import ServerSpec, ugram_server
from bench.table import Row, Table, size_label

RATE = 250  # samples per second
FLOOD = 1_000_000_000  # more than any window needs; the sender is killed at the end
TOP = 12


def py_spy() -> str | None:
    """The py-spy executable: next to this Python (a venv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(exe: str, pids: dict[str, int], seconds: float, out: Path) -> dict[str, Path]:
    """Run one ``py-spy record`` per process in parallel; return the raw output per role."""
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    for role, pid in pids.items():
        path = out / f"{role.replace(' ', '')}.txt"
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds))]
        cmd += ["--rate", str(RATE), "--format", "raw", "--output", str(path), "--nonblocking"]
        procs.append((role, subprocess.Popen(cmd, stdout=subprocess.DEVNULL), path))
    results: dict[str, Path] = {}
    for role, proc, path in procs:
        if proc.wait(timeout=seconds + 30) == 0 and path.exists():
            results[role] = path
        else:
            print(f"py-spy failed on {role} (exit {proc.returncode})", file=sys.stderr)
    return results


def summarize(path: Path, seconds: float) -> list[str]:
    """Top lines by self samples and top functions by inclusive samples."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            frames = stack.split(";")
            self_time[frames[-1]] += int(count_text)
            for function in {frame.rsplit(":", 1)[0] + ")" for frame in frames}:
                inclusive[function] += int(count_text)
    total = sum(self_time.values())
    if not total:
        return ["  (no samples: the process was idle)"]
    busy = total / (seconds * RATE) * 100
    lines = [f"  {total} samples, running Python {busy:.0f}% of wall time", "  self (by line):"]
    lines += [f"    {n / total * 100:5.1f}%  {frame}" for frame, n in self_time.most_common(TOP)]
    lines.append("  inclusive (by function):")
    for function, n in inclusive.most_common(TOP + 6):
        if not ("<module>" in function or "_run_" in function or function.startswith("main ")):
            lines.append(f"    {n / total * 100:5.1f}%  {function}")
    return lines


def perf_record(pids: dict[str, int], seconds: float, out: Path) -> dict[str, list[str]]:
    """``perf record`` each process (kernel included) for ``seconds``; top symbols per role."""
    procs = []
    for role, pid in pids.items():
        data = out / f"{role.replace(' ', '')}.perf"
        cmd = ["perf", "record", "-F", "999", "-g", "-o", str(data), "-p", str(pid)]
        cmd += ["--", "sleep", str(seconds)]
        procs.append((role, data, subprocess.Popen(cmd, stderr=subprocess.DEVNULL)))
    tops: dict[str, list[str]] = {}
    for role, data, proc in procs:
        proc.wait(timeout=seconds + 30)
        tops[role] = perf_top(data, "dso", 4) + perf_top(data, "dso,sym", TOP)
    return tops


def perf_top(data: Path, sort: str, limit: int) -> list[str]:
    """The first ``limit`` lines of ``perf report --sort SORT`` (self time)."""
    cmd = ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio"]
    report = subprocess.run(
        [*cmd, "-g", "none", "--percent-limit", "1.5"], capture_output=True, text=True, check=False
    )
    lines = [ln.rstrip() for ln in report.stdout.splitlines() if ln.strip()[:1].isdigit()]
    return lines[:limit] or [f"(perf report failed: {report.stderr.strip()[:200]})"]


class Profile(Scenario):
    name = "profile"
    summary = "py-spy (and --perf: perf) on the receiver and workers during a flood"
    default = False

    def __init__(self) -> None:
        self.note = ""
        self.cpu: dict[str, float] = {}
        self.listings: list[str] = []

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        exe = py_spy()
        if exe is None:
            self.note = "FAILED: the profile needs py-spy (pip install py-spy)"
            return
        a = plan.args
        out = Path(a.out or tempfile.mkdtemp(prefix="ugram-profile-"))
        out.mkdir(parents=True, exist_ok=True)
        spec = ServerSpec(a.handler, a.workers, a.codec, tuple(a.flag), ctx.tree(""))
        payload: Payload = a.payload or (
            "json" if a.handler == "json" or a.codec == "json" else "raw"
        )
        with ugram_server(spec) as srv:
            sender = start_flood(srv.path, FLOOD, a.size, payload=payload)
            try:
                time.sleep(1.0)
                others = {"supervisor": srv.proc.pid, "sender": sender.pid}
                self.sample(exe, srv.pids(), others, out, a)
            finally:
                kill_all([sender])
        self.listings.append(f"raw stacks: {out}")

    def sample(
        self, exe: str, pids: dict[str, int], others: dict[str, int], out: Path, a: Namespace
    ) -> None:
        """CPU use of every process over the window, and each ugram process's listing."""
        every, seconds = {**pids, **others}, a.seconds
        before, t0 = {r: cpu_seconds(p) for r, p in every.items()}, time.monotonic()
        raws = record(exe, pids, seconds, out)
        span = time.monotonic() - t0
        self.cpu = {r: (cpu_seconds(p) - before[r]) / span * 100 for r, p in every.items()}
        perf = perf_record(pids, seconds, out) if a.perf else {}
        for role, path in sorted(raws.items()):
            self.listings += ["", f"{role} (pid {pids[role]}):", *summarize(path, seconds)]
            if role in perf:
                self.listings.append("  perf, kernel included (self, by library, then by symbol):")
                self.listings += [f"    {line}" for line in perf[role]]

    def report(self, plan: Plan, results: Results) -> Section:
        a = plan.args
        what = f"{a.handler}, {a.workers} worker(s), {size_label(a.size)}"
        title = f"Profile: ugram {what}, a {a.seconds:.0f} s window"
        if self.note:
            return Section(title, lines=[self.note], figure="profile=n/a")
        table = Table("CPU %", [])
        case = f"{a.handler} {size_label(a.size)}"
        table.rows = [Row(case, role, [cpu]) for role, cpu in sorted(self.cpu.items())]
        figure = ",".join(f"{r.replace(' ', '')}:{c:.0f}%" for r, c in sorted(self.cpu.items()))
        return Section(title, [table], self.listings, f"profile={figure}")

    def failures(self) -> int:
        return 1 if self.note else 0

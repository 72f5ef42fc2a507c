"""Where the time goes: py-spy on ugram's receiver and workers during a flood.

    python bench/hotspots.py [--handler trivial|json|cpu] [--size 64] [--workers 1]
                            [--seconds 8] [--ugram-path DIR] [--out DIR]

Starts ugram with a bench handler, floods it with the C sender, waits one second, then samples
the receiver and every worker with ``py-spy record --nonblocking`` (in parallel) for
``--seconds``. Prints, per process, its CPU use over the window, the share of wall time py-spy
found it running (its idle detection misses some waits: trust the CPU figure), and the top
lines (self time) and functions (inclusive time). With ``--perf``, a second window with
``perf record -g`` shows the kernel side (syscalls, wake-ups, context switches), which py-spy
cannot see. Raw stacks and perf data are kept in ``--out``. Needs ``py-spy`` (``pip install
py-spy``), ``perf`` for ``--perf``, and permission to ptrace the children (root).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import collections  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402

from bench.baselines import kill_all, start_senders  # noqa: E402
from bench.harness import BenchError, ugram_server, ugram_snapshot  # noqa: E402

HANDLERS = {
    "trivial": ("bench.handlers:Count", "raw"),
    "json": ("bench.handlers:JsonStruct", "json"),
    "cpu": ("bench.handlers:CpuCount", "raw"),
}
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
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[frames[-1]] += count
        for function in {frame.rsplit(":", 1)[0] + ")" for frame in frames}:
            inclusive[function] += count
    if not total:
        return ["  (no samples: the process was idle)"]
    busy = total / (seconds * RATE) * 100
    lines = [f"  {total} samples, running Python {busy:.0f}% of wall time", "  self (by line):"]
    for frame, count in self_time.most_common(TOP):
        lines.append(f"    {count / total * 100:5.1f}%  {frame}")
    lines.append("  inclusive (by function):")
    for function, count in inclusive.most_common(TOP + 6):
        if "<module>" in function or "_run_" in function or function.startswith("main "):
            continue
        lines.append(f"    {count / total * 100:5.1f}%  {function}")
    return lines


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far."""
    result: dict[str, float] = {}
    for role, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            result[role] = times.user + times.system
        except psutil.Error:
            result[role] = 0.0
    return result


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


def profile(args: argparse.Namespace, exe: str, out: Path) -> None:
    spec, codec = HANDLERS[args.handler]
    json_payload = args.handler == "json"
    perf: dict[str, list[str]] = {}
    with ugram_server(spec, args.workers, codec=codec, ugram_path=args.ugram_path) as srv:
        senders = start_senders(srv.path, FLOOD, args.size, 1, json_payload=json_payload)
        try:
            time.sleep(1.0)
            pids = srv.pids()
            others = {"supervisor": srv.proc.pid, "sender": senders[0].pid}
            before, t0 = cpu_seconds({**pids, **others}), time.monotonic()
            raws = record(exe, pids, args.seconds, out)
            after, span = cpu_seconds({**pids, **others}), time.monotonic() - t0
            if args.perf:
                perf = perf_record(pids, args.seconds, out)
        finally:
            kill_all(senders)
    print(f"ugram {spec}, {args.workers} worker(s), {args.size} B, {args.seconds:.0f} s window")
    cpu = {role: (after[role] - before[role]) / span * 100 for role in after}
    print("CPU: " + ", ".join(f"{role} {value:.0f}%" for role, value in sorted(cpu.items())))
    for role, path in sorted(raws.items()):
        print(f"\n{role} (pid {pids[role]}): CPU {cpu[role]:.0f}%")
        print("\n".join(summarize(path, args.seconds)))
        if role in perf:
            print("  perf, kernel included (self, by library, then by symbol):")
            print("\n".join(f"    {line}" for line in perf[role]))
    print(f"\nraw stacks: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="trivial")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--ugram-path", help="directory put first on the server's PYTHONPATH")
    parser.add_argument("--ugram-rev", help="measure ugram/ as committed at this git revision")
    parser.add_argument("--out", help="directory for the raw stacks (default: a new temp dir)")
    parser.add_argument(
        "--perf", action="store_true", help="then a perf record window too (kernel time)"
    )
    args = parser.parse_args(argv)
    if args.ugram_rev:
        args.ugram_path = ugram_snapshot(args.ugram_rev)
    exe = py_spy()
    if exe is None:
        print("bench/hotspots.py needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="ugram-hotspots-"))
    os.makedirs(out, exist_ok=True)
    try:
        profile(args, exe, out)
    except BenchError as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

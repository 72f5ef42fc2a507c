"""P1-P3 with a longer socket queue: the same runs inside ``unshare -n`` with
``net.unix.max_dgram_qlen=512`` (the default 10 caps every receiver; the setting belongs
to the network namespace). Needs root; the child is this runner with ``--netns-child``,
which measures the configs over the same rounds and prints them as one JSON line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.measure import Config, Context, Results, progress, run_rounds
from bench.plan import Plan, Scenario, Section, throughput_table
from bench.procs import stop
from bench.scenarios import p1, p2, p3
from bench.table import fmt_ratio

QLEN = 512
TIMEOUT = 600.0
RUNNER = Path(__file__).resolve().parent / "run.py"
MARK = "NETNS "


def pairs(plan: Plan) -> list[tuple[Config, Config | None]]:
    """P1-P3's configs, each with the baseline it is divided by."""
    mmsg, plain64 = plan.cfg("c-mmsg", "trivial", 64), plan.cfg("c-plain", "trivial", 64)
    py64, py_json = plan.cfg("blocking", "trivial", 64), plan.cfg("blocking", "json", 1024)
    return [
        (mmsg, None),
        (plain64, mmsg),
        (py64, plain64),
        (plan.ugram("trivial", 64, 1), py64),
        (plan.ugram("trivial", 64, 2), py64),
        (plan.cfg("c-plain", "trivial", 1024), None),
        (py_json, None),
        (plan.cfg("asyncio", "json", 1024), py_json),
        (plan.ugram("json", 1024, 1), py_json),
    ]


def child_main(plan: Plan, ctx: Context) -> None:
    """Inside the namespace: measure every config over the rounds, print one JSON line."""
    results = Results()
    run_rounds([cfg for cfg, _ in pairs(plan)], plan.rounds, ctx, results)
    print(MARK + json.dumps(results.to_json()), flush=True)


def child_command(plan: Plan, ctx: Context) -> list[str]:
    script = f'sysctl -qw net.unix.max_dgram_qlen={QLEN} && exec "$@"'
    cmd = ["unshare", "-n", "--", "sh", "-c", script, "sh", sys.executable, str(RUNNER)]
    cmd += ["--netns-child", f"--rounds={plan.rounds}", *(["--quick"] if plan.quick else [])]
    if plan.args.count:
        cmd.append(f"--count={plan.args.count}")
    if ctx.ugram_path:
        cmd.append(f"--ugram-path={ctx.ugram_path}")
    return cmd


class Netns(Scenario):
    name = "netns"
    summary = f"P1-P3 inside unshare -n with net.unix.max_dgram_qlen={QLEN} (root only)"

    def __init__(self) -> None:
        self.results: Results | None = None
        self.note = ""

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            self.note = "skipped: needs root and unshare(1)"
            return
        progress(f"unshare -n with net.unix.max_dgram_qlen={QLEN}")
        proc = subprocess.Popen(child_command(plan, ctx), stdout=subprocess.PIPE, text=True)
        try:
            out, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.note = f"failed: no result within {TIMEOUT:.0f} s"
            return
        finally:
            stop(proc)
        for line in out.splitlines():
            if line.startswith(MARK):
                self.results = Results.from_json(json.loads(line[len(MARK) :]))
                return
        self.note = f"skipped: unshare -n failed (exit {proc.returncode})"

    def report(self, plan: Plan, results: Results) -> Section:
        title = f"unshare -n, net.unix.max_dgram_qlen={QLEN}"
        got = self.results
        if got is None:
            return Section(title, lines=[self.note], figure=f"qlen{QLEN}:n/a")
        lines: list[str] = []
        ratios: list[str] = []
        for goal in (p1, p2, p3):
            line, r = goal(plan, got)
            lines.append(line)
            ratios.append(f"P{len(ratios) + 1}={fmt_ratio(r)}")
        table = throughput_table(got, pairs(plan))
        return Section(title, [table], lines, f"qlen{QLEN}:" + ",".join(ratios))

    def failures(self) -> int:
        return len(self.results.errors) if self.results else 0

"""``python bench/run.py statsd-export``: issue #17's bench (``bench/statsd_export.py``) as a
scenario of the one runner, so that a run of several scenarios can include it.

The bench keeps its own rounds (interleaved: the exposition with 1 and 2 workers, the
JSON-lines output, a plain single-process Python aggregator) and its own sender; this
scenario runs it as a child process with the runner's ``--rounds`` (and ``--count`` as its
``--datagrams``) and prints its table, its scrape times and its headline as the section's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.measure import Context, Results, progress
from bench.plan import Plan, Scenario, Section

SCRIPT = Path(__file__).with_name("statsd_export.py")
# "headline: exposition 1 worker 115819 lines/s = 0.30 x the plain ...; scrape 100k series 395 ms"
HEADLINE = re.compile(r"= ([0-9.]+) x .*scrape 100k series ([0-9]+) ms")
TIMEOUT = 1800  # seconds: 3 rounds of 4 cases and two scrapes take a few minutes


class StatsdExport(Scenario):
    name = "statsd-export"
    summary = "issue 17: DogStatsD lines/s into the exposition and jsonl, scrape times"
    default = False

    def __init__(self) -> None:
        self.output: list[str] = []
        self.error = ""

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        command = [sys.executable, str(SCRIPT), "--rounds", str(plan.rounds)]
        if plan.args.count:
            command += ["--datagrams", str(plan.args.count)]
        progress("statsd-export: python bench/statsd_export.py")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.error = f"bench/statsd_export.py did not finish in {TIMEOUT} s"
            return
        self.output = done.stdout.splitlines()
        if done.returncode != 0:
            self.error = f"bench/statsd_export.py exited {done.returncode}: {done.stderr[-500:]}"

    def report(self, plan: Plan, results: Results) -> Section:
        title = "statsd exposition (bench/statsd_export.py): lines/s, then scrape times"
        body = [line for line in self.output if not line.startswith("headline:")]
        headline = next((line for line in self.output if line.startswith("headline:")), "")
        lines = [*body, f"FAILED: {self.error}"] if self.error else body
        found = HEADLINE.search(headline)
        figure = f"{found[1]}x,scrape100k={found[2]}ms" if found else "n/a"
        return Section(title, [], lines, f"statsd-export={figure}")

    def failures(self) -> int:
        return 1 if self.error else 0

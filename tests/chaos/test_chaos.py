"""The chaos soak (issue #13): a flood from four senders carrying sequence numbers while a
seeded schedule kills, stops and resumes workers and the receiver, reloads (once with a
handler that cannot import, then fixed), scales the pool up and down and recycles workers by
record count and by memory, and ends with SIGTERM mid-flood. Then every promise is checked:
nothing accepted is lost, duplicates stay within one per death, each worker sees each
sender's records in order, the counters add up, exit code 0, the socket file is gone.

CI runs a few fixed seeds briefly; ``--chaos-seconds 60`` runs longer and ``--chaos-seed S``
replays one seed. A failure prints the seed, the plan and what was done when.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chaos.audit import Outcome, check, dead_letters, read_records
from tests.chaos.inject import Injector, Progress
from tests.chaos.schedule import WORKERS, Plan, make_plan
from tests.conftest import APPS, Server, child_env, run_server, wait_for
from ugram import control
from ugram.errors import UgramError

pytestmark = pytest.mark.chaos

# Four senders, s0 s1 s4 s5: with --route-by s their names spread over 2, 3 and 4 workers
# (CRC-32 of the value: see ugram/receiver/routing.py), so that every worker has work.
SENDERS = (0, 1, 4, 5)
# Checks that fail because of a known, reported defect: name -> reason. Empty: none known.
KNOWN: dict[str, str] = {}


def test_chaos_soak(
    sock_dir: Path, out_dir: Path, tmp_path: Path, chaos_seed: int, chaos_seconds: float
) -> None:
    plan = make_plan(chaos_seed, chaos_seconds)
    path, flag, dead = sock_dir / "s.sock", sock_dir / "broken", sock_dir / "dead.jsonl"
    env = child_env(
        out_dir,
        UGCHAOS_BROKEN=str(flag),
        UGCHAOS_LEAK=str(plan.leak),
        UGCHAOS_MAX_RSS=str(plan.max_rss),
        UGCHAOS_WORK_US=str(plan.work_us),
    )
    args = [*plan.server_args(), "--dead-letter", str(dead)]
    with run_server("chaosapp:Recorder", path, *args, env=env) as server:
        injector = Injector(plan, server, flag)
        senders: list[subprocess.Popen[str]] = []
        try:
            wait_for(lambda: _all_running(server), what="the workers to run")
            senders = _start_senders(path, plan.seconds + 300)
            with Progress(server) as progress:
                injector.run()
            sigterm_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            injector.note("SIGTERM")
            exit_code = server.proc.wait(180)
            injector.finish()
            results = {
                i: json.loads(s.communicate(timeout=60)[0])
                for i, s in zip(SENDERS, senders, strict=True)
            }
        except BaseException:
            _report(plan, injector, server, {"run": "the run itself failed"}, tmp_path)
            raise
        finally:
            for sender in senders:
                with contextlib.suppress(ProcessLookupError):
                    sender.kill()
                sender.wait()
    outcome = Outcome(
        exit_code=exit_code,
        socket_left=path.exists() or Path(control.control_path(str(path))).exists(),
        senders=results,
        sigterm_at=sigterm_at,
        summary=_summary(server),
        stderr=server.stderr,
        done=dict(injector.done),
        records=read_records(out_dir, {i: int(r["sent"]) for i, r in results.items()}),
        letters=dead_letters(dead),
        receive_batch=plan.receive_batch,
        max_records=plan.max_records,
        stall=progress.longest_stall(),
        reload_seconds=injector.reload_seconds,
    )
    print(f"chaos seed {plan.seed} ({plan.seconds:g}s): {outcome.figures()}")
    failed = check(outcome)
    _report(plan, injector, server, failed, tmp_path, outcome)  # shown on failure, or with -s
    if failed:
        known = set(failed) <= set(KNOWN)
        message = "; ".join(f"{name}: {why}" for name, why in failed.items())
        if known:
            pytest.xfail(f"known defect(s): {[KNOWN[n] for n in failed]}: {message}")
        pytest.fail(f"chaos seed {plan.seed}: {message}")


def _all_running(server: Server) -> bool:
    if server.proc.poll() is not None:
        pytest.fail(f"the server exited: {server.stderr[-3000:]}")
    try:
        report = control.fetch(str(server.path))
    except UgramError:
        return False
    running = [w for w in report.workers if w.state == "running"]
    return len(running) == WORKERS and report.receiver.state == "running"


def _start_senders(path: Path, seconds: float) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, str(APPS / "chaos_sender.py"), str(path), f"s{i}", str(seconds)],
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in SENDERS
    ]


def _summary(server: Server) -> dict[str, int]:
    match = re.search(r"stopped: (.*)", server.stderr)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))} if match else {}


def _report(
    plan: Plan,
    injector: Injector,
    server: Server,
    failed: dict[str, str],
    keep: Path,
    outcome: Outcome | None = None,
) -> None:
    """Print what is needed to understand and replay a run (pytest shows it on failure)."""
    print(plan.describe())
    print("what was done:")
    print("\n".join(f"  {line}" for line in injector.journal))
    if outcome is not None:
        print(f"figures: {outcome.figures()}")
    log = keep / "server.stderr"
    log.write_text(server.stderr)
    print(f"server log: {log}")
    if failed:
        print("failed checks:")
        print("\n".join(f"  {name}: {why}" for name, why in failed.items()))
        print("server log (the last 6000 characters):")
        print(server.stderr[-6000:])

"""A bounded soak: a steady flood while workers and the receiver are killed, the handler is
reloaded and the pool grows and shrinks — and not one datagram is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import APPS, child_env, read_records, run_server
from tests.integration.test_faults import children, running_workers

SECONDS = float(os.environ.get("UGTEST_SOAK_SECONDS", "10"))


@pytest.mark.slow
def test_soak_flood_kills_reloads_scaling_lose_nothing(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    rng = random.Random(2026)
    kills = 0
    with run_server(
        "seqrec:Recorder", path, "--workers", "2", "--max-workers", "4", out_dir=out_dir
    ) as server:
        pid = server.proc.pid
        senders = [
            subprocess.Popen(
                [sys.executable, str(APPS / "timed_sender.py"), str(path), f"s{i}", str(SECONDS)],
                env=child_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        try:
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                time.sleep(rng.uniform(0.5, 1.5))
                kills += chaos(rng, pid)
            counts = [int(s.communicate(timeout=120)[0]) for s in senders]
        finally:
            for sender in senders:
                sender.kill()
        assert server.stop(timeout=120) == 0, server.stderr[-3000:]
    records = read_records(out_dir)
    sent = {f"s{i}:{seq}" for i, count in enumerate(counts) for seq in range(count)}
    missing = sent - set(records)
    duplicates = sum(n - 1 for n in Counter(records).values())
    print(f"soak: sent={len(sent)} kills={kills} duplicates={duplicates}")
    assert not missing, sorted(missing)[:10]
    assert set(records) <= sent
    assert duplicates <= kills  # at most the record each killed process had in hand


def chaos(rng: random.Random, pid: int) -> int:
    """One random fault or operation; returns 1 if it killed a process."""
    action = rng.choice(["kill_worker", "kill_receiver", "hup", "ttin", "ttou"])
    if action == "kill_worker":
        workers = running_workers(pid)
        if workers:
            rng.choice(workers).kill()
            return 1
    elif action == "kill_receiver":
        receivers = children(pid, "receiver")
        if receivers:
            receivers[0].kill()
            return 1
    else:
        os.kill(pid, {"hup": signal.SIGHUP, "ttin": signal.SIGTTIN, "ttou": signal.SIGTTOU}[action])
    return 0

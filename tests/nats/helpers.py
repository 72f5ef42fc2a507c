"""Running ugram's forwarding sink against the servers of conftest.py, and checking streams."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import APPS, child_env
from tests.nats.conftest import Stored, free_port

_SENDERS: list[subprocess.Popen[str]] = []


def forward_env(urls: list[str], stream: str, **options: str) -> dict[str, str]:
    """The environment of a ugram serving Forward: ``UGFORWARD_*`` from ``options``."""
    env = child_env(
        UGFORWARD_SERVERS=",".join(urls), UGFORWARD_STREAM=stream, UGFORWARD_SUBJECT="t.{s}"
    )
    env.update({f"UGFORWARD_{key.upper()}": value for key, value in options.items()})
    return env


def serve_args(metrics_port: int, *extra: str) -> list[str]:
    """``ugram serve`` options every test uses: json, 2 workers, metrics on ``port``."""
    return ["--codec", "json", "--workers", "2", "--metrics", f"127.0.0.1:{metrics_port}", *extra]


def start_senders(
    path: Path, senders: int, count: int, rate: float = 0, pad: int = 0
) -> list[subprocess.Popen[str]]:
    """``senders`` blocking JSON senders (tests/apps/forward_sender.py), ``s0``, ``s1``, ...,
    each at most ``rate`` a second (0: unlimited), with ``pad`` bytes of padding."""
    sender = [sys.executable, str(APPS / "forward_sender.py"), str(path)]
    procs = [
        subprocess.Popen(
            [*sender, f"s{i}", str(count), str(rate), str(pad)],
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(senders)
    ]
    _SENDERS.extend(procs)
    return procs


def finish_senders(
    procs: list[subprocess.Popen[str]], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Wait for each sender; return what each reported (sent, stalls, longest wait)."""
    reports = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        kill_senders()
    return reports


def kill_senders() -> None:
    """Stop every sender still running (a failed test must not leave them behind)."""
    while _SENDERS:
        proc = _SENDERS.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def check_exactly_once(stored: list[Stored], senders: int, count: int) -> None:
    """Every ``(s, i)`` sent is in the stream exactly once, each under its own message id."""
    seen = Counter((json.loads(m.data)["s"], json.loads(m.data)["i"]) for m in stored)
    duplicates = [key for key, n in seen.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} stored twice, e.g. {duplicates[:5]}"
    expected = {(f"s{s}", i) for s in range(senders) for i in range(count)}
    missing = expected - set(seen)
    assert not missing, f"{len(missing)} missing, e.g. {sorted(missing)[:5]}"
    assert set(seen) == expected
    ids = Counter(m.msg_id for m in stored)
    assert all(ids), "a message without Nats-Msg-Id"
    assert max(ids.values()) == 1, ids.most_common(3)


def metrics(port: int) -> dict[str, float]:
    """The ``ugram_forward_*``, ``ugram_handled_total`` and ``ugram_rejected_total`` samples
    of ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(
            r"(ugram_(?:forward_\w+|handled_total|rejected_total)(?:\{[^}]*\})?) (\S+)$", line
        )
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def healthz(port: int) -> tuple[int, str]:
    """``/healthz``'s status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def workers(pid: int) -> list[psutil.Process]:
    """The live worker processes of the server ``pid``."""
    found = []
    for proc in psutil.Process(pid).children():
        try:
            if "ugram: worker" in " ".join(proc.cmdline()) and proc.status() != "zombie":
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


__all__ = ["free_port"]

"""The load: the C flood sender (``bench/c/sender``) and the paced, time-stamping sender
(``bench/c/paced``), or their Python twins in ``bench.pysend`` when no C compiler exists."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from bench import cbuild
from bench.procs import BenchError, pinned, python_env

BATCH = 64  # datagrams per sendmmsg() of the C flood sender
Payload = Literal["raw", "json", "syslog", "statsd"]
C_ONLY = ("syslog", "statsd")  # payloads only the C sender writes


def sender_kind() -> Literal["C", "Python"]:
    """``C`` when ``bench/c/sender`` can be built, else ``Python`` (the fallback load)."""
    return "C" if cbuild.compiler() is not None else "Python"


def c_binary(name: str) -> Path:
    """A compiled ``bench/c`` program.

    Raises:
        BenchError: no C compiler exists.
    """
    path = cbuild.build(name)
    if path is None:
        raise BenchError(f"bench needs a C compiler to build {name}")
    return path


def start_flood(
    path: str,
    count: int,
    size: int,
    *,
    payload: Payload = "raw",
    start: int = 0,
    cpus: Sequence[int] = (),
) -> subprocess.Popen[str]:
    """Start one sender sending ``count`` datagrams of ``size`` bytes as fast as the socket
    takes them, on ``cpus`` when given. ``payload`` (see ``bench/c/sender.c``): ``raw``, a
    sequence number and padding; ``json``, a JSON record; ``syslog``, an RFC 3164 line;
    ``statsd``, a DogStatsD line of its own length. Sequence numbers start at ``start``.

    Raises:
        BenchError: ``syslog`` or ``statsd`` without a C compiler (only the C sender has them).
    """
    if sender_kind() == "C":
        cmd = [str(c_binary("sender")), path, str(count), str(size), str(BATCH)]
    elif payload in C_ONLY:
        raise BenchError(f"the {payload} load needs a C compiler (bench/c/sender.c)")
    else:
        cmd = [sys.executable, "-m", "bench.pysend", "flood", path, str(count), str(size)]
    if payload != "raw":
        cmd.append(f"--{payload}")
    if start:
        cmd.append(f"--start={start}")
    return subprocess.Popen(pinned(cmd, cpus), stderr=subprocess.PIPE, text=True, env=python_env())


def start_paced(path: str, count: int, size: int, rate: float) -> subprocess.Popen[str]:
    """Start the paced sender: ``count`` datagrams at ``rate``/s, each stamped with its send
    time; it prints ``sent=N seconds=S`` when done (read it with :func:`paced_rate`)."""
    if sender_kind() == "C":
        cmd = [str(c_binary("paced"))]
    else:
        cmd = [sys.executable, "-m", "bench.pysend", "paced"]
    return subprocess.Popen(
        [*cmd, path, str(count), str(size), repr(rate)],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def paced_rate(proc: subprocess.Popen[str]) -> float:
    """The rate the paced sender achieved (from its ``sent=N seconds=S`` line)."""
    out = proc.stdout.read() if proc.stdout else ""
    fields = dict(kv.split("=", 1) for kv in out.split())
    return int(fields["sent"]) / float(fields["seconds"])

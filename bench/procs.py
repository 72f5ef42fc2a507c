"""The child processes of a bench run: starting them (on chosen CPUs), watching, sampling
and killing them, and the scratch directory their socket lives in."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PIN = (
    "import os, sys; os.sched_setaffinity(0, map(int, sys.argv[1].split(',')));"
    " os.execvp(sys.argv[2], sys.argv[2:])"
)
Proc = subprocess.Popen[Any]


class BenchError(RuntimeError):
    """A run failed, timed out, or did not receive exactly what was sent."""


@contextlib.contextmanager
def socket_dir() -> Iterator[str]:
    """A fresh short directory in /tmp for socket files (AF_UNIX paths are <= 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ub", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def python_env() -> dict[str, str]:
    """Environment for Python children: ours (the CPU calibration) plus ``bench`` on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def pinned(cmd: list[str], cpus: Sequence[int] | None) -> list[str]:
    """``cmd`` started with its CPU affinity set to ``cpus`` (as ``taskset -c`` does; children
    inherit it), or ``cmd`` itself when ``cpus`` is None or empty."""
    if not cpus:
        return cmd
    return [sys.executable, "-c", PIN, ",".join(str(cpu) for cpu in cpus), *cmd]


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def unlink_socket(path: str) -> None:
    """Remove ``path`` if it is a socket (never anything else)."""
    if is_socket(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def wait_until(
    done: Callable[[], bool],
    deadline: float,
    *,
    senders: Sequence[Proc] = (),
    watched: Proc | None = None,
    what: str = "the run",
) -> None:
    """Poll until ``done()``; fail fast when a sender fails, ``watched`` exits, or time is up.

    Raises:
        BenchError: a sender exited non-zero, ``watched`` exited, or ``deadline`` passed.
    """
    while not done():
        failed_senders(senders)
        if watched is not None and watched.poll() is not None:
            raise BenchError(f"{what}: exited with {watched.returncode}: {stderr_of(watched)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: did not finish in time")
        time.sleep(0.01)


def failed_senders(senders: Sequence[Proc]) -> None:
    """Raise BenchError for the first sender that exited non-zero."""
    for proc in senders:
        if proc.poll():
            raise BenchError(f"sender exited with {proc.returncode}: {stderr_of(proc)}")


def stderr_of(proc: Proc) -> str:
    """What an exited process wrote to its stderr pipe ('' while it runs, or without one)."""
    if proc.poll() is None or proc.stderr is None:
        return ""
    data = proc.stderr.read()
    return (data.decode(errors="replace") if isinstance(data, bytes) else data).strip()


def kill_all(procs: Sequence[Proc]) -> None:
    """SIGKILL and reap every process still running, and close its pipes."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def kill_session(proc: Proc) -> None:
    """SIGKILL a whole session (``proc`` was started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def stop(proc: Proc, grace: float = 30.0) -> None:
    """SIGTERM (the child cleans up what it started), SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class ProcSample:
    """Memory and CPU time of one process at one instant (``uss``: its private memory)."""

    t: float
    rss: int
    shared: int
    uss: int
    cpu: float


@dataclass
class ProcTrace:
    """Samples of one process over a run."""

    pid: int
    name: str
    samples: list[ProcSample] = field(default_factory=list)


class Sampler(threading.Thread):
    """Samples memory and CPU time of a process and its descendants every ``interval`` s."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = pid
        self.interval = interval
        self.traces: dict[int, ProcTrace] = {}
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        now = time.monotonic() - self.t0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                self._sample_one(proc, now)

    def _sample_one(self, proc: psutil.Process, now: float) -> None:
        with proc.oneshot():
            mem = proc.memory_full_info()  # uss: pages no other process maps
            cpu = proc.cpu_times()
            trace = self.traces.get(proc.pid)
            if trace is None:
                name = (proc.cmdline() or [proc.name()])[0]
                trace = self.traces[proc.pid] = ProcTrace(proc.pid, name)
        sample = ProcSample(now, mem.rss, mem.shared, mem.uss, cpu.user + cpu.system)
        trace.samples.append(sample)

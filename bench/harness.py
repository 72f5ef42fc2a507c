"""Running a real ugram server under load, and checking that it handled every datagram.

:func:`run_ugram` starts ``python -m ugram serve <handler>`` in its own session, waits until
the receiver and every worker are up (workers create a file in ``$UGBENCH_READY`` from
``setup()``), starts the load (C senders, Python ones without a compiler, or the paced
sender), and when the senders are done sends SIGTERM: ugram drains the socket and the rings,
runs teardown (each worker appends ``"<pid> <count> <last>"`` to ``$UGBENCH_OUT``) and exits
0. Two durations, both from the moment the load starts:

* ``seconds_exit``: until the server process exited (drain, teardown and exit included);
* ``seconds``: until the last record was handled (the latest ``<last>`` of the workers):
  the throughput without the shutdown, comparable to the baselines' first-to-last timing.

Handled must equal sent, and the exit code must be 0, or :class:`BenchError` is raised.
Every process started is killed (``killpg`` on the server's session) on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.baselines import (
    ROOT,
    c_binary,
    confined,
    kill_all,
    python_env,
    sender_kind,
    socket_dir,
    start_senders,
)
from bench.work import LATENCY_DIR_ENV, OUT_ENV, READY_ENV, percentiles

READY_TIMEOUT = 20.0


class BenchError(RuntimeError):
    """A run failed, or did not handle exactly what was sent."""


SNAPSHOT_PREFIX = "ugram-built-"  # "ugram-<sha>" snapshots lacked the C helper: never reuse
# The C helper's build, as setup.py does it, for a snapshot that has ugram/_speedups.c.
_BUILD_HELPER = (
    "from setuptools import Extension, setup; setup(name='ugram-snapshot', script_args="
    "['-q', 'build_ext', '--inplace'], ext_modules=[Extension('ugram._speedups', "
    "['ugram/_speedups.c'], optional=True, extra_compile_args=['-O2'])])"
)


def ugram_snapshot(rev: str) -> str:
    """A directory holding ``ugram/`` as committed at git revision ``rev`` (for
    ``--ugram-path``): measure a commit while the working tree is being edited, or A/B two.
    Its C helper is built as an install builds it (without a compiler the snapshot runs its
    pure-Python loops, as such an install would). Cached in ``bench/.build/ugram-built-<sha>``.

    Raises:
        BenchError: ``rev`` is not a commit of this repository.
    """
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"cannot resolve git revision {rev!r}: {exc}") from None
    target = ROOT / "bench" / ".build" / f"{SNAPSHOT_PREFIX}{sha[:12]}"
    if not target.exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True)
        archive = subprocess.Popen(
            ["git", "-C", str(ROOT), "archive", sha, "ugram"], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(tmp)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise BenchError(f"git archive {sha} failed")
        if (tmp / "ugram" / "_speedups.c").exists():
            subprocess.run(
                [sys.executable, "-c", _BUILD_HELPER], cwd=tmp, capture_output=True, check=True
            )
        tmp.replace(target)
    return str(target)


@dataclass
class ProcSample:
    """Memory and CPU time of one process at one instant."""

    t: float
    rss: int
    shared: int
    cpu: float


@dataclass
class ProcTrace:
    """Samples of one ugram process over a run."""

    pid: int
    name: str
    samples: list[ProcSample] = field(default_factory=list)


@dataclass
class UgramResult:
    """One ugram run."""

    handler: str
    workers: int
    size: int
    sent: int
    handled: int
    seconds: float  # load start → last record handled
    seconds_exit: float  # load start → server exited
    per_worker: list[int]
    latency: dict[str, dict[str, int]] = field(default_factory=dict)
    paced_rate: float = 0.0  # achieved rate of the paced sender (0: flood)
    traces: list[ProcTrace] = field(default_factory=list)
    receiver_cpu: float = 0.0  # CPU seconds of the receiver while the load ran
    worker_cpu: float = 0.0  # CPU seconds of every worker, setup() to teardown()

    @property
    def receiver_us(self) -> float:
        """Receiver CPU µs per datagram."""
        return self.receiver_cpu / self.handled * 1e6 if self.handled else 0.0

    @property
    def worker_us(self) -> float:
        """Worker CPU µs per datagram (all workers; idle spinning included)."""
        return self.worker_cpu / self.handled * 1e6 if self.handled else 0.0

    @property
    def rate(self) -> float:
        """Handled per second, load start → last record handled."""
        return self.handled / self.seconds if self.seconds > 0 else float("inf")

    @property
    def rate_exit(self) -> float:
        """Handled per second, load start → server exit (shutdown included)."""
        return self.handled / self.seconds_exit if self.seconds_exit > 0 else float("inf")


def ugram_env(out: str, ready: str, ugram_path: str | None = None) -> dict[str, str]:
    """Environment for the server: ``python_env()`` without ``UGRAM_*`` settings (the bench
    passes every option it wants on the command line), plus the handler's ``UGBENCH_*``."""
    env = {k: v for k, v in python_env().items() if not k.startswith("UGRAM_")}
    if ugram_path:
        env["PYTHONPATH"] = os.pathsep.join((ugram_path, env["PYTHONPATH"]))
    env[OUT_ENV] = out
    env[READY_ENV] = ready
    return env


class Sampler(threading.Thread):
    """Samples RSS and CPU time of a process and its descendants every ``interval`` seconds."""

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
            try:
                with proc.oneshot():
                    mem = proc.memory_info()
                    cpu = proc.cpu_times()
                    trace = self.traces.get(proc.pid)
                    if trace is None:
                        name = (proc.cmdline() or [proc.name()])[0]
                        trace = self.traces[proc.pid] = ProcTrace(proc.pid, name)
                    cpu_s = cpu.user + cpu.system
                    trace.samples.append(ProcSample(now, mem.rss, mem.shared, cpu_s))
            except psutil.Error:
                continue


def wait_ready(
    server: subprocess.Popen[bytes], path: str, ready: str, workers: int, log: Path
) -> None:
    """Wait for the socket file, every worker's ready file and the receiver's process title."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if server.poll() is not None:
            raise BenchError(f"ugram exited with {server.returncode}:\n{tail(log)}")
        if _is_socket(path) and len(os.listdir(ready)) >= workers and _receiver_up(server.pid):
            time.sleep(0.05)  # the receiver titles itself just before it starts its loop
            return
        if time.monotonic() > deadline:
            raise BenchError(f"ugram was not ready within {READY_TIMEOUT} s:\n{tail(log)}")
        time.sleep(0.01)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _receiver_up(pid: int) -> bool:
    try:
        for child in psutil.Process(pid).children():
            with contextlib.suppress(psutil.Error):
                if child.cmdline()[:1] and child.cmdline()[0].startswith("ugram: receiver"):
                    return True
    except psutil.Error:
        pass
    return False


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's whole session (it was started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class Server:
    """A running ugram server started by :func:`ugram_server`."""

    proc: subprocess.Popen[bytes]
    path: str  # the socket
    out: str  # $UGBENCH_OUT
    latdir: str  # $UGBENCH_LAT_DIR
    log: Path  # the server's stdout and stderr

    def pids(self) -> dict[str, int]:
        """Pid of each child by role: ``receiver``, ``worker 0``, ``worker 1``, ..."""
        result: dict[str, int] = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children():
                with contextlib.suppress(psutil.Error, IndexError):
                    words = child.cmdline()[0].split()
                    if words[:2] == ["ugram:", "receiver"]:
                        result["receiver"] = child.pid
                    elif words[:2] == ["ugram:", "worker"]:
                        result[f"worker {words[2]}"] = child.pid
        return result


@contextlib.contextmanager
def ugram_server(
    handler: str,
    workers: int,
    *,
    codec: str = "raw",
    ugram_path: str | None = None,
    extra_args: Sequence[str] = (),
    cpus: Sequence[int] | None = None,
) -> Iterator[Server]:
    """Start ``python -m ugram serve handler`` in its own session (confined to ``cpus``, with
    every process it starts, when given) and wait until it is ready; kill the whole session
    on exit.

    Raises:
        BenchError: the server exited or was not ready in time.
    """
    with socket_dir() as tmp:
        path, out, latdir, log = (os.path.join(tmp, name) for name in ("s", "out", "lat", "log"))
        ready = os.path.join(tmp, "ready")
        os.mkdir(ready)
        os.mkdir(latdir)
        env = ugram_env(out, ready, ugram_path)
        env[LATENCY_DIR_ENV] = latdir
        cmd = [sys.executable, "-m", "ugram", "serve", handler, "--socket", path]
        cmd += ["--workers", str(workers), "--codec", codec, "--log-level", "warning"]
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                confined([*cmd, *extra_args], cpus),
                env=env,
                cwd=ugram_path or ROOT,  # `python -m` puts the cwd first on sys.path
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        server = Server(proc, path, out, latdir, Path(log))
        try:
            wait_ready(proc, path, ready, workers, server.log)
            yield server
        finally:
            kill_session(proc)


def start_paced(path: str, count: int, size: int, rate: float) -> subprocess.Popen[str]:
    """Start the paced, time-stamping sender: ``bench/c/paced``, or its Python twin
    (``bench.pysend paced``) without a C compiler."""
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


def run_ugram(
    handler: str,
    count: int,
    size: int,
    workers: int,
    *,
    codec: str = "raw",
    json_payload: bool = False,
    senders: int = 1,
    paced_rate: float | None = None,
    sample_every: float | None = None,
    timeout: float = 120.0,
    ugram_path: str | None = None,
    extra_args: Sequence[str] = (),
    cpus: tuple[Sequence[int], Sequence[int]] | None = None,
) -> UgramResult:
    """Run ugram with ``handler`` (``module:attr``) against ``count`` datagrams of ``size``.

    ``paced_rate``: use the paced sender at this rate (with latency collection, for the
    ``Latency`` handler) instead of flooding. ``sample_every``: sample RSS/CPU of every ugram
    process at this interval (seconds). ``ugram_path``: put this directory first on the
    server's ``PYTHONPATH`` (to measure another ugram tree). ``cpus``: confine the server and
    its children to the first CPUs, the senders to the second.

    Raises:
        BenchError: the server failed, timed out, or handled != sent.
    """
    deadline = time.monotonic() + timeout
    load: list[subprocess.Popen[str]] = []
    sampler: Sampler | None = None
    server = ugram_server(
        handler,
        workers,
        codec=codec,
        ugram_path=ugram_path,
        extra_args=extra_args,
        cpus=cpus[0] if cpus else None,
    )
    with server as srv:
        try:
            sampler = Sampler(srv.proc.pid, sample_every) if sample_every else None
            receiver = srv.pids().get("receiver")
            cpu0 = _cpu_seconds(receiver)
            t0 = time.monotonic()
            if paced_rate is not None:
                load = [start_paced(srv.path, count, size, paced_rate)]
            else:
                load = start_senders(
                    srv.path,
                    count,
                    size,
                    senders,
                    json_payload=json_payload,
                    cpus=cpus[1] if cpus else None,
                )
            if sampler is not None:
                sampler.start()
            _wait_load(load, srv.proc, deadline, srv.log)
            achieved = _paced_rate(load[0]) if paced_rate is not None else 0.0
            receiver_cpu = _cpu_seconds(receiver) - cpu0
            t_exit = _stop(srv, deadline)
        finally:
            if sampler is not None:
                sampler.halt.set()
                sampler.join()
            kill_all(load)
        counts, lasts, cpu_times = _read_counts(srv.out)
        if sum(counts) != count:
            raise BenchError(
                f"ugram {handler} x{workers}: sent {count} datagrams of {size} B, handled "
                f"{sum(counts)} (per worker: {counts})\n{tail(srv.log)}"
            )
        return UgramResult(
            handler=handler,
            workers=workers,
            size=size,
            sent=count,
            handled=sum(counts),
            seconds=(max(lasts) if lasts else t_exit) - t0,
            seconds_exit=t_exit - t0,
            per_worker=counts,
            latency=_read_latency(srv.latdir),
            paced_rate=achieved,
            traces=list(sampler.traces.values()) if sampler else [],
            receiver_cpu=receiver_cpu,
            worker_cpu=sum(cpu_times),
        )


def _stop(srv: Server, deadline: float) -> float:
    """SIGTERM the server, wait for it to exit 0; return the monotonic time of its exit."""
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise BenchError(f"ugram did not stop in time:\n{tail(srv.log)}") from None
    t_exit = time.monotonic()
    if code != 0:
        raise BenchError(f"ugram exited with {code}:\n{tail(srv.log)}")
    return t_exit


def _paced_rate(proc: subprocess.Popen[str]) -> float:
    """The achieved rate the paced sender printed (``sent=N seconds=S``)."""
    out = proc.stdout.read() if proc.stdout else ""
    fields = dict(kv.split("=", 1) for kv in out.split())
    return int(fields["sent"]) / float(fields["seconds"])


def _wait_load(
    load: list[subprocess.Popen[str]], server: subprocess.Popen[bytes], deadline: float, log: Path
) -> None:
    """Wait for every sender; fail fast if one fails, the server dies, or time runs out."""
    while any(proc.poll() is None for proc in load):
        for proc in load:
            if proc.poll():
                err = proc.stderr.read() if proc.stderr else ""
                raise BenchError(f"sender exited with {proc.returncode}: {err.strip()}")
        if server.poll() is not None:
            raise BenchError(f"ugram exited with {server.returncode} under load:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError("the load did not finish in time")
        time.sleep(0.01)
    for proc in load:
        if proc.returncode:
            err = proc.stderr.read() if proc.stderr else ""
            raise BenchError(f"sender exited with {proc.returncode}: {err.strip()}")


def _read_counts(out: str) -> tuple[list[int], list[float], list[float]]:
    """Per worker: records handled, time of the last one (if any), CPU seconds."""
    counts: list[int] = []
    lasts: list[float] = []
    cpus: list[float] = []
    with contextlib.suppress(FileNotFoundError), open(out) as f:
        for line in f:
            fields = line.split()
            counts.append(int(fields[1]))
            if len(fields) > 2 and float(fields[2]) > 0:
                lasts.append(float(fields[2]))
            if len(fields) > 3:
                cpus.append(float(fields[3]))
    return counts, lasts, cpus


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone or unknown)."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _read_latency(latdir: str) -> dict[str, dict[str, int]]:
    """Percentiles over every worker's raw latencies (ns), by kind (``recv``, ``send``)."""
    result: dict[str, dict[str, int]] = {}
    for kind in ("recv", "send"):
        values: array[int] = array("q")
        for name in os.listdir(latdir):
            if name.endswith(f".{kind}"):
                with open(os.path.join(latdir, name), "rb") as f:
                    values.frombytes(f.read())
        if values:
            result[kind] = percentiles(values)
    return result

"""Running a real ugram server under load, and checking that it handled every datagram.

:func:`ugram_server` starts ``python -m ugram serve <handler>`` in its own session and waits
until the receiver and every worker are up (workers create a file in ``$UGBENCH_READY``
from ``setup()``). :func:`run_ugram` then starts the load and, when the sender is done,
sends SIGTERM: ugram drains the socket and the rings, runs teardown (each worker appends
``"<pid> <count> <last> <cpu>"`` to ``$UGBENCH_OUT``) and exits 0. Two durations, both from
the moment the load starts:

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
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.procs import (
    ROOT,
    BenchError,
    Proc,
    ProcTrace,
    Sampler,
    cpu_seconds,
    is_socket,
    kill_all,
    kill_session,
    pinned,
    python_env,
    socket_dir,
    tail,
    wait_until,
)
from bench.senders import Payload, paced_rate, start_flood, start_paced
from bench.work import LATENCY_DIR_ENV, OUT_ENV, READY_ENV, percentiles

READY_TIMEOUT = 20.0
HANDLERS = {  # the bench's handlers by name: (module:attr, codec)
    "trivial": ("bench.handlers:Count", "raw"),
    "json": ("bench.handlers:JsonStruct", "json"),
    "cpu": ("bench.handlers:CpuCount", "raw"),
    "latency": ("bench.handlers:Latency", "raw"),
}


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: a handler (a name of ``HANDLERS`` or ``module:attr``)."""

    handler: str
    workers: int = 1
    codec: str = ""  # "": the named handler's own (raw for a module:attr)
    flags: tuple[str, ...] = ()  # more `ugram serve` options
    ugram_path: str | None = None  # put first on the server's PYTHONPATH
    cpus: tuple[int, ...] = ()  # confine the server and its children to these
    env: tuple[tuple[str, str], ...] = ()  # more environment variables (a built-in's options)

    def command(self, path: str) -> list[str]:
        spec, codec = HANDLERS.get(self.handler, (self.handler, "raw"))
        cmd = [sys.executable, "-m", "ugram", "serve", spec, "--socket", path]
        cmd += ["--workers", str(self.workers), "--codec", self.codec or codec]
        return [*cmd, "--log-level", "warning", *self.flags]


@dataclass
class UgramResult:
    """One ugram run."""

    handled: int
    seconds: float  # load start → last record handled
    seconds_exit: float  # load start → server exited
    receiver_cpu: float = 0.0  # CPU seconds of the receiver while the load ran
    worker_cpu: float = 0.0  # CPU seconds of every worker, setup() to teardown()
    latency: dict[str, dict[str, int]] = field(default_factory=dict)
    paced_rate: float = 0.0  # achieved rate of the paced sender (0: flood)
    traces: list[ProcTrace] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Handled per second, load start → last record handled."""
        return self.handled / self.seconds if self.seconds > 0 else float("inf")

    @property
    def rate_exit(self) -> float:
        """Handled per second, load start → server exit (shutdown included)."""
        return self.handled / self.seconds_exit if self.seconds_exit > 0 else float("inf")

    @property
    def receiver_us(self) -> float:
        """Receiver CPU µs per datagram."""
        return self.receiver_cpu / self.handled * 1e6 if self.handled else 0.0

    @property
    def worker_us(self) -> float:
        """Worker CPU µs per datagram (all workers; idle spinning included)."""
        return self.worker_cpu / self.handled * 1e6 if self.handled else 0.0


@dataclass
class Server:
    """A running ugram server started by :func:`ugram_server`."""

    proc: Proc
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

    def wait(
        self, done: Callable[[], bool], deadline: float, what: str, senders: Sequence[Proc] = ()
    ) -> None:
        """:func:`wait_until` ``done()`` while the server runs; errors end with its log.

        Raises:
            BenchError: the server exited, a sender failed, or ``deadline`` passed.
        """
        try:
            wait_until(done, deadline, senders=senders, watched=self.proc, what=what)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{tail(self.log)}") from None

    def ready(self, ready_dir: str, workers: int) -> bool:
        """The socket exists, every worker has set up, and the receiver has titled itself."""
        if not is_socket(self.path) or len(os.listdir(ready_dir)) < workers:
            return False
        return "receiver" in self.pids()


def server_env(tmp: str, ugram_path: str | None) -> dict[str, str]:
    """``python_env()`` without ``UGRAM_*`` settings (the bench passes every option it wants
    on the command line), plus the ``UGBENCH_*`` variables the bench handlers read."""
    env = {k: v for k, v in python_env().items() if not k.startswith("UGRAM_")}
    if ugram_path:
        env["PYTHONPATH"] = os.pathsep.join((ugram_path, env["PYTHONPATH"]))
    env[OUT_ENV] = os.path.join(tmp, "out")
    env[READY_ENV] = os.path.join(tmp, "ready")
    env[LATENCY_DIR_ENV] = os.path.join(tmp, "lat")
    return env


@contextlib.contextmanager
def ugram_server(spec: ServerSpec) -> Iterator[Server]:
    """Start ``python -m ugram serve`` as ``spec`` says, in its own session, and wait until
    it is ready; kill the whole session on exit.

    Raises:
        BenchError: the server exited or was not ready in time.
    """
    with socket_dir() as tmp:
        env = {**server_env(tmp, spec.ugram_path), **dict(spec.env)}
        os.mkdir(env[READY_ENV])
        os.mkdir(env[LATENCY_DIR_ENV])
        log = Path(tmp, "log")
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                pinned(spec.command(os.path.join(tmp, "s")), spec.cpus),
                env=env,
                cwd=spec.ugram_path or ROOT,  # `python -m` puts the cwd first on sys.path
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        server = Server(proc, os.path.join(tmp, "s"), env[OUT_ENV], env[LATENCY_DIR_ENV], log)
        try:
            _wait_ready(server, env[READY_ENV], spec.workers)
            yield server
        finally:
            kill_session(proc)


def _wait_ready(server: Server, ready_dir: str, workers: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    server.wait(lambda: server.ready(ready_dir, workers), deadline, "ugram, starting")
    time.sleep(0.05)  # the receiver titles itself just before it starts its loop


def run_ugram(
    spec: ServerSpec,
    count: int,
    size: int,
    *,
    payload: Payload = "raw",
    paced: float = 0.0,
    sample_every: float = 0.0,
    sender_cpus: tuple[int, ...] = (),
    timeout: float = 120.0,
) -> UgramResult:
    """Send ``count`` datagrams of ``size`` bytes to a server started as ``spec`` says.

    ``paced``: use the paced sender at this rate (with latency collection, for the
    ``latency`` handler) instead of flooding. ``sample_every``: sample the memory and CPU
    of every ugram process at this interval (seconds).

    Raises:
        BenchError: the server failed, timed out, or handled != sent.
    """
    deadline = time.monotonic() + timeout
    with ugram_server(spec) as srv:
        sampler = Sampler(srv.proc.pid, sample_every) if sample_every else None
        receiver = srv.pids().get("receiver")
        cpu0, t0 = cpu_seconds(receiver), time.monotonic()
        if paced:
            load = start_paced(srv.path, count, size, paced)
        else:
            load = start_flood(srv.path, count, size, payload=payload, cpus=sender_cpus)
        try:
            if sampler is not None:
                sampler.start()
            srv.wait(lambda: load.poll() is not None, deadline, "ugram, under load", [load])
            _halt(sampler)  # memory during the load, not while the server shuts down
            result = UgramResult(0, 0.0, 0.0, receiver_cpu=cpu_seconds(receiver) - cpu0)
            result.paced_rate = paced_rate(load) if paced else 0.0
            t_exit = _stop(srv, deadline)
        finally:
            _halt(sampler)
            kill_all([load])
        _read_reports(srv, result, t0, t_exit, count)
        result.traces = list(sampler.traces.values()) if sampler else []
        return result


def _halt(sampler: Sampler | None) -> None:
    if sampler is not None and sampler.is_alive():
        sampler.halt.set()
        sampler.join()


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


def _read_reports(srv: Server, result: UgramResult, t0: float, t_exit: float, sent: int) -> None:
    """Fill ``result`` from the workers' teardown reports; handled must equal ``sent``."""
    counts, lasts, cpus = [], [], []
    with contextlib.suppress(FileNotFoundError), open(srv.out) as f:
        for line in f:
            _pid, count, last, cpu = line.split()
            counts.append(int(count))
            cpus.append(float(cpu))
            if float(last) > 0:
                lasts.append(float(last))
    if sum(counts) != sent:
        raise BenchError(
            f"sent {sent} datagrams, handled {sum(counts)} (per worker: {counts})\n{tail(srv.log)}"
        )
    result.handled, result.worker_cpu = sum(counts), sum(cpus)
    result.seconds = (max(lasts) if lasts else t_exit) - t0
    result.seconds_exit = t_exit - t0
    result.latency = _read_latency(srv.latdir)


def _read_latency(latdir: str) -> dict[str, dict[str, int]]:
    """Percentiles over every worker's raw latencies (ns), by kind (``recv``, ``send``)."""
    result: dict[str, dict[str, int]] = {}
    for kind in ("recv", "send"):
        values: array[int] = array("q")
        for name in os.listdir(latdir):
            if name.endswith(f".{kind}"):
                values.frombytes(Path(latdir, name).read_bytes())
        if values:
            result[kind] = percentiles(values)
    return result

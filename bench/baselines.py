"""Baseline receivers to compare ugram against, and the harness that drives them.

Each run starts one receiver process, then ``senders`` C load generators (``bench/c/sender``)
that together send exactly ``count`` datagrams; the receiver stops after ``count`` datagrams and
prints ``received=N seconds=S truncated=T bytes=B``, with S measured from the first datagram to
the last. Receivers:

* C (``run_c_receiver``): ``mmsg`` — ``recvmmsg`` in batches of 64, the machine's ceiling;
  ``plain`` — one ``recv()`` per datagram, golib unixgram's design.
* Python (``run_baseline``), one process, running a handler from ``bench.handlers`` on each
  datagram: ``blocking`` — a blocking ``recv_into`` loop; ``asyncio`` — the stdlib event loop
  with ``loop.create_datagram_endpoint(sock=...)``.

Handlers: ``trivial`` (count only), ``json`` (msgspec decode into ``Record``), ``cpu`` (~50 µs of
pure Python). Run ``python -m bench.baselines`` for a quick table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from bench import cbuild
from bench.work import cpu_iters, cpu_work, make_decoder

PythonKind = Literal["blocking", "asyncio"]
CKind = Literal["mmsg", "plain"]
HandlerName = Literal["trivial", "json", "cpu"]
Handler = Callable[[bytes | memoryview], object]

ROOT = Path(__file__).resolve().parent.parent
MAX_DATAGRAM = 65536
RECV_BUF_SIZE = MAX_DATAGRAM + 1  # a full buffer means the datagram was truncated


@dataclass(frozen=True)
class RecvResult:
    """What a receiver reported: datagrams (truncated ones included) and first-to-last time."""

    received: int
    seconds: float
    truncated: int

    @property
    def rate(self) -> float:
        """Datagrams per second, first to last datagram."""
        return self.received / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        return f"received={self.received} seconds={self.seconds:.6f} truncated={self.truncated}"

    @classmethod
    def parse(cls, text: str) -> RecvResult:
        """Parse the ``key=value`` line a receiver prints (its last line of output)."""
        lines = text.strip().splitlines()
        fields = dict(item.split("=", 1) for item in (lines[-1] if lines else "").split())
        try:
            return cls(int(fields["received"]), float(fields["seconds"]), int(fields["truncated"]))
        except (KeyError, ValueError):
            raise RuntimeError(f"cannot parse receiver output: {text!r}") from None


# --- handlers (identical work to bench.handlers.Count / JsonCount / CpuCount) ---------------


def make_handler(name: HandlerName) -> Handler:
    """The per-datagram function for handler ``name``; counting is done by the receive loop."""
    if name == "trivial":
        return lambda data: None
    if name == "json":
        return make_decoder().decode
    if name == "cpu":
        iters = cpu_iters()
        return lambda data: cpu_work(data, iters)
    raise ValueError(f"unknown handler {name!r}; expected trivial, json or cpu")


# --- receivers (run in the child process) ----------------------------------------------------


def bind(path: str) -> socket.socket:
    """Bind an AF_UNIX datagram socket at ``path``, replacing only a stale socket file."""
    _unlink_socket(path)
    if os.path.lexists(path):
        sys.exit(f"{path} exists and is not a socket; refusing to remove it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    return sock


def receive_blocking(sock: socket.socket, count: int, handle: Handler) -> RecvResult:
    """Blocking ``recv_into`` loop: one syscall and one handler call per datagram."""
    buf = bytearray(RECV_BUF_SIZE)
    view = memoryview(buf)
    recv_into = sock.recv_into
    truncated = 0
    start = 0.0
    for i in range(count):
        n = recv_into(buf)
        if i == 0:
            start = time.perf_counter()
        if n > MAX_DATAGRAM:
            truncated += 1  # rejected, never handed on truncated
            continue
        handle(view[:n])
    return RecvResult(count, time.perf_counter() - start, truncated)


class _CountingProtocol(asyncio.DatagramProtocol):
    def __init__(self, count: int, handle: Handler, done: asyncio.Future[RecvResult]) -> None:
        self.count = count
        self.handle = handle
        self.done = done
        self.received = 0
        self.truncated = 0
        self.start = 0.0

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.received == 0:
            self.start = time.perf_counter()
        self.received += 1
        if len(data) > MAX_DATAGRAM:
            self.truncated += 1  # asyncio reads up to 256 KiB: oversized, rejected
        else:
            self.handle(data)
        if self.received == self.count and not self.done.done():
            seconds = time.perf_counter() - self.start
            self.done.set_result(RecvResult(self.received, seconds, self.truncated))

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _receive_asyncio(sock: socket.socket, count: int, handle: Handler) -> RecvResult:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[RecvResult] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _CountingProtocol(count, handle, done), sock=sock
    )
    try:
        return await done
    finally:
        transport.close()


def receive_asyncio(sock: socket.socket, count: int, handle: Handler) -> RecvResult:
    """Stdlib asyncio (not uvloop) ``create_datagram_endpoint(sock=...)``."""
    return asyncio.run(_receive_asyncio(sock, count, handle))


RECEIVERS: dict[str, Callable[[socket.socket, int, Handler], RecvResult]] = {
    "blocking": receive_blocking,
    "asyncio": receive_asyncio,
}


def receiver_main(kind: str, handler: str, path: str, count: int) -> None:
    """Child process entry: bind, receive ``count`` datagrams, print the result line."""
    receive = RECEIVERS[kind]
    handle = make_handler(cast(HandlerName, handler))  # make_handler rejects unknown names
    sock = bind(path)
    try:
        result = receive(sock, count, handle)
    finally:
        sock.close()
    print(result.line(), flush=True)


# --- harness (runs in the parent) ------------------------------------------------------------


@contextlib.contextmanager
def socket_dir() -> Iterator[str]:
    """A fresh short directory in /tmp for socket files (AF_UNIX paths are <= 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ub", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def c_binary(name: str) -> Path:
    """A compiled ``bench/c`` program. Raises RuntimeError when no C compiler exists."""
    path = cbuild.build(name)
    if path is None:
        raise RuntimeError(f"bench needs a C compiler to build {name}")
    return path


def python_env() -> dict[str, str]:
    """Environment for Python children: inherits ours (CPU calibration) plus ``bench`` on path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def wait_for_socket(path: str, proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Wait until ``path`` is a socket; raise if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                return
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}: {_stderr(proc)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"receiver did not bind {path} within {timeout} s")
        time.sleep(0.005)


def start_senders(
    path: str,
    count: int,
    size: int,
    senders: int,
    *,
    json_payload: bool = False,
    batch: int = 64,
    cpus: Sequence[int] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start ``senders`` C senders sending ``count`` datagrams in total (distinct seq ranges),
    confined to ``cpus`` when given.

    Without a C compiler, Python senders (``bench.pysend flood``, same payloads, slower) are
    started instead; :func:`sender_kind` says which."""
    binary = str(c_binary("sender")) if sender_kind() == "C" else None
    procs: list[subprocess.Popen[str]] = []
    start = 0
    try:
        for i in range(senders):
            share = count // senders + (1 if i < count % senders else 0)
            if binary is not None:
                cmd = [binary, path, str(share), str(size), str(batch), f"--start={start}"]
                env = None
            else:
                cmd = [sys.executable, "-m", "bench.pysend", "flood", path, str(share), str(size)]
                cmd.append(f"--start={start}")
                env = python_env()
            if json_payload:
                cmd.append("--json")
            procs.append(
                subprocess.Popen(confined(cmd, cpus), stderr=subprocess.PIPE, text=True, env=env)
            )
            start += share
    except BaseException:
        kill_all(procs)
        raise
    return procs


def sender_kind() -> Literal["C", "Python"]:
    """``C`` when ``bench/c/sender`` can be built, else ``Python`` (the fallback load)."""
    return "C" if cbuild.compiler() is not None else "Python"


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    """SIGKILL and reap every process still running."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        if proc.stdout:
            proc.stdout.close()


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None or proc.stderr is None:
        return ""
    return proc.stderr.read().strip()


PIN = (
    "import os, sys; os.sched_setaffinity(0, map(int, sys.argv[1].split(',')));"
    " os.execvp(sys.argv[2], sys.argv[2:])"
)


def confined(cmd: list[str], cpus: Sequence[int] | None) -> list[str]:
    """``cmd`` started with its CPU affinity set to ``cpus`` (as ``taskset -c`` does; children
    inherit it), or ``cmd`` itself when ``cpus`` is None or empty."""
    if not cpus:
        return cmd
    return [sys.executable, "-c", PIN, ",".join(str(cpu) for cpu in cpus), *cmd]


def wait_senders(senders: list[subprocess.Popen[str]], deadline: float) -> None:
    """Wait for the senders until ``deadline`` (monotonic); raise if one failed."""
    for proc in senders:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError("senders did not finish in time") from None
        if proc.returncode != 0:
            raise RuntimeError(f"sender exited with {proc.returncode}: {_stderr(proc)}")


def run_receiver(
    cmd: list[str],
    path: str,
    count: int,
    size: int,
    senders: int = 1,
    *,
    json_payload: bool = False,
    batch: int = 64,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    cpus: tuple[Sequence[int], Sequence[int]] | None = None,
) -> RecvResult:
    """Run receiver ``cmd`` (which binds ``path`` and exits after ``count`` datagrams) against
    ``senders`` C senders; ``cpus``: confine the receiver to the first CPUs, the senders to
    the second.
    Raises RuntimeError if anything fails, times out, or the receiver saw fewer than
    ``count`` datagrams or any truncated one. Every child is killed on exit."""
    deadline = time.monotonic() + timeout
    receiver = subprocess.Popen(
        confined(cmd, cpus[0] if cpus else None),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        wait_for_socket(path, receiver)
        procs = start_senders(
            path,
            count,
            size,
            senders,
            json_payload=json_payload,
            batch=batch,
            cpus=cpus[1] if cpus else None,
        )
        while receiver.poll() is None:  # fail fast if a sender dies
            for proc in procs:
                if proc.poll():
                    raise RuntimeError(f"sender exited with {proc.returncode}: {_stderr(proc)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"receiver did not get {count} datagrams within {timeout} s")
            time.sleep(0.02)
        out = receiver.stdout.read() if receiver.stdout else ""
        if receiver.returncode != 0:
            raise RuntimeError(f"receiver exited with {receiver.returncode}: {_stderr(receiver)}")
        wait_senders(procs, deadline)
        result = RecvResult.parse(out)
        if result.received != count or result.truncated:
            raise RuntimeError(f"sent {count} datagrams of {size} B, receiver got {result}")
        return result
    finally:
        kill_all([*procs, receiver])
        _unlink_socket(path)


def _unlink_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def run_c_receiver(
    kind: CKind,
    path: str | None,
    count: int,
    size: int,
    senders: int = 1,
    *,
    json_payload: bool = False,
    timeout: float = 60.0,
    cpus: tuple[Sequence[int], Sequence[int]] | None = None,
) -> float:
    """msg/s of the C ``recv_mmsg`` or ``recv_plain`` receiver (``path=None``: a temp path;
    ``cpus``: confine the receiver to the first CPUs, the sender to the second)."""
    binary = str(c_binary(f"recv_{kind}"))
    with _path_or_temp(path) as where:
        cmd = [binary, where, str(count)]
        run = run_receiver(
            cmd,
            where,
            count,
            size,
            senders,
            json_payload=json_payload,
            timeout=timeout,
            cpus=cpus,
        )
    return run.rate


def run_baseline(
    kind: PythonKind,
    handler: HandlerName,
    path: str | None,
    count: int,
    size: int,
    senders: int = 1,
    *,
    json_payload: bool | None = None,
    timeout: float = 60.0,
    cpus: tuple[Sequence[int], Sequence[int]] | None = None,
) -> float:
    """msg/s of a single-process Python receiver (``blocking`` or ``asyncio``) running
    ``handler`` on each datagram. JSON payloads are sent when ``handler == "json"`` unless
    ``json_payload`` says otherwise; ``path=None`` uses a temp path; ``cpus``: confine the
    receiver to the first CPUs, the sender to the second."""
    if kind not in RECEIVERS:
        raise ValueError(f"unknown baseline {kind!r}; expected blocking or asyncio")
    make_handler(handler)  # validate the name; calibrates cpu_iters() once, before the child
    if json_payload is None:
        json_payload = handler == "json"
    with _path_or_temp(path) as where:
        cmd = [sys.executable, "-m", "bench.baselines", "recv", kind, handler, where, str(count)]
        run = run_receiver(
            cmd,
            where,
            count,
            size,
            senders,
            json_payload=json_payload,
            timeout=timeout,
            env=python_env(),
            cpus=cpus,
        )
    return run.rate


@contextlib.contextmanager
def _path_or_temp(path: str | None) -> Iterator[str]:
    if path is not None:
        yield path
        return
    with socket_dir() as directory:
        yield os.path.join(directory, "s")


def main(argv: list[str]) -> int:
    if argv[:1] == ["recv"] and len(argv) == 5:
        receiver_main(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    if argv:
        print("usage: python -m bench.baselines [recv KIND HANDLER PATH COUNT]", file=sys.stderr)
        return 2
    size, c_count, py_count = 64, 1_000_000, 200_000
    c_kinds: tuple[CKind, ...] = ("mmsg", "plain")
    py_kinds: tuple[PythonKind, ...] = ("blocking", "asyncio")
    handlers: tuple[HandlerName, ...] = ("trivial", "json", "cpu")
    for ckind in c_kinds:
        rate = run_c_receiver(ckind, None, c_count, size, senders=4)
        print(f"C {ckind:<8} {size:>5} B  {rate:>12,.0f} msg/s")
    for pkind in py_kinds:
        for handler in handlers:
            count = py_count if handler != "cpu" else 20_000
            payload = 128 if handler == "json" else size
            rate = run_baseline(pkind, handler, None, count, payload)
            print(f"Py {pkind:<8} {handler:<8} {payload:>5} B  {rate:>12,.0f} msg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

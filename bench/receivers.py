"""The baseline receivers ugram is compared with, each one process bound to the socket.

* C: ``c-mmsg`` (``bench/c/recv_mmsg``: ``recvmmsg`` in batches of 64, the machine's
  ceiling) and ``c-plain`` (``bench/c/recv_plain``: one ``recv()`` per datagram, golib
  unixgram's design);
* Python, running a handler on each datagram in the receiving process: ``blocking`` (a
  blocking ``recv_into`` loop: the plain Python receiver) and ``asyncio`` (the stdlib event
  loop, ``loop.create_datagram_endpoint(sock=...)``).

Handlers: ``trivial`` (count only), ``json`` (msgspec decode into ``Record``), ``cpu``
(~50 µs of pure Python): the work of ``bench.handlers``' ugram handlers. A receiver stops
after ``count`` datagrams and prints ``received=N seconds=S truncated=T``, S measured from
the first datagram to the last. ``python -m bench.receivers KIND HANDLER PATH COUNT`` runs
a Python receiver (the parent side, :func:`run_receiver`, starts it).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.procs import (
    BenchError,
    is_socket,
    kill_all,
    pinned,
    python_env,
    socket_dir,
    stderr_of,
    unlink_socket,
    wait_until,
)
from bench.senders import Payload, c_binary, start_flood
from bench.work import cpu_iters, cpu_work, make_decoder

Handler = Callable[[bytes | memoryview], object]
MAX_DATAGRAM = 65536
RECV_BUF_SIZE = MAX_DATAGRAM + 1  # a full buffer means the datagram was truncated
C_KINDS = ("c-mmsg", "c-plain")
PY_KINDS = ("blocking", "asyncio")


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
        """Parse the ``key=value`` line a receiver prints (its last line of output).

        Raises:
            BenchError: the line is missing or malformed.
        """
        lines = text.strip().splitlines()
        fields = dict(item.split("=", 1) for item in (lines[-1] if lines else "").split())
        try:
            return cls(int(fields["received"]), float(fields["seconds"]), int(fields["truncated"]))
        except (KeyError, ValueError):
            raise BenchError(f"cannot parse receiver output: {text!r}") from None


def make_handler(name: str) -> Handler:
    """The per-datagram function for handler ``name``; the receive loop does the counting.

    Raises:
        ValueError: ``name`` is not ``trivial``, ``json`` or ``cpu``.
    """
    if name == "trivial":
        return lambda data: None
    if name == "json":
        return make_decoder().decode
    if name == "cpu":
        iters = cpu_iters()
        return lambda data: cpu_work(data, iters)
    raise ValueError(f"unknown handler {name!r}; expected trivial, json or cpu")


# --- the Python receivers (run in the child process) -------------------------------------


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


RECEIVERS = {"blocking": receive_blocking, "asyncio": receive_asyncio}


def receiver_main(kind: str, handler: str, path: str, count: int) -> None:
    """Child process entry: bind, receive ``count`` datagrams, print the result line."""
    receive = RECEIVERS[kind]
    handle = make_handler(handler)
    unlink_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        result = receive(sock, count, handle)
    finally:
        sock.close()
    print(result.line(), flush=True)


# --- the parent side ---------------------------------------------------------------------


def receiver_command(kind: str, handler: str, path: str, count: int) -> list[str]:
    """The command line of receiver ``kind`` (C receivers only count: ``handler`` is moot).

    Raises:
        ValueError: unknown ``kind`` or ``handler``.
    """
    if kind in C_KINDS:
        return [str(c_binary(f"recv_{kind.removeprefix('c-')}")), path, str(count)]
    if kind not in PY_KINDS:
        raise ValueError(f"unknown receiver {kind!r}; expected one of {C_KINDS + PY_KINDS}")
    make_handler(handler)  # validates the name; calibrates cpu_iters() once, before the child
    return [sys.executable, "-m", "bench.receivers", kind, handler, path, str(count)]


def run_receiver(
    kind: str,
    handler: str,
    count: int,
    size: int,
    *,
    payload: Payload = "raw",
    cpus: tuple[tuple[int, ...], tuple[int, ...]] = ((), ()),
    timeout: float = 60.0,
) -> float:
    """msg/s of receiver ``kind`` running ``handler`` against one flood sender; ``cpus``:
    the receiver's and the sender's CPUs (empty: anywhere).

    Raises:
        BenchError: a process failed or timed out, or the receiver got fewer than ``count``
            datagrams or a truncated one.
    """
    deadline = time.monotonic() + timeout
    with socket_dir() as tmp:
        path = f"{tmp}/s"
        cmd = pinned(receiver_command(kind, handler, path, count), cpus[0])
        receiver = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env()
        )
        procs = [receiver]
        try:
            wait_until(lambda: is_socket(path), deadline, watched=receiver, what=kind)
            procs.append(start_flood(path, count, size, payload=payload, cpus=cpus[1]))
            wait_until(lambda: receiver.poll() is not None, deadline, senders=procs[1:])
            return _result(receiver, procs[1], deadline, count)
        finally:
            kill_all(procs)


def _result(
    receiver: subprocess.Popen[str], sender: subprocess.Popen[str], deadline: float, count: int
) -> float:
    out = receiver.stdout.read() if receiver.stdout else ""
    if receiver.returncode != 0:
        raise BenchError(f"receiver exited with {receiver.returncode}: {stderr_of(receiver)}")
    wait_until(lambda: sender.poll() is not None, deadline, senders=[sender])
    result = RecvResult.parse(out)
    if result.received != count or result.truncated:
        raise BenchError(f"sent {count} datagrams, the receiver got {result}")
    return result.rate


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench.receivers KIND HANDLER PATH COUNT")
    receiver_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

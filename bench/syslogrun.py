"""One syslog server (rsyslog, or ugram with ``LogSink``) under the syslog load, measured from
outside by what it writes: every line the sender sent must be in its output file exactly once.

:func:`run_syslog_server` starts the server in its own session, waits for its socket, sends a
warm-up (``WARMUP`` lines, until all are written: every worker is then up), then floods
``count`` lines of ``size`` bytes with the C sender (``bench/c/sender --syslog``) and polls the
output file's line count until it holds them all. Two figures:

* lines/s: ``count`` ÷ (load start → the poll that saw the last line written);
* CPU µs per line: user + system CPU time of every process of the server's process tree
  (threads included) over the same window, ÷ ``count``.

Then SIGTERM; the server must exit 0 and its file must hold exactly ``WARMUP + count`` lines,
whose sequence numbers (``seq=NNNNNNNNNN``) are each sent number once. Anything else raises
:class:`BenchError`: the run is a failure, not a figure. Every process started is killed
on the way out.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.procs import BenchError, Proc, failed_senders, is_socket, kill_all, kill_session, tail
from bench.senders import start_flood

WARMUP = 2_000  # lines sent (and written) before the measured load
POLL = 0.005  # seconds between two looks at the output file
STALL = 15.0  # seconds without a new line before the run is failed
START_TIMEOUT = 20.0
STOP_TIMEOUT = 60.0
CHUNK = 1 << 20
SEQ = re.compile(rb"seq=(\d{10}) ")


@dataclass
class SinkSample:
    """One measured run: ``lines`` written in ``seconds``, ``cpu`` seconds of the server."""

    lines: int
    seconds: float
    cpu: float
    processes: int

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.lines * 1e6 if self.lines else 0.0


class LineCounter:
    """Counts the lines of a file that is being appended to, reading only what is new."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._offset = 0

    def poll(self) -> int:
        """The number of complete lines so far (0 while the file does not exist)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                while chunk := f.read(CHUNK):
                    self._offset += len(chunk)
                    self.count += chunk.count(b"\n")
        except FileNotFoundError:
            pass
        return self.count


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds of ``procs`` (threads included).

    Raises:
        BenchError: one of them is gone (a server process exited during the run).
    """
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            raise BenchError(f"server process {proc.pid} exited during the run") from None
        total += times.user + times.system
    return total


def check_sequence(path: str, total: int) -> None:
    """Every sequence number ``0 .. total - 1`` is in the file exactly once, and nothing else.

    Raises:
        BenchError: a line is missing, doubled, or not one the sender wrote.
    """
    seen = [int(s) for s in SEQ.findall(Path(path).read_bytes())]
    distinct = set(seen)
    if len(seen) != total or len(distinct) != total or distinct != set(range(total)):
        missing = total - len(distinct & set(range(total)))
        raise BenchError(
            f"{path}: {len(seen)} sequence numbers, {len(distinct)} distinct, "
            f"{missing} of the {total} sent missing"
        )


def wait_lines(
    counter: LineCounter, want: int, server: Proc, senders: Sequence[Proc], what: str
) -> None:
    """Poll until the file holds ``want`` lines.

    Raises:
        BenchError: more lines than sent, the server exited, a sender failed, or no line
            came for ``STALL`` seconds.
    """
    last_count, last_change = -1, time.monotonic()
    while (count := counter.poll()) < want:
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        failed_senders(senders)
        if server.poll() is not None:
            raise BenchError(f"{what}: exited with {server.returncode} ({count} of {want} lines)")
        if now - last_change > STALL:
            raise BenchError(f"{what}: wrote {count} of {want} lines, then nothing for {STALL} s")
        time.sleep(POLL)
    if count > want:
        raise BenchError(f"{what}: wrote {count} lines, {want} were sent")


def run_syslog_server(
    command: list[str],
    socket_path: str,
    output: str,
    count: int,
    size: int,
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    log: Path,
    what: str,
) -> SinkSample:
    """Measure one run of the server ``command`` (see the module's docstring).

    Raises:
        BenchError: the server failed, did not write exactly what was sent, or did not exit 0.
    """
    with open(log, "wb") as logf:
        server = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=logf, stderr=logf, start_new_session=True
        )
    senders: list[Proc] = []
    try:
        _wait_socket(server, socket_path, what)
        counter = LineCounter(output)
        senders.append(start_flood(socket_path, WARMUP, size, payload="syslog"))
        wait_lines(counter, WARMUP, server, senders, f"{what}, warm-up")
        procs, t0 = tree(server.pid), time.monotonic()
        cpu0 = tree_cpu(procs)
        senders.append(start_flood(socket_path, count, size, payload="syslog", start=WARMUP))
        wait_lines(counter, WARMUP + count, server, senders, what)
        seconds, cpu = time.monotonic() - t0, tree_cpu(procs) - cpu0
        _stop(server, what)
        if counter.poll() != WARMUP + count:
            raise BenchError(f"{what}: {counter.count} lines once stopped, {WARMUP + count} sent")
        check_sequence(output, WARMUP + count)
        return SinkSample(count, seconds, cpu, len(procs))
    except BenchError as exc:
        raise BenchError(f"{exc}\n{tail(log)}") from None
    finally:
        kill_all(senders)
        kill_session(server)


def _wait_socket(server: Proc, path: str, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not is_socket(path):
        if server.poll() is not None:
            raise BenchError(f"{what}: exited with {server.returncode} while starting")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no socket at {path} after {START_TIMEOUT} s")
        time.sleep(0.01)


def _stop(server: Proc, what: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: did not stop within {STOP_TIMEOUT} s of SIGTERM") from None
    if code != 0:
        raise BenchError(f"{what}: exited with {code} after SIGTERM")

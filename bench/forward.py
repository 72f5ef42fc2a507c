"""Forwarding into JetStream: ugram's sink against what a user would write instead.

    python bench/forward.py [--count N] [--rounds R] [--size B] [--quick]

One local single-node nats-server (JetStream, file storage, a fresh stream per run) and the
C flood sender (``bench/c/sender``, raw datagrams of ``--size`` bytes). Each round measures,
one after the other (interleaved rounds, medians):

* ``nats-py pipelined``: bench/forward_plain.py, one process reading the socket and publishing
  with ``js.publish_async`` (256 outstanding), the fastest a plain nats-py program gets;
* ``nats-py await each``: the same with ``await js.publish()`` per datagram;
* ``ugram no-op``: ugram with a batch handler that does nothing, 1 and 2 workers (what ugram
  costs without the broker);
* ``ugram Forward``: ``ugram.builtin:Forward``, 1 and 2 workers, ``max_in_flight`` 256, and
  1 worker with ``max_in_flight`` 16 and 1 (the broker's round trip bounds a worker to
  ``max_in_flight / RTT``).

A run's rate is datagrams / seconds from the sender's start to the last message stored (for
the no-op: handled); every run checks that the stream holds exactly what was sent. The RTT
column is the sink's mean publish-to-acknowledgement time (``ugram_forward_rtt_seconds``).
The last line is the headline.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from bench.procs import BenchError, kill_session, python_env, socket_dir  # noqa: E402
from bench.senders import start_flood  # noqa: E402
from bench.table import busy_note, machine_line  # noqa: E402

STREAM, SUBJECT = "BENCH", "bench"
TIMEOUT = 120.0


class Noop:
    """The no-op baseline: a batch handler that does nothing."""

    def handle_batch(self, messages: list[bytes]) -> None:
        pass


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # plain, noop, forward
    workers: int = 1
    in_flight: int = 256
    mode: str = "pipelined"
    share: int = 1  # runs this case with count // share datagrams (the slow ones)
    base: str = ""  # the case its ratio is against


CASES = (
    Case("nats-py pipelined", "plain"),
    Case("nats-py await each", "plain", mode="each", share=10, base="nats-py pipelined"),
    Case("ugram no-op, 1 worker", "noop"),
    Case("ugram no-op, 2 workers", "noop", workers=2),
    Case("Forward, 1 worker", "forward", base="nats-py pipelined"),
    Case("Forward, 2 workers", "forward", workers=2, base="nats-py pipelined"),
    Case("Forward, 1 worker, in-flight 16", "forward", in_flight=16, base="Forward, 1 worker"),
    Case(
        "Forward, 1 worker, in-flight 1",
        "forward",
        in_flight=1,
        share=10,
        base="Forward, 1 worker",
    ),
)


@dataclass
class Sample:
    rate: float
    rtt: float = 0.0  # seconds, mean


@dataclass
class Broker:
    """The bench's nats-server, and a connection that resets and counts the stream."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    nc: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(server):
            raise BenchError("bench/forward.py needs nats-server (apt-get install nats-server)")
        self.port = _free_port()
        argv = [server, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _listens(self.port), 15, "nats-server")
        self.nc = self.run(_connect(self.url))

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def reset_stream(self) -> None:
        self.run(_reset(self.nc))

    def stored(self) -> int:
        return int(self.run(_count(self.nc)))

    def stop(self) -> None:
        if self.nc is not None:
            self.run(self.nc.close())
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)


async def _connect(url: str) -> Any:
    import nats

    return await nats.connect(url)


async def _reset(nc: Any) -> None:
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], duplicate_window=120.0))


async def _count(nc: Any) -> int:
    info = await nc.jetstream().stream_info(STREAM)
    return int(info.state.messages)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def _wait(predicate: Callable[[], object], within: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(poll)


def _metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    found = re.findall(r"^(ugram_[a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


# -- one run -----------------------------------------------------------------------------------


def run_case(case: Case, broker: Broker, count: int, size: int) -> Sample:
    broker.reset_stream()
    with socket_dir() as tmp:
        path = os.path.join(tmp, "s")
        if case.kind == "plain":
            return _run_plain(case, broker, path, count, size)
        return _run_ugram(case, broker, path, count, size)


def _run_plain(case: Case, broker: Broker, path: str, count: int, size: int) -> Sample:
    argv = [sys.executable, str(ROOT / "bench" / "forward_plain.py"), path, broker.url]
    proc = subprocess.Popen(
        [*argv, SUBJECT, str(count), case.mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise BenchError("forward_plain.py did not start")
        started = time.monotonic()
        sender = start_flood(path, count, size)
        _wait(lambda: broker.stored() >= count, TIMEOUT, "the plain publisher", 0.02)
        elapsed = time.monotonic() - started
        sender.wait(30)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _check(broker.stored(), count, case)
    return Sample(count / elapsed)


def _run_ugram(case: Case, broker: Broker, path: str, count: int, size: int) -> Sample:
    port = _free_port()
    handler = "ugram.builtin:Forward" if case.kind == "forward" else "bench.forward:Noop"
    env = {k: v for k, v in python_env().items() if not k.startswith(("UGRAM_", "UGFORWARD_"))}
    env.update(
        UGFORWARD_SERVERS=broker.url,
        UGFORWARD_STREAM=STREAM,
        UGFORWARD_SUBJECT=SUBJECT,
        UGFORWARD_CREATE_STREAM="false",
        UGFORWARD_MAX_IN_FLIGHT=str(case.in_flight),
    )
    argv = [sys.executable, "-m", "ugram", "serve", handler, "--socket", path]
    argv += ["--workers", str(case.workers), "--metrics", f"127.0.0.1:{port}"]
    argv += ["--log-level", "warning", "--max-datagram", str(max(size, 1024))]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, start_new_session=True)
    try:
        _wait_ready(case, path, port)
        started = time.monotonic()
        sender = start_flood(path, count, size)
        if case.kind == "forward":
            _wait(lambda: broker.stored() >= count, TIMEOUT, case.name, 0.02)
        else:
            done = "ugram_handled_total"
            _wait(lambda: _metrics(port).get(done, 0) >= count, TIMEOUT, case.name, 0.02)
        elapsed = time.monotonic() - started
        sender.wait(30)
        counts = _metrics(port)
        proc.send_signal(signal.SIGTERM)
        if proc.wait(60) != 0:
            raise BenchError(f"{case.name}: ugram exited with {proc.returncode}")
    finally:
        kill_session(proc)
    if case.kind == "forward":
        _check(broker.stored(), count, case)
    elif counts.get("ugram_handled_total") != count:
        raise BenchError(f"{case.name}: handled {counts.get('ugram_handled_total')} of {count}")
    rtt_n = counts.get("ugram_forward_rtt_seconds_count", 0)
    rtt = counts.get("ugram_forward_rtt_seconds_sum", 0) / rtt_n if rtt_n else 0.0
    return Sample(count / elapsed, rtt)


def _wait_ready(case: Case, path: str, port: int) -> None:
    def ready() -> bool:
        if not os.path.exists(path):
            return False
        counts = _metrics(port)
        if case.kind == "forward":
            return counts.get("ugram_forward_connected", 0) >= case.workers
        return counts.get("ugram_workers_active", 0) >= case.workers

    _wait(ready, 60, f"{case.name} to start", 0.05)
    time.sleep(0.3)  # every worker past its boot, not only connected


def _check(stored: int, count: int, case: Case) -> None:
    if stored != count:
        raise BenchError(f"{case.name}: the stream holds {stored} messages, {count} were sent")


# -- rounds and the table ----------------------------------------------------------------------


def measure(count: int, size: int, rounds: int) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {case.name: [] for case in CASES}
    root = Path(tempfile.mkdtemp(prefix="ubjs"))
    broker = Broker(root)
    try:
        broker.start()
        for number in range(rounds):
            for case in CASES:
                sample = run_case(case, broker, max(1000, count // case.share), size)
                samples[case.name].append(sample)
                print(f"round {number + 1}: {case.name}: {sample.rate:,.0f}/s", file=sys.stderr)
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    return samples


def report(samples: dict[str, list[Sample]]) -> list[str]:
    rates = {name: [s.rate for s in runs] for name, runs in samples.items()}
    lines = [f"{'case':<36}{'datagrams/s':>14}{'range':>22}{'÷ base':>9}  {'RTT':>9}  base"]
    for case in CASES:
        runs = samples[case.name]
        rate = statistics.median(rates[case.name])
        ratio = ""
        if case.base:
            per_round = [a / b for a, b in zip(rates[case.name], rates[case.base], strict=True)]
            ratio = f"{statistics.median(per_round):.2f}"
        spread = f"{min(rates[case.name]):,.0f}-{max(rates[case.name]):,.0f}"
        rtt = statistics.median(s.rtt for s in runs)
        shown = f"{rtt * 1e6:,.0f} us" if rtt else ""
        lines.append(
            f"{case.name:<36}{rate:>14,.0f}{spread:>22}{ratio:>9}  {shown:>9}  {case.base}"
        )
    return lines


def _ratio(samples: dict[str, list[Sample]], name: str, base: str) -> float:
    """The median of the per-round ratios of two cases (as the table's ``÷ base``)."""
    pairs = zip(samples[name], samples[base], strict=True)
    return statistics.median(a.rate / b.rate for a, b in pairs)


def headline(samples: dict[str, list[Sample]]) -> str:
    med = {name: statistics.median(s.rate for s in runs) for name, runs in samples.items()}
    one_rtt = statistics.median(s.rtt for s in samples["Forward, 1 worker, in-flight 1"])
    two = "Forward, 2 workers"
    return (
        f"headline: Forward {med['Forward, 1 worker']:,.0f}/s (1 worker), "
        f"{med[two]:,.0f}/s (2 workers) = {_ratio(samples, two, 'nats-py pipelined'):.2f} x "
        f"nats-py pipelined ({med['nats-py pipelined']:,.0f}/s), "
        f"{_ratio(samples, two, 'ugram no-op, 2 workers'):.2f} x ugram no-op; "
        f"in-flight 1: {med['Forward, 1 worker, in-flight 1']:,.0f}/s at RTT "
        f"{one_rtt * 1e6:,.0f} us"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000, help="datagrams per run")
    parser.add_argument("--size", type=int, default=64, help="datagram size in bytes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="10k datagrams, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.rounds = 10_000, 1
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    print(machine_line())
    print(f"load: C sender x1, {args.count} datagrams of {args.size} B per run (÷10 for the")
    print(f"one-at-a-time cases); {args.rounds} round(s), interleaved; medians")
    note = busy_note()
    if note:
        print(note)
    started = time.monotonic()
    samples = measure(args.count, args.size, args.rounds)
    print("\n".join(report(samples)))
    print(f"(every run stored exactly what was sent; took {time.monotonic() - started:.0f} s)")
    print(headline(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue #17's bench: DogStatsD lines/s into StatsdAggregator's exposition (1 and 2 workers)
next to its JSON-lines output (2 workers) and a plain single-process Python aggregator, in
interleaved rounds; then the scrape time of /metrics holding 10 k and 100 k series.

usage::

    python bench/statsd_export.py [--rounds 3] [--datagrams 20000]

Each datagram holds 10 DogStatsD lines (counters with tags, a gauge, a timer, a set) of 50
series; one Python sender floods it through a blocking socket. A case's time runs from the
first send to the moment every line is counted (the exposition: the supervisor's
``ugram_statsd_lines_total``; jsonl: ``ugram_handled_total``; the baseline: its own count).
The table gives each case's median lines/s and the median of its per-round ratio to the
baseline; the last line is the headline.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

LINES_PER_DATAGRAM = 10
BASELINE = r"""
import socket, sys
path, total = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
print("ready", flush=True)
counters, gauges, timers, sets, lines = {}, {}, {}, {}, 0
while lines < total:
    data = sock.recv(65536)
    for line in data.split(b"\n"):
        head, _, rest = line.partition(b"|")
        name, _, value = head.partition(b":")
        parts = rest.split(b"|")
        kind, tags, rate = parts[0], b"", 1.0
        for part in parts[1:]:
            if part[:1] == b"#":
                tags = part
            elif part[:1] == b"@":
                rate = float(part[1:])
        key = (name, tags)
        if kind == b"c":
            counters[key] = counters.get(key, 0.0) + float(value) / rate
        elif kind == b"g":
            gauges[key] = float(value)
        elif kind == b"s":
            sets.setdefault(key, set()).add(value)
        else:
            entry = timers.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += float(value)
        lines += 1
print("done", flush=True)
"""


def datagram(i: int) -> bytes:
    lines = [f"app.req{j}:1|c|#env:prod,route:r{j}" for j in range(6)]
    lines += [f"app.temp{i % 10}:{i}|g", f"app.lat{i % 10}:{i % 97}|ms|#route:r{i % 5}"]
    lines += ["app.hits:2|c|@0.5|#env:dev", f"app.users:u{i % 101}|s"]
    return "\n".join(lines).encode()


def send(path: str, datagrams: list[bytes]) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deadline = time.monotonic() + 20
    while True:
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    for d in datagrams:
        sock.send(d)
    sock.close()


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ugram(tmp: str, workers: int, output: str, extra: dict[str, str] | None = None):
    path, port = os.path.join(tmp, f"u{time.monotonic_ns()}.sock"), free_port()
    env = {**os.environ, "UGSTATSD_OUTPUT": output, "UGSTATSD_DIR": os.path.join(tmp, "agg")}
    env.update(extra or {})
    cmd = [sys.executable, "-m", "ugram", "serve", "ugram.builtin:StatsdAggregator"]
    cmd += ["--codec", "statsd", "--socket", path, "--workers", str(workers)]
    cmd += ["--metrics", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            metric(url, "ugram_up")
            if os.path.exists(path):
                return proc, path, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("ugram did not start")
        time.sleep(0.05)


def run_ugram(tmp: str, workers: int, output: str, datagrams: list[bytes]) -> float:
    proc, path, url = ugram(tmp, workers, output)
    total = len(datagrams) * LINES_PER_DATAGRAM
    name, want = ("ugram_statsd_lines_total", total)
    if output == "jsonl":
        name, want = "ugram_handled_total", len(datagrams)
    try:
        t0 = time.perf_counter()
        send(path, datagrams)
        while metric(url, name) < want:
            time.sleep(0.01)
        return total / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(os.path.join(tmp, "agg"), ignore_errors=True)


def run_baseline(tmp: str, datagrams: list[bytes]) -> float:
    path = os.path.join(tmp, f"b{time.monotonic_ns()}.sock")
    total = len(datagrams) * LINES_PER_DATAGRAM
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE, path, str(total)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the baseline aggregator did not start")
    t0 = time.perf_counter()
    send(path, datagrams)
    proc.stdout.readline()
    rate = total / (time.perf_counter() - t0)
    proc.wait(30)
    return rate


def scrape_seconds(tmp: str, series: int) -> float:
    extra = {"UGSTATSD_MAX_SERIES": str(series + 10)}
    proc, path, url = ugram(tmp, 2, "prometheus", extra)
    try:
        send(path, [f"s.c:1|c|#id:{i}".encode() for i in range(series)])
        while metric(url, "ugram_statsd_series") < series:
            time.sleep(0.1)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=120) as response:
                response.read()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--datagrams", type=int, default=20_000)
    args = parser.parse_args()
    datagrams = [datagram(i) for i in range(args.datagrams)]
    cases = {
        "exposition, 1 worker": lambda t: run_ugram(t, 1, "prometheus", datagrams),
        "exposition, 2 workers": lambda t: run_ugram(t, 2, "prometheus", datagrams),
        "jsonl, 2 workers": lambda t: run_ugram(t, 2, "jsonl", datagrams),
        "plain Python aggregator": lambda t: run_baseline(t, datagrams),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved: each round runs every case once
            for name, case in cases.items():
                rates[name].append(case(tmp))
        base = rates["plain Python aggregator"]
        print(f"{'case':28} {'lines/s':>10} {'min':>10} {'max':>10} {'÷ base':>7}")
        for name, values in rates.items():
            ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
            med = statistics.median(values)
            print(f"{name:28} {med:10.0f} {min(values):10.0f} {max(values):10.0f} {ratio:7.2f}")
        scrapes = {n: scrape_seconds(tmp, n) for n in (10_000, 100_000)}
        for n, seconds in scrapes.items():
            print(f"scrape of {n} series: {seconds * 1000:.0f} ms")
    best = max(("exposition, 1 worker", "exposition, 2 workers"), key=lambda n: rates[n][-1])
    ratio = statistics.median(v / b for v, b in zip(rates[best], base, strict=True))
    print(
        f"headline: exposition {best.split(', ')[1]} {statistics.median(rates[best]):.0f} "
        f"lines/s = {ratio:.2f} x the plain Python aggregator; scrape 100k series "
        f"{scrapes[100_000] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()

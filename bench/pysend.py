"""Python load generators: a flood sender (the fallback when no C compiler exists) and a paced
sender that stamps each datagram with its send time (for latency runs).

usage::

    python -m bench.pysend flood PATH COUNT SIZE [--json] [--start=N]
    python -m bench.pysend paced PATH COUNT SIZE RATE

``flood`` sends exactly what ``bench/c/sender`` sends (raw: little-endian u64 sequence number
then ``x`` padding; ``--json``: the same JSON record padded to SIZE), as fast as a blocking
socket allows. ``paced`` sends COUNT datagrams of SIZE bytes at RATE datagrams per second on an
absolute schedule (no drift), each starting with ``time.time_ns()`` of its send as a
little-endian u64, and prints ``sent=N seconds=S`` (its achieved rate) on exit. Both retry
while the server is not bound yet and exit 1 with a message on any other error.
"""

from __future__ import annotations

import socket
import sys
import time

RETRY_SECONDS = 10.0
JSON_HEAD = b'{"seq":'
JSON_MID = b',"name":"metric.name","value":1.5,"tags":["a:b"],"pad":"'
JSON_TAIL = b'"}'
MIN_PACED_SIZE = 8


def connect(path: str) -> socket.socket:
    """A blocking datagram socket connected to ``path``, retrying while nobody is bound."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    target = "\0" + path[1:] if path.startswith("@") else path
    deadline = time.monotonic() + RETRY_SECONDS
    while True:
        try:
            sock.connect(target)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.002)


def payload(seq: int, size: int, json_payload: bool) -> bytes:
    """The datagram ``bench/c/sender`` would send with sequence number ``seq``."""
    if json_payload:
        head = JSON_HEAD + str(seq).encode() + JSON_MID
        pad = size - len(head) - len(JSON_TAIL)
        if pad < 0:
            raise ValueError(f"--json needs SIZE >= {len(head) + len(JSON_TAIL)}")
        return head + b"x" * pad + JSON_TAIL
    if size < 8:
        return b"x" * size
    return seq.to_bytes(8, "little") + b"x" * (size - 8)


def flood(path: str, count: int, size: int, json_payload: bool = False, start: int = 0) -> None:
    """Send ``count`` datagrams as fast as the (blocking) socket takes them."""
    sock = connect(path)
    try:
        send = sock.send
        if json_payload:
            for seq in range(start, start + count):
                send(payload(seq, size, True))
        elif size < 8:
            data = payload(0, size, False)
            for _ in range(count):
                send(data)
        else:
            buf = bytearray(payload(0, size, False))
            view = memoryview(buf)
            for seq in range(start, start + count):
                view[:8] = seq.to_bytes(8, "little")
                send(buf)
    finally:
        sock.close()


def paced(path: str, count: int, size: int, rate: float) -> tuple[int, float]:
    """Send ``count`` time-stamped datagrams at ``rate``/s; return (sent, seconds)."""
    if size < MIN_PACED_SIZE:
        raise ValueError(f"paced datagrams carry an 8-byte time stamp: SIZE >= {MIN_PACED_SIZE}")
    sock = connect(path)
    buf = bytearray(b"x" * size)
    view = memoryview(buf)
    send, now_ns, clock, sleep = sock.send, time.time_ns, time.perf_counter, time.sleep
    interval = 1.0 / rate
    sent = 0
    t0 = clock()
    try:
        while sent < count:
            # Send everything due by now, then sleep until the next one is due: the sleep
            # granularity (~60 µs) sets the burst size, the schedule stays absolute.
            due = min(count, int((clock() - t0) * rate) + 1)
            while sent < due:
                view[:8] = now_ns().to_bytes(8, "little")
                send(buf)
                sent += 1
            wait = t0 + sent * interval - clock()
            if wait > 0:
                sleep(wait)
    finally:
        sock.close()
    return sent, clock() - t0


def main(argv: list[str]) -> int:
    flags = [a for a in argv if a.startswith("--")]
    args = [a for a in argv if not a.startswith("--")]
    try:
        if args[:1] == ["flood"] and len(args) == 4:
            start = 0
            for flag in flags:
                if flag.startswith("--start="):
                    start = int(flag.split("=", 1)[1])
                elif flag != "--json":
                    raise ValueError(f"unknown flag {flag}")
            flood(args[1], int(args[2]), int(args[3]), "--json" in flags, start)
            return 0
        if args[:1] == ["paced"] and len(args) == 5 and not flags:
            sent, seconds = paced(args[1], int(args[2]), int(args[3]), float(args[4]))
            print(f"sent={sent} seconds={seconds:.6f}", flush=True)
            return 0
    except (OSError, ValueError) as exc:
        print(f"pysend: {exc}", file=sys.stderr)
        return 1
    print(
        "usage: python -m bench.pysend flood PATH COUNT SIZE [--json] [--start=N]\n"
        "       python -m bench.pysend paced PATH COUNT SIZE RATE",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

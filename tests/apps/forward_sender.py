"""A blocking sender that notices backpressure:
``python forward_sender.py PATH PREFIX COUNT [RATE [PAD]]``.

Sends ``{"s": PREFIX, "i": i}`` (JSON, with ``"p"``: PAD bytes of padding) for i < COUNT, at
most RATE a second (0: as fast as it can), each send waiting at most 0.25 s and
tried again after that, so a server that stops reading makes it wait, never lose. Prints
one JSON line at the end: how many it sent, how many sends had to wait past 0.25 s, and the
longest wait for one datagram in seconds.
"""

import json
import socket
import sys
import time


def main() -> None:
    path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    pad = "x" * (int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(0.25)
    stalls, longest, begun = 0, 0.0, time.monotonic()
    for i in range(count):
        if rate and i % 50 == 0:
            time.sleep(max(0.0, begun + i / rate - time.monotonic()))
        message = {"s": prefix, "i": i, "p": pad} if pad else {"s": prefix, "i": i}
        payload = json.dumps(message).encode()
        started = time.monotonic()
        while True:
            try:
                sock.sendto(payload, path)
                break
            except (TimeoutError, BlockingIOError):
                stalls += 1
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.01)
        longest = max(longest, time.monotonic() - started)
    print(json.dumps({"sent": count, "stalls": stalls, "longest": round(longest, 3)}))


if __name__ == "__main__":
    main()

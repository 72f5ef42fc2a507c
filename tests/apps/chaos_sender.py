"""A flood sender for the chaos soak: ``python chaos_sender.py PATH NAME MAX_SECONDS``.

Sends ``{"s":"NAME","q":SEQ}`` for SEQ = 0, 1, ... with blocking sends on one connected
socket, as fast as the server takes them, until a send fails (the server shut down) or
MAX_SECONDS pass (a safety net). Then prints one JSON line: ``sent`` (how many sends the
kernel accepted: SEQ 0 to sent - 1), ``error`` (the exception that stopped it, or
``"deadline"``) and ``error_at`` (``time.monotonic()`` of that moment, which the test
compares with when it sent SIGTERM: the clock is system-wide).
"""

import json
import socket
import sys
import time

SEND_TIMEOUT = 30.0  # seconds one send may wait: a wedged server fails the soak, never hangs it


def main() -> None:
    path, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(SEND_TIMEOUT)
    sock.connect(path)
    prefix = f'{{"s":"{name}","q":'.encode()
    end = time.monotonic() + seconds
    sent, error = 0, "deadline"
    try:
        while True:
            for _ in range(100):
                sock.send(b"%s%d}" % (prefix, sent))
                sent += 1
            if time.monotonic() > end:
                break
    except OSError as exc:
        error = type(exc).__name__
    print(json.dumps({"sent": sent, "error": error, "error_at": time.monotonic()}))


if __name__ == "__main__":
    main()

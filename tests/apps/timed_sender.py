"""Sends ``PREFIX:i`` for i = 0, 1, ... for SECONDS, then prints how many it sent.

``python timed_sender.py PATH PREFIX SECONDS``. Blocking sends: every one the kernel accepted
counts, however long the server makes it wait.
"""

import socket
import sys
import time


def main() -> None:
    path, prefix, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        for _ in range(100):
            sock.sendto(f"{prefix}:{sent}".encode(), path)
            sent += 1
    print(sent)


if __name__ == "__main__":
    main()

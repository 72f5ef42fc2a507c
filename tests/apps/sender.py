"""A blocking sender process: ``python sender.py PATH PREFIX COUNT`` sends PREFIX:i, i < COUNT."""

import socket
import sys
import time


def main() -> None:
    path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    for i in range(count):
        sock.send(f"{prefix}:{i}".encode())


if __name__ == "__main__":
    main()

"""Test handlers for the handler and API tests, run by real ugram workers."""

from __future__ import annotations

import os

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class Lifecycle:
    """Writes ``setup``, each payload, then ``teardown <count>`` to ``$UGTEST_OUT/<pid>.life``.

    ``handle`` refuses to run before ``setup``, so a missing setup shows up as handler errors
    and as a file without its first line.
    """

    def __init__(self) -> None:
        self.fd = -1
        self.count = 0

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.life", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(self.fd, b"setup\n")

    def handle(self, data: bytes) -> None:
        if self.fd < 0:
            raise RuntimeError("handle() called before setup()")
        self.count += 1
        os.write(self.fd, data + b"\n")

    def teardown(self) -> None:
        os.write(self.fd, f"teardown {self.count}\n".encode())
        os.close(self.fd)

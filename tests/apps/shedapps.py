"""A handler that asks the receiver to shed new datagrams, as a forwarding sink's
``drop_newest`` does during a broker outage, without a broker (tests/integration/
test_shedding.py)."""

from __future__ import annotations

import os
import time

from ugram import context

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class ShedOnce:
    """Worker 0, on the first record it gets (once per server run: ``$UGTEST_OUT/shed``
    marks it), asks for shedding (``$UGTEST_OUT/shedding`` says so) and holds that record
    until ``$UGTEST_OUT/release`` exists, then stops asking (and removes ``shedding``).
    Every record handled is appended to ``$UGTEST_OUT/<pid>.log`` as ``<worker> <payload>``."""

    def setup(self) -> None:
        self.fd = os.open(f"{OUT}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle(self, data: bytes) -> None:
        index = context.worker_index()
        if index == 0 and self._first():
            context.shed_new(self, True)
            os.close(os.open(f"{OUT}/shedding", os.O_WRONLY | os.O_CREAT))
            while not os.path.exists(f"{OUT}/release"):
                context.keep_alive()
                time.sleep(0.01)
            context.shed_new(self, False)
            os.unlink(f"{OUT}/shedding")
        os.write(self.fd, f"{index} ".encode() + data + b"\n")

    def _first(self) -> bool:
        try:
            os.close(os.open(f"{OUT}/shed", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

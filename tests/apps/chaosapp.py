"""The chaos soak's handler (tests/chaos): records every payload, can be deployed broken,
and leaks memory in some workers so that ``max_rss`` recycles them.

* Every payload is appended, one line each, to ``$UGTEST_OUT/<pid>-<slot>.log`` with one
  ``write()`` before the handler returns: the kernel has the line even if the worker is
  SIGKILLed a moment later, so the files hold every record a worker handled (at least once),
  in the order that worker handled them, and the name says which process and slot it was.
* While the file ``$UGCHAOS_BROKEN`` exists, importing this module fails (a bad deploy: a
  SIGHUP then must abandon the reload, and a worker respawned meanwhile cannot boot).
* Workers of even slots (the title says ``ugram: worker N``) start ``HEADROOM`` below
  ``$UGCHAOS_MAX_RSS`` MiB resident and keep ``$UGCHAOS_LEAK`` bytes of each record forever,
  so ``max_rss`` recycles them after a known number of records (HEADROOM / LEAK, plus up
  to one check interval); the others are recycled by ``max_records`` only.
* Each record costs ``$UGCHAOS_WORK_US`` microseconds of CPU (0: none) before its line is
  written, so that workers, not the receiver, can be what holds the flood back, and a kill
  mid-record usually finds the record not yet written (it must be replayed, or it is lost).
"""

from __future__ import annotations

import os
import time

import psutil
import setproctitle

OUT = os.environ.get("UGTEST_OUT", "/tmp")
BROKEN = os.environ.get("UGCHAOS_BROKEN", "")
LEAK = int(os.environ.get("UGCHAOS_LEAK", "0"))
MAX_RSS = int(os.environ.get("UGCHAOS_MAX_RSS", "0")) << 20
WORK = int(os.environ.get("UGCHAOS_WORK_US", "0")) / 1e6
HEADROOM = 8 << 20

if BROKEN and os.path.exists(BROKEN):
    raise RuntimeError(f"deployed broken on purpose ({BROKEN} exists)")


def slot() -> int:
    """This worker's slot, from its process title (-1 when there is none)."""
    _, _, last = setproctitle.getproctitle().rpartition(" ")
    return int(last) if last.isdigit() else -1


class Recorder:
    """Appends each payload to ``$UGTEST_OUT/<pid>-<slot>.log``; leaks in even slots."""

    def setup(self) -> None:
        index = slot()
        path = f"{OUT}/{os.getpid()}-{index}.log"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.hoard: list[bytes] = []
        self.leak = LEAK if MAX_RSS and index % 2 == 0 else 0
        if self.leak:
            ballast = MAX_RSS - HEADROOM - psutil.Process().memory_info().rss
            self.hoard.append(b"x" * max(0, ballast))  # written, so resident

    def handle(self, data: bytes) -> None:
        if WORK:  # the work first, its effect (the line) last: a kill in between loses it
            end = time.perf_counter() + WORK
            while time.perf_counter() < end:
                pass
        os.write(self.fd, data + b"\n")
        if self.leak:
            self.hoard.append(b"x" * self.leak)

    def teardown(self) -> None:
        os.close(self.fd)

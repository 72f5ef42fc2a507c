"""A Recorder whose first worker process is SIGKILLed at one exact point of the record loop:
``$UGTEST_KILL_AT`` is ``before-ack`` (the record handled and counted where the worker counts,
its tail store not done) or ``after-ack`` (the tail stored, nothing after it), at the
``$UGTEST_KILL_AFTER``-th record. Pure-Python loop only: the kill point is found by watching
the stores to the ring's control block, which the C loop makes without Python.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from seqrec import Recorder as Recorder

from ugram.ring import TAIL
from ugram.workers import loop

OUT = os.environ.get("UGTEST_OUT", "/tmp")
KILL_AT = os.environ.get("UGTEST_KILL_AT", "")
KILL_AFTER = int(os.environ.get("UGTEST_KILL_AFTER", "100"))


class KillAtTailStore:
    """The ring's control block, with a SIGKILL of this process around one tail store."""

    def __init__(self, ctl: memoryview) -> None:
        self._ctl = ctl
        self._acks = 0

    def __getitem__(self, index: Any) -> Any:
        return self._ctl[index]

    def __setitem__(self, index: int, value: int) -> None:
        if index == TAIL:
            self._acks += 1
            if self._acks == KILL_AFTER and KILL_AT == "before-ack":
                os.kill(os.getpid(), signal.SIGKILL)
        self._ctl[index] = value
        if index == TAIL and self._acks == KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


_recover = loop.Worker.recover


def _recover_then_arm(self: loop.Worker) -> None:
    _recover(self)
    try:  # only the first worker process dies: its successor must finish the job
        os.close(os.open(f"{OUT}/killed", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    watched = KillAtTailStore(self.ring.ctl)
    self.ring.ctl = watched  # type: ignore[assignment]
    if hasattr(self, "ctl"):
        self.ctl = watched  # type: ignore[assignment]


loop.Worker.recover = _recover_then_arm  # type: ignore[method-assign]

"""What a handler may know of the worker that runs it, and tell it.

A handler that waits on purpose inside ``handle_batch`` (``ugram.forward`` waiting for a
broker's acknowledgements during an outage) calls :func:`keep_alive` while it waits, so that
the liveness check (``worker_timeout``) does not take it for a handler stuck on a record and
kill it: a replacement would only replay the batch and wait again, and after
``poison_attempts`` deaths the record would be moved to the dead-letter file. Outside a
worker (a test calling the handler directly) every function here answers as for a worker
with nothing in its ring.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .stats import Slot

_BUSY = int(Slot.BUSY_SINCE_NS)


class _Worker:
    counters: memoryview | None = None
    backlog: Callable[[], int] | None = None
    index = -1
    server_id = ""
    ppid = 0


_worker = _Worker()


def bind_worker(
    index: int, server_id: str, counters: memoryview, backlog: Callable[[], int]
) -> None:
    """Called once by the worker process before it handles records (not by handlers)."""
    _worker.index, _worker.server_id = index, server_id
    _worker.counters, _worker.backlog = counters, backlog
    _worker.ppid = os.getppid()


def keep_alive() -> None:
    """Say that the records in hand are still being worked on (call from the thread that
    runs the handler, at least every ``worker_timeout`` seconds while waiting)."""
    counters = _worker.counters
    if counters is not None and counters[_BUSY]:
        counters[_BUSY] = time.monotonic_ns()


def backlog_bytes() -> int:
    """Bytes in this worker's ring that are not acknowledged yet (the batch in hand
    included): what would be replayed if the worker died now. 0 outside a worker."""
    return _worker.backlog() if _worker.backlog is not None else 0


def worker_index() -> int:
    """This worker's slot (0-based), or -1 outside a worker."""
    return _worker.index


def server_id() -> str:
    """The random id drawn when the server started ("" outside a worker)."""
    return _worker.server_id


def orphaned() -> bool:
    """True when the supervisor that started this worker is gone (its rings with it): a
    handler waiting on something should give up and let the process exit."""
    return bool(_worker.ppid) and os.getppid() != _worker.ppid

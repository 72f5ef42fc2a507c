"""A worker that waited on purpose (``keep_alive``) longer than worker_timeout is alive when
its batch ends: the watchdog must not take the moment between two batches for a freeze.

Found by CI: a forwarding worker that waited out a broker outage (keep_alive all along) was
killed as "unresponsive" right after its batch went through, before it took the next one,
because its progress counter had not moved for the whole outage and its heartbeat (written
only when it goes to sleep) was older still.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ugram import context, speedups
from ugram.config import Config
from ugram.health import Liveness, stall_reason
from ugram.ring import Ring
from ugram.stats import Slot, Stats, worker_block
from ugram.workers.dispatch import Dispatcher
from ugram.workers.handler import Handler
from ugram.workers.recycling import Recycler

TIMEOUT = 0.2  # worker_timeout, seconds
WAIT = 0.35  # how long the handler waits on purpose, saying so every 50 ms


def _wait_on_purpose(*_: Any) -> None:
    until = time.monotonic() + WAIT
    while time.monotonic() < until:
        context.keep_alive()
        time.sleep(0.05)


@pytest.fixture
def table() -> Iterator[Stats]:
    stats = Stats.create(3)
    yield stats
    stats.close()


@pytest.fixture
def ring() -> Iterator[Ring]:
    ring = Ring.create(4096)
    yield ring
    ring.close()
    os.close(ring.fd)


@pytest.mark.parametrize(
    ("batch", "native"),
    [(True, False), (False, False), (False, True)],
    ids=["handle_batch", "per record", "per record, compiled loop"],
)
def test_a_worker_that_waited_on_purpose_is_alive_after_its_batch(
    table: Stats, ring: Ring, batch: bool, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    helper = speedups.native(native)
    if native and helper is None:
        pytest.skip("ugram._speedups is not built")
    counters = table.block(worker_block(0))
    counters[Slot.HEARTBEAT_NS] = time.monotonic_ns() - 100_000_000_000  # last slept long ago
    monkeypatch.setattr(context._worker, "counters", counters)  # what bind_worker sets
    handler = Handler(
        call=_wait_on_purpose, decode=None, mode="data", setup=None, teardown=None, batch=batch
    )
    dispatcher = Dispatcher(0, handler, ring, counters, Recycler(0, Config()), helper, None, False)
    assert ring.try_put(b"one record", b"", 1)
    ring.publish()
    records = ring.take_batch(10)
    seen = Liveness()
    seen.observe(int(counters[Slot.PROGRESS]), time.monotonic())

    assert dispatcher.step(records) == 1

    # The supervisor's next look: no batch in hand, progress last moved WAIT seconds ago.
    now, now_ns = time.monotonic(), time.monotonic_ns()
    seen.observe(int(counters[Slot.PROGRESS]), now - WAIT)
    assert int(counters[Slot.BUSY_SINCE_NS]) == 0
    assert stall_reason(counters, seen, TIMEOUT, now, now_ns) is None

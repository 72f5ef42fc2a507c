"""Shared counters: the latency histogram, totals, and the liveness check built on them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ugram.health import STUCK, UNRESPONSIVE, Liveness, stall_reason
from ugram.stats import (
    LATENCY_BOUNDS,
    LATENCY_FIRST,
    LATENCY_OVERFLOW,
    LATENCY_SUM_NS,
    Slot,
    Stats,
    observe_latency,
    supervisor_block,
    worker_block,
)


@pytest.fixture
def stats() -> Iterator[Stats]:
    table = Stats.create(4)  # receiver, two workers, supervisor
    yield table
    table.close()


def _bucket_of(stats: Stats, ns: int) -> int:
    block = stats.block(worker_block(0))
    before = list(block[LATENCY_FIRST:LATENCY_SUM_NS])
    observe_latency(block, ns)
    after = list(block[LATENCY_FIRST:LATENCY_SUM_NS])
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert len(changed) == 1
    return changed[0]


@pytest.mark.parametrize(
    ("ns", "bucket"),
    [
        (-5, 0),  # a clock step backwards counts as 0
        (0, 0),
        (1_000, 0),  # <= 1 us
        (1_001, 1),
        (2_000, 1),  # bounds are inclusive, like Prometheus's le
        (2_001, 2),
        (1_000_000, 10),  # 1 ms <= 1024 us
        (int(LATENCY_BOUNDS[-1] * 1e9), len(LATENCY_BOUNDS) - 1),
        (10**15, LATENCY_OVERFLOW - LATENCY_FIRST),
    ],
)
def test_latency_lands_in_the_smallest_bucket_whose_bound_holds_it(
    stats: Stats, ns: int, bucket: int
) -> None:
    assert _bucket_of(stats, ns) == bucket
    if bucket < len(LATENCY_BOUNDS):
        assert max(ns, 0) / 1e9 <= LATENCY_BOUNDS[bucket]
    if 0 < bucket < len(LATENCY_BOUNDS):
        assert ns / 1e9 > LATENCY_BOUNDS[bucket - 1]


def test_latency_sums_worker_blocks_only(stats: Stats) -> None:
    observe_latency(stats.block(worker_block(0)), 1_500)
    observe_latency(stats.block(worker_block(1)), 3_000_000)
    observe_latency(stats.block(worker_block(1)), 3_000_000)
    stats.block(0)[LATENCY_FIRST] = 99  # the receiver's and supervisor's slots are not counted
    stats.block(supervisor_block(2))[LATENCY_FIRST] = 99

    lat = stats.latency()

    assert lat.count == 3
    assert lat.sum_seconds == pytest.approx(0.0060015)
    assert lat.counts[1] == 1
    assert lat.counts[12] == 2  # 3 ms <= 4096 us
    assert lat.quantile(0.3) == LATENCY_BOUNDS[1]
    assert lat.quantile(0.5) == LATENCY_BOUNDS[12]
    assert lat.quantile(1.0) == LATENCY_BOUNDS[12]


def test_quantile_of_an_empty_or_overflowing_histogram_is_none(stats: Stats) -> None:
    assert stats.latency().quantile(0.5) is None
    observe_latency(stats.block(worker_block(0)), 10**15)
    assert stats.latency().quantile(0.5) is None


def test_snapshot_sums_each_slot_over_every_block(stats: Stats) -> None:
    receiver, w0, w1 = stats.block(0), stats.block(worker_block(0)), stats.block(worker_block(1))
    sup = stats.block(supervisor_block(2))
    receiver[Slot.RECEIVED], receiver[Slot.OVERSIZED], receiver[Slot.INVALID] = 10, 2, 1
    w0[Slot.HANDLED], w1[Slot.HANDLED], w1[Slot.INVALID], w1[Slot.HANDLER_ERRORS] = 3, 3, 1, 2
    receiver[Slot.BLOCKED_NS] = 1_500_000_000
    sup[Slot.RESTARTS], sup[Slot.BOOT_FAILURES] = 1, 4

    snap = stats.snapshot()

    assert (snap.received, snap.handled, snap.handler_errors) == (10, 6, 2)
    assert (snap.invalid, snap.oversized, snap.rejected) == (2, 2, 4)
    assert snap.blocked_seconds == 1.5
    assert (snap.restarts, snap.boot_failures) == (1, 4)


def test_histogram_slots_do_not_overlap_counters() -> None:
    assert max(Slot) < LATENCY_FIRST
    assert LATENCY_OVERFLOW < LATENCY_SUM_NS == 63


# -- liveness -------------------------------------------------------------------------------------

NOW, NOW_NS, TIMEOUT = 1000.0, 1000 * 10**9, 2.0


def _worker(
    stats: Stats, *, busy_since: float = 0.0, heartbeat: float, progress: int
) -> memoryview:
    block = stats.block(worker_block(0))
    block[Slot.BUSY_SINCE_NS] = int(busy_since * 1e9)
    block[Slot.HEARTBEAT_NS] = int(heartbeat * 1e9)
    block[Slot.PROGRESS] = progress
    return block


def test_a_busy_worker_is_stuck_only_after_the_timeout(stats: Stats) -> None:
    seen = Liveness(progress=5, since=NOW - 100)
    block = _worker(stats, busy_since=NOW - 1.9, heartbeat=NOW - 100, progress=5)
    assert stall_reason(block, seen, TIMEOUT, NOW, NOW_NS) is None
    block[Slot.BUSY_SINCE_NS] = int((NOW - 2.1) * 1e9)
    assert stall_reason(block, seen, TIMEOUT, NOW, NOW_NS) == STUCK


def test_an_idle_worker_with_a_fresh_heartbeat_is_alive(stats: Stats) -> None:
    seen = Liveness(progress=5, since=NOW - 100)
    block = _worker(stats, heartbeat=NOW - 0.05, progress=5)
    assert stall_reason(block, seen, TIMEOUT, NOW, NOW_NS) is None


def test_an_idle_worker_without_heartbeat_or_progress_is_unresponsive(stats: Stats) -> None:
    seen = Liveness(progress=5, since=NOW - 3)
    block = _worker(stats, heartbeat=NOW - 3, progress=5)
    assert stall_reason(block, seen, TIMEOUT, NOW, NOW_NS) == UNRESPONSIVE


def test_progress_the_supervisor_has_not_seen_yet_counts_as_alive(stats: Stats) -> None:
    # /healthz may look between the worker's progress and the supervisor's next tick.
    seen = Liveness(progress=5, since=NOW - 3)
    block = _worker(stats, heartbeat=NOW - 3, progress=6)
    assert stall_reason(block, seen, TIMEOUT, NOW, NOW_NS) is None


def test_recent_progress_keeps_a_worker_between_records_alive(stats: Stats) -> None:
    seen = Liveness()
    seen.observe(7, NOW - 0.01)
    block = _worker(stats, heartbeat=NOW - 60, progress=7)  # busy for a minute, no idle pass
    assert stall_reason(block, seen, TIMEOUT, NOW, NOW_NS) is None


def test_liveness_notes_when_progress_last_moved() -> None:
    seen = Liveness()
    seen.observe(1, 10.0)
    seen.observe(1, 20.0)
    assert (seen.progress, seen.since) == (1, 10.0)
    seen.observe(2, 30.0)
    assert (seen.progress, seen.since) == (2, 30.0)

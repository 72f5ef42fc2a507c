"""Counters handlers declare (ugram.handler_stats): written by a worker, read by the supervisor."""

from __future__ import annotations

import time

import pytest

from ugram.handler_stats import (
    Alarm,
    Counter,
    Gauge,
    Histogram,
    Registry,
    Table,
    alarms,
    read,
)


def _declare(registry: Registry) -> tuple[Counter, Gauge, Histogram, Alarm]:
    return (
        Counter("app_sent_total", "Sent.", {"to": "a"}, registry=registry),
        Gauge("app_in_flight", "In flight.", registry=registry),
        Histogram("app_rtt_seconds", "Round trips.", (0.001, 0.01), 1e-9, registry=registry),
        Alarm("app_down_seconds", "the broker is down", 5.0, registry=registry),
    )


@pytest.fixture
def table() -> Table:
    return Table.create(2)


def test_two_workers_are_read_as_one(table: Table) -> None:
    for index, sent in ((0, 3), (1, 4)):
        registry = Registry()
        counter, gauge, histogram, _ = _declare(registry)
        registry.bind(table.block(index))
        counter.inc(sent)
        gauge.set(index + 1)
        histogram.observe(500_000)  # 0.5 ms: the first bucket
        histogram.observe(50_000_000)  # 50 ms: above every bound
    readings = {r.name: r for r in read(table, [0, 1], time.monotonic_ns())}
    assert readings["app_sent_total"].value == 7
    assert readings["app_sent_total"].labels == {"to": "a"}
    assert readings["app_in_flight"].value == 3  # gauges sum by default
    rtt = readings["app_rtt_seconds"]
    assert rtt.counts == [2, 0, 2]
    assert rtt.sum == pytest.approx(0.101)
    assert readings["app_down_seconds"].value == 0


def test_an_alarm_past_its_threshold_makes_healthz_say_so(table: Table) -> None:
    registry = Registry()
    *_, alarm = _declare(registry)
    registry.bind(table.block(0))
    now = time.monotonic_ns()
    alarm.raise_at(now - 7 * 10**9)
    readings = read(table, [0, 1], now)
    assert alarms(readings) == ["the broker is down for more than 5s (7s)"]
    alarm.clear()
    assert alarms(read(table, [0], now)) == []


def test_a_replacement_declaring_the_same_continues_the_counts(table: Table) -> None:
    first = Registry()
    counter, *_ = _declare(first)
    first.bind(table.block(0))
    counter.inc(5)
    second = Registry()  # the next process on the slot, before it binds
    again, *_ = _declare(second)
    again.inc(2)  # counted privately during setup()
    second.bind(table.block(0))
    again.inc(1)
    assert read(table, [0], 0)[0].value == 8


def test_a_different_handler_starts_from_zero(table: Table) -> None:
    first = Registry()
    counter, *_ = _declare(first)
    first.bind(table.block(0))
    counter.inc(5)
    second = Registry()
    other = Counter("other_total", "Another handler's.", registry=second)
    second.bind(table.block(0))
    other.inc()
    assert [(r.name, r.value) for r in read(table, [0], 0)] == [("other_total", 1)]


def test_a_block_whose_schema_is_being_written_is_left_out(table: Table) -> None:
    registry = Registry()
    _declare(registry)
    registry.bind(table.block(0))
    block = table.block(0)
    block[0] |= 1  # odd generation: a writer is in the middle of the schema
    assert read(table, [0], 0) == []
    block[0] += 1
    assert len(read(table, [0], 0)) == 4


def test_bad_names_and_duplicates_are_refused() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="not a valid metric"):
        Counter("app-sent", "Bad name.", registry=registry)
    Counter("app_sent_total", "Sent.", registry=registry)
    with pytest.raises(ValueError, match="declared already"):
        Counter("app_sent_total", "Sent.", registry=registry)

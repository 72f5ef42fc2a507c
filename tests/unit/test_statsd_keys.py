"""The aggregator's per-line shortcuts keep its totals exact: series keys built once (and
rebuilt after their cache is emptied), the interval's bucket kept between lines (and let go
once it is written)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ugram import Datagram
from ugram.builtin import StatsdAggregator
from ugram.builtin.aggregate import Bucket, Limits, SeriesKeys, dump_bucket, render_interval
from ugram.codecs.statsd import parse_packet
from ugram.ring import Record


def test_a_series_key_is_built_once_and_shared() -> None:
    keys = SeriesKeys(max_tags=2)
    first = keys.key("m", ("b", "a", "b"))
    assert first == ("m", ("a", "b"))
    assert keys.key("m", ("b", "a", "b")) is first  # the same object, line after line
    assert keys.key("m", ("a", "b")) == first  # another order: the same series
    assert keys.key("m", ("a", "b", "c")) is None  # three distinct tags: refused


def test_keys_stay_right_after_the_cache_is_emptied() -> None:
    keys = SeriesKeys(max_series=10)  # holds 1024 pairs
    for i in range(3000):
        assert keys.key(f"m{i % 1500}", (f"t{i % 7}", "a")) == (
            f"m{i % 1500}",
            tuple(sorted({f"t{i % 7}", "a"})),
        )
    assert len(keys._keys) <= 1024


lines = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["c", "g", "s", "h", "ms", "d"]),
        st.integers(1, 9),
        st.lists(st.sampled_from(["x:1", "y", "x:1", "z:2"]), max_size=3),
        st.sampled_from(["", "|@0.5"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60)
@given(lines)
def test_a_bucket_with_shared_keys_equals_one_built_line_by_line(
    batch: list[tuple[str, str, int, list[str], str]],
) -> None:
    shared = SeriesKeys(max_series=1)  # a tiny cache: emptied again and again
    bucket = Bucket(0.0, Limits(), shared)
    for i, (name, kind, value, tags, rate) in enumerate(batch):
        tag_part = f"|#{','.join(tags)}" if tags else ""
        packet = f"{name}:{'m' + str(value) if kind == 's' else value}|{kind}{rate}{tag_part}"
        for line in parse_packet(packet.encode()):
            bucket.add(line, i)

    expected: defaultdict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
    for name, kind, value, tags, rate in batch:
        if kind == "c":
            expected[name, tuple(sorted(set(tags)))] += value / (0.5 if rate else 1.0)
    out = render_interval(bucket, 1.0)
    assert {(c.name, tuple(c.tags)): c.value for c in out.counters} == dict(expected)
    counts = sum(s.count for s in (*out.histograms, *out.timers, *out.distributions))
    summary_lines = [(k, r) for _, k, _, _, r in batch if k in ("h", "ms", "d")]
    assert counts == sum(2.0 if r else 1.0 for _, r in summary_lines)


def feed(worker: StatsdAggregator, payload: bytes, at: float) -> None:
    for line in parse_packet(payload):
        worker.handle(line, Datagram(b"", int(at * 1e9), b"", None))


def test_a_line_for_an_interval_already_written_is_counted(tmp_path: Path) -> None:
    now = [1000.0]
    worker = StatsdAggregator(dir=str(tmp_path), flush_interval=10)
    worker.clock = lambda: now[0]
    worker.setup()
    feed(worker, b"hits:1|c", 1001.0)
    now[0] = 1011.5
    worker.tick()  # interval 1000 is written as a partial (and merged)
    feed(worker, b"hits:2|c", 1002.0)  # late (a worker behind): interval 1000 again
    feed(worker, b"hits:4|c", 1011.0)
    worker.teardown()

    totals = json.loads((tmp_path / "totals.json").read_text())
    assert [c["value"] for c in totals["counters"]] == [7.0]
    assert totals["lines"] == 3


packets = st.lists(  # datagrams of one to three lines, some refused, some not metrics
    st.lists(
        st.sampled_from(
            [
                b"hits:1|c|#a,b",
                b"hits:2|c|@0.5|#b,a",
                b"q:7|g",
                b"q:3|g|#x",
                b"u:m1|s",
                b"u:m2,m3|s",  # a member with a comma: one member
                b"lat:1.5|ms|#a",
                b"size:4:5|h|@0.25",
                b"d:2|d",
                b"big:1e308|c",  # twice: a sum that would overflow, refused
                b"many:1|c|#t1,t2,t3,t4",  # past max_tags
                b"_e{1,1}:t|x",
                b"_sc|svc|0",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    min_size=1,
    max_size=30,
)
# Around interval boundaries (10 s), and going back now and then (the clock was set back).
times = st.lists(st.integers(9_999_999_000, 10_000_001_000) | st.integers(0, 30 * 10**9))


@settings(max_examples=80)
@given(packets, times, st.integers(1, 8))
def test_a_worker_batch_aggregates_as_line_by_line_calls(
    datagrams: list[list[bytes]], stamps: list[int], batch_size: int
) -> None:
    """handle_batch (what the worker calls, with each datagram's lines and its ring record)
    keeps the same aggregates as handle, one line and its Datagram at a time."""
    at = [stamps[i % len(stamps)] + i if stamps else 10**10 + i for i in range(len(datagrams))]
    lines = [parse_packet(b"\n".join(d)) for d in datagrams]
    batched, single = (StatsdAggregator(flush_interval=10, max_tags=3) for _ in range(2))
    for start in range(0, len(lines), batch_size):
        stop = start + batch_size
        records = [Record(b"", b"", ns, 0, -1, -1) for ns in at[start:stop]]
        batched.handle_batch(lines[start:stop], records)
    for packet, ns in zip(lines, at, strict=True):
        for line in packet:
            single.handle(line, Datagram(b"", ns, b"", None))

    assert sorted(batched._buckets) == sorted(single._buckets)
    for index, bucket in batched._buckets.items():
        assert dump_bucket(bucket) == dump_bucket(single._buckets[index])

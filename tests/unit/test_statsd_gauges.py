"""``+N``/``-N`` gauge lines in the JSON-lines output: a change to the value received before
it (statsd's convention, as the exposition applies it), within a worker's interval, across
workers' partials, and from one interval's totals to the next."""

from __future__ import annotations

from ugram.builtin.aggregate import Bucket, Totals, add_to_totals, dump_bucket, load_bucket
from ugram.builtin.aggregate.interval import render_interval
from ugram.codecs.statsd import parse_line

KEY = ("q", ())


def bucket(*lines: tuple[int, str], start: float = 0.0) -> Bucket:
    out = Bucket(start)
    for at, text in lines:
        out.add(parse_line(text.encode()), at)
    return out


def test_changes_apply_to_the_value_before_them() -> None:
    b = bucket((1, "q:5|g"), (2, "q:+1|g"), (3, "q:-3|g"))
    assert b.gauge_value(KEY, 0.0) == (3, 3.0)


def test_a_value_received_after_a_change_replaces_it() -> None:
    b = bucket((1, "q:+1|g"), (2, "q:5|g"))
    assert b.gauge_value(KEY, 100.0) == (2, 5.0)
    # A change received earlier but handled later (another batch) is still superseded.
    late = bucket((5, "q:7|g"), (4, "q:+1|g"))
    assert late.gauge_value(KEY, 0.0) == (5, 7.0)


def test_changes_alone_add_to_the_value_the_gauge_had() -> None:
    b = bucket((1, "q:+1|g"), (2, "q:+2|g"), (3, "q:1:+2|g"))  # "1:+2": not all signed: 2
    assert b.gauge_value(KEY, 10.0) == (3, 2.0)
    assert bucket((1, "q:+1|g"), (2, "q:+2|g")).gauge_value(KEY, 10.0) == (2, 13.0)


def test_workers_partials_merge_by_receive_time() -> None:
    a = bucket((1, "q:5|g"), (3, "q:+1|g"))
    b = bucket((2, "q:+2|g"))
    merged = Bucket(0.0)
    merged.merge(load_bucket(dump_bucket(a)))
    merged.merge(load_bucket(dump_bucket(b)))
    assert merged.gauge_value(KEY, 0.0) == (3, 8.0)
    later = bucket((4, "q:10|g"))
    merged.merge(later)
    assert merged.gauge_value(KEY, 0.0) == (4, 10.0)  # the changes before 10 no longer count
    assert merged.series == 1


def test_the_totals_carry_a_gauge_from_one_interval_to_the_next() -> None:
    first = bucket((1, "q:5|g"))
    second = bucket((11 * 10**9, "q:+1|g"), (12 * 10**9, "q:+1|g"), start=10.0)
    totals = add_to_totals(Totals(), first, 10.0)
    totals = add_to_totals(totals, second, 10.0)
    assert [(g.name, g.value) for g in totals.gauges] == [("q", 7.0)]
    record = render_interval(second, 10.0, {("q", ()): 7.0})
    assert [(g.name, g.value) for g in record.gauges] == [("q", 7.0)]
    assert [(g.name, g.value) for g in render_interval(second, 10.0).gauges] == [("q", 2.0)]

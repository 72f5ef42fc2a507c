"""The built-in handlers' pieces, in process: options, the rotating file, the log sink, and
the statsd aggregator's buckets, merge, percentiles, totals and limits."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ugram import ConfigError, Datagram
from ugram.builtin import (
    LogSink,
    RotatingFile,
    SinkOptions,
    StatsdAggregator,
    StatsdOptions,
    load_options,
)
from ugram.builtin.aggregate import (
    Bucket,
    Limits,
    Totals,
    add_to_totals,
    dump_bucket,
    load_bucket,
    quantile,
    render_interval,
)
from ugram.builtin.record import encode_line
from ugram.codecs.statsd import parse_packet
from ugram.codecs.syslog import parse_syslog
from ugram.ring import Record


def dgram(data: bytes = b"", at: float = 1000.0) -> Datagram:
    return Datagram(data, int(at * 1e9), b"", None)


def record(data: bytes = b"", at: float = 1000.0) -> Record:
    """What a worker hands the built-ins beside each message (no credentials collected)."""
    return Record(data, b"", int(at * 1e9), 0, -1, -1)


# -- options ------------------------------------------------------------------------------------


def test_options_precedence_keyword_env_file_default(tmp_path: Path) -> None:
    toml = tmp_path / "sink.toml"
    toml.write_text('path = "from-file.jsonl"\nbackups = 2\nfsync = "never"\n')
    env = {"UGSINK_CONFIG": str(toml), "UGSINK_BACKUPS": "7", "UGRAM_WORKERS": "3"}

    options = load_options("UGSINK_", SinkOptions, {"fsync": "always"}, env)

    assert (options.path, options.backups, options.fsync) == ("from-file.jsonl", 7, "always")
    assert options.max_bytes == SinkOptions().max_bytes


def test_json_options_file(tmp_path: Path) -> None:
    file = tmp_path / "statsd.json"
    file.write_text('{"dir": "/tmp/x", "flush_interval": 2.5}')
    options = load_options("UGSTATSD_", StatsdOptions, {}, {"UGSTATSD_CONFIG": str(file)})
    assert options == StatsdOptions(dir="/tmp/x", flush_interval=2.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"UGSINK_PAHT": "x"}, "unknown option UGSINK_PAHT"),
        ({"UGSINK_FSYNC": "sometimes"}, "fsync"),
        ({"UGSINK_MAX_BYTES": "-1"}, "max_bytes"),
        ({"UGSINK_CONFIG": "/nonexistent/sink.toml"}, "cannot read"),
    ],
)
def test_bad_options_name_the_problem(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_options("UGSINK_", SinkOptions, {}, env)


def test_bad_options_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("path = \n")
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "unknown.toml").write_text("colour = 'red'\n")
    for name, message in [
        ("bad.toml", "does not parse"),
        ("list.json", "table"),
        ("unknown.toml", "colour"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_options("UGSINK_", SinkOptions, {}, {"UGSINK_CONFIG": str(tmp_path / name)})


# -- the rotating file and the log sink ---------------------------------------------------------


def test_rotation_keeps_backups_and_never_splits_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    first = RotatingFile(str(path), max_bytes=25, backups=2, sync_on_rotate=True)
    second = RotatingFile(str(path), max_bytes=25, backups=2, sync_on_rotate=True)
    lines = [f"line {i:02d}\n".encode() for i in range(12)]  # 8 bytes each: 3 per file

    for i in range(0, 12, 2):  # two writers taking turns, each following the other's rotation
        (first if i % 4 else second).write(lines[i : i + 2])
    first.close()
    second.close()

    assert path.read_bytes() == b"".join(lines[9:])
    assert (tmp_path / "a.log.1").read_bytes() == b"".join(lines[6:9])
    assert (tmp_path / "a.log.2").read_bytes() == b"".join(lines[3:6])
    assert not (tmp_path / "a.log.3").exists()


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    file = RotatingFile(str(path), max_bytes=4, backups=0, sync_on_rotate=False)
    file.write([b"0123456789\n", b"x\n"])
    file.close()
    assert path.read_bytes() == b"x\n"  # no backups: the long line's file was removed


def test_log_sink_writes_what_the_codec_decoded(tmp_path: Path) -> None:
    sink = LogSink(path=str(tmp_path / "s.jsonl"), fsync="always")
    sink.setup()
    sink.handle_batch([b"hi", b"\xff", parse_syslog(b"<11>x")], [record(), record(), record()])
    sink.teardown()

    text, binary, syslog = (
        json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()
    )
    assert (text["text"], text["size"], text["sender"]) == ("hi", 2, None)
    assert binary["base64"] == "/w=="
    assert syslog["data"]["severity"] == 3
    assert syslog["data"]["message"] == "x"
    assert text["time"].startswith("1970-01-01T00:16:40")


# -- statsd aggregation -------------------------------------------------------------------------


def bucket_of(payload: bytes, at: int = 1000 * 10**9) -> Bucket:
    bucket = Bucket(1000.0)
    for line in parse_packet(payload):
        bucket.add(line, at)
    return bucket


def test_bucket_applies_sample_rates_and_keeps_the_last_gauge() -> None:
    b = bucket_of(
        b"c:1|c|@0.5\nc:2|c|#b,a,a\nc:3|c|#a,b\ng:1|g\ng:2:7|g\ns:x:y|s\ns:x|s\nh:4|h|@0.25"
    )
    late = bucket_of(b"g:5|g", at=1000 * 10**9 - 1)  # received 1 ns earlier: it must not win
    b.merge(late)

    out = render_interval(b, 10.0)
    assert [(c.name, c.tags, c.value, c.rate) for c in out.counters] == [
        ("c", [], 2.0, 0.2),
        ("c", ["a", "b"], 5.0, 0.5),
    ]
    assert [(g.name, g.value) for g in out.gauges] == [("g", 7.0)]
    assert [(s.name, s.value) for s in out.sets] == [("s", 2)]
    h = out.histograms[0]
    assert (h.count, h.sum, h.min, h.max, h.avg) == (4.0, 16.0, 4.0, 4.0, 4.0)
    assert out.lines == 9


@pytest.mark.parametrize("order", [1, -1], ids=["in-order", "reversed"])
def test_a_gauge_read_1_ns_later_wins_whatever_the_merge_order(order: int) -> None:
    # Two workers each got one of two datagrams read in the same batch (1 ns apart): as
    # float epoch seconds they tie, and the merge order would pick the value.
    now = 1_790_000_000 * 10**9
    assert now / 1e9 == (now + 1) / 1e9
    earlier, later = bucket_of(b"t:1008|g", at=now), bucket_of(b"t:1049|g", at=now + 1)
    merged = Bucket(1000.0)
    for piece in [earlier, later][::order]:
        merged.merge(load_bucket(dump_bucket(piece)))
    assert [(g.name, g.value) for g in render_interval(merged, 10.0).gauges] == [("t", 1049.0)]

    totals = Totals()
    for piece in [earlier, later][::order]:  # one interval after the other, in either order
        totals = msgspec.json.decode(
            msgspec.json.encode(add_to_totals(totals, piece, 10.0)), type=Totals
        )
    assert [(g.value, g.at_ns) for g in totals.gauges] == [(1049.0, now + 1)]


def test_percentiles_are_numpys_default_linear_interpolation() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == statistics.median(values) == 50.5
    assert quantile(values, 0.95) == pytest.approx(95.05)
    assert quantile([3.0], 0.95) == 3.0
    out = render_interval(bucket_of(b"t:4:1:3:2|ms\nd:9|d"), 1.0)
    assert (out.timers[0].median, out.timers[0].p95) == (2.5, pytest.approx(3.85))
    assert out.distributions[0].count == 1


metric_lines = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(-50, 50),
        st.sampled_from(["c", "g", "h", "ms", "d", "s"]),
        st.sampled_from(["", "|@0.5", "|#t:1", "|@0.25|#t:2,t:1"]),
    ),
    min_size=1,
    max_size=30,
)


@given(metric_lines, st.integers(1, 4))
def test_merging_partials_equals_aggregating_everything_at_once(
    lines: list[tuple[str, int, str, str]], parts: int
) -> None:
    whole = Bucket(0.0)
    pieces = [Bucket(0.0) for _ in range(parts)]
    for i, (name, value, kind, extra) in enumerate(lines):
        for line in parse_packet(f"{name}.{kind}:{value}|{kind}{extra}".encode()):
            whole.add(line, i)  # receive times differ (a gauge tie has no order)
            pieces[i % parts].add(line, i)
    merged = Bucket(0.0)
    for piece in pieces:
        merged.merge(load_bucket(dump_bucket(piece)))  # through the partial file format

    def normalized(b: Bucket) -> bytes:
        out = render_interval(b, 1.0)
        for summaries in (out.histograms, out.timers, out.distributions):
            for s in summaries:  # float sums in another order may differ in the last bit
                s.sum, s.avg = round(s.sum, 6), round(s.avg, 6)
        return msgspec.json.encode(out)

    assert normalized(merged) == normalized(whole)


def test_two_workers_merge_into_one_interval_and_totals(tmp_path: Path) -> None:
    now = [1000.0]
    one, two = (StatsdAggregator(dir=str(tmp_path), flush_interval=10) for _ in range(2))
    for worker in (one, two):
        worker.clock = lambda: now[0]
        worker.setup()
    for line in parse_packet(b"hits:1|c\ntemp:20|g\nusers:ann|s\nlat:10|h"):
        one.handle(line, dgram(at=1001.0))
    for line in parse_packet(b"hits:2|c\ntemp:30|g\nusers:bob|s\nlat:30|h\n_e{1,1}:a|b\n_sc|x|0"):
        two.handle(line, dgram(at=1002.0))
    for line in parse_packet(b"hits:4|c\ntemp:40|g\nusers:ann|s"):
        one.handle(line, dgram(at=1011.0))  # the next interval

    now[0] = 1011.5  # interval 1000 ended: each worker publishes it, nobody merges it yet
    one.tick()
    two.tick()
    assert len(list((tmp_path / "partials").iterdir())) == 2
    assert not (tmp_path / "statsd.jsonl").exists()
    now[0] = 1012.5  # and the grace period passed: the next tick merges it
    two.tick()
    assert not list((tmp_path / "partials").iterdir())
    two.teardown()
    one.teardown()  # the last worker to stop merges the rest

    records = [json.loads(line) for line in (tmp_path / "statsd.jsonl").read_text().splitlines()]
    assert [(r["start"], r["lines"]) for r in records] == [(1000.0, 10), (1010.0, 3)]
    first = records[0]
    assert first["counters"] == [{"name": "hits", "tags": [], "value": 3.0, "rate": 0.3}]
    assert first["gauges"][0]["value"] == 30.0
    assert first["sets"][0]["value"] == 2
    assert first["histograms"][0]["median"] == 20.0
    assert [e["title"] for e in first["events"]] == ["a"]
    assert first["service_checks"][0]["name"] == "x"

    totals = json.loads((tmp_path / "totals.json").read_text())
    assert totals["counters"] == [{"name": "hits", "tags": [], "value": 7.0, "updated": 1020.0}]
    assert totals["gauges"][0]["value"] == 40.0
    assert totals["sets"][0]["members"] == ["ann", "bob"]
    assert totals["histograms"][0]["count"] == 2.0
    summary = (totals["flushes"], totals["lines"], totals["since"], totals["until"])
    assert summary == (2, 13, 1000.0, 1020.0)
    assert not list((tmp_path / "partials").iterdir())
    assert not list((tmp_path / "workers").iterdir())


def test_the_aggregator_orders_by_receive_nanoseconds(tmp_path: Path) -> None:
    # Two datagrams of one recvmmsg batch are 1 ns apart: as float seconds they tie. Fed
    # here in the opposite order, only the nanoseconds put them back in receipt order.
    now_ns = 1_790_000_003 * 10**9
    worker = StatsdAggregator(dir=str(tmp_path), flush_interval=10)
    worker.setup()
    for at, value, title in ((now_ns + 1, 1049, "second"), (now_ns, 1008, "first")):
        packet = f"temp:{value}|g\n_e{{{len(title)},1}}:{title}|x".encode()
        for line in parse_packet(packet):
            worker.handle(line, Datagram(b"", at, b"", None))
    worker.teardown()

    totals = json.loads((tmp_path / "totals.json").read_text())
    assert [(g["value"], g["at_ns"]) for g in totals["gauges"]] == [(1049.0, now_ns + 1)]
    lines = (tmp_path / "statsd.jsonl").read_text().splitlines()
    assert [e["title"] for e in json.loads(lines[0])["events"]] == ["first", "second"]


def test_partials_an_older_ugram_left_are_read(tmp_path: Path) -> None:
    # Before receive times were integer nanoseconds, partials held float epoch seconds.
    old = msgspec.msgpack.encode(
        [1000.0, [["c", [], 2.0]], [["g", [], 1001.5, 7.0]], [], [], [], [], 2, 0]
    )
    bucket = load_bucket(old)
    assert bucket.gauges == {("g", ()): (1_001_500_000_000, 7.0)}
    assert bucket.counters == {("c", ()): 2.0}


# -- what one record, one line or one sender must not cost the others ---------------------------


def test_a_sender_path_that_is_not_utf8_is_escaped_and_an_ext_is_an_error_record() -> None:
    bad_sender = Datagram(b"\xc7\x01\x07x", 10**12, b"/run/a\xffb.sock", None)
    line, error = encode_line("hello", bad_sender)
    assert (json.loads(line)["sender"], error) == ("/run/a\\xffb.sock", None)

    line, error = encode_line(msgspec.msgpack.Ext(7, b"x"), bad_sender)
    out = json.loads(line)
    assert error is not None
    assert "cannot be encoded" in out["error"]
    assert (out["sender"], out["base64"], out["size"]) == ("/run/a\\xffb.sock", "xwEHeA==", 4)


def test_a_log_sink_batch_with_an_unencodable_message_keeps_the_others(tmp_path: Path) -> None:
    sink = LogSink(path=str(tmp_path / "s.jsonl"), fsync="never")
    sink.setup()
    messages = ["one", msgspec.msgpack.Ext(1, b""), "three"]
    sink.handle_batch(messages, [record(), record(), record()])
    sink.teardown()
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r.get("text", r.get("error", "")[:6]) for r in records] == ["one", "the me", "three"]
    assert sink.error_records == 1


def test_a_log_sink_in_a_shared_directory_warns_naming_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: others may create names, not move ours
    sink = LogSink(path=str(shared / "s.jsonl"))
    with caplog.at_level(logging.WARNING, logger="ugram.builtin.sink"):
        sink.setup()
        sink.teardown()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning == (
        f"LogSink: {shared} is writable by everyone (sticky): other users may take the names "
        "the sink rotates to"
    )


def feed(worker: StatsdAggregator, payload: bytes, at: float) -> None:
    for line in parse_packet(payload):
        worker.handle(line, dgram(at=at))


def test_a_line_that_would_overflow_is_refused_and_the_totals_stay_readable(
    tmp_path: Path,
) -> None:
    now = [1000.0]
    worker = StatsdAggregator(dir=str(tmp_path), flush_interval=10)
    worker.clock = lambda: now[0]
    worker.setup()
    feed(worker, b"big:1e308|c\nbig:1e308|c\nlegit:1|c\nh:1e308|h|@0.5\nh:1|h", 1001.0)
    now[0] = 1012.5
    worker.tick()  # interval 1000 merged: the totals are written
    feed(worker, b"legit:1|c", 1013.0)
    worker.teardown()  # interval 1010 merged: the totals are read back first

    totals = json.loads((tmp_path / "totals.json").read_text())
    assert {c["name"]: c["value"] for c in totals["counters"]} == {"big": 1e308, "legit": 2.0}
    assert [(h["count"], h["sum"]) for h in totals["histograms"]] == [(1.0, 1.0)]
    assert (totals["lines"], totals["refused_lines"]) == (6, 2)


def test_series_and_set_member_limits_refuse_and_count() -> None:
    limits = Limits(max_series=3, max_set_members=2, max_members=3)
    b = Bucket(1000.0, limits)
    for line in parse_packet(b"a:1|c\ns1:x:y:z|s\ns2:p:q|s\nb:1|c\na:2|c\ns1:x|s"):
        b.add(line, 10**12)
    assert b.counters == {("a", ()): 3.0}
    assert b.sets == {("s1", ()): {"x", "y"}, ("s2", ()): {"p"}}
    assert (b.lines, b.refused_lines, b.refused_members) == (6, 1, 2)

    other = bucket_of(b"a:1|c\nc:1|c")
    b.merge(other)  # a known series adds up; a new one does not fit
    assert b.counters == {("a", ()): 4.0}
    assert b.refused_series == 1

    out = render_interval(b, 10.0)
    assert (out.refused_lines, out.refused_series, out.refused_members) == (1, 1, 2)
    totals = add_to_totals(Totals(), b, 10.0, limits)
    later = Bucket(1010.0, limits)
    later.add(parse_packet(b"d:1|c")[0], 10**12)
    totals = add_to_totals(totals, later, 10.0, limits)  # the totals hold 3 series already
    assert [c.name for c in totals.counters] == ["a"]
    assert (totals.refused_lines, totals.refused_series, totals.refused_members) == (1, 2, 2)


def test_a_line_with_more_distinct_tags_than_max_tags_is_refused_and_counted(
    tmp_path: Path,
) -> None:
    """1500 tags fit a line (and each fits the codec's limit): the series key is capped here."""
    many = ",".join(f"t{i}" for i in range(1500)).encode()
    worker = StatsdAggregator(dir=str(tmp_path), max_tags=3)
    assert StatsdOptions().max_tags == 64
    worker.setup()
    feed(worker, b"ok:1|c|#a,b,c,a\nwide:1|c|#a,b,c,d\nhuge:1|c|#" + many, 1001.0)
    worker.teardown()

    totals = json.loads((tmp_path / "totals.json").read_text())
    assert [(c["name"], c["tags"]) for c in totals["counters"]] == [("ok", ["a", "b", "c"])]
    assert (totals["lines"], totals["refused_lines"]) == (3, 2)


def test_series_not_updated_for_the_ttl_leave_the_totals() -> None:
    limits = Limits(series_ttl=15)
    totals = Totals()
    for start, payload in [
        (1000.0, b"a:1|c\ng:5|g\ns:x|s\nh:1|h\nb:1|c"),
        (1010.0, b"b:1|c"),
        (1020.0, b"b:1|c"),
    ]:
        bucket = Bucket(start)
        for line in parse_packet(payload):
            bucket.add(line, int((start + 1) * 1e9))
        totals = add_to_totals(totals, bucket, 10.0, limits)
    # At the end of the last interval (1030), what was last updated before 1015 is gone.
    assert [(c.name, c.value, c.updated) for c in totals.counters] == [("b", 3.0, 1030.0)]
    assert (totals.gauges, totals.sets, totals.histograms) == ([], [], [])
    assert totals.pruned_series == 4


def test_totals_written_before_the_limits_are_read_and_kept() -> None:
    old = b'{"until": 1010.0, "flushes": 1, "counters": [{"name": "a", "tags": [], "value": 2.0}]}'
    totals = add_to_totals(
        msgspec.json.decode(old, type=Totals), Bucket(1010.0), 10.0, Limits(series_ttl=15)
    )
    assert [(c.name, c.value, c.updated) for c in totals.counters] == [("a", 2.0, 1010.0)]


def test_limit_options_from_the_environment() -> None:
    env = {"UGSTATSD_MAX_SERIES": "7", "UGSTATSD_SERIES_TTL": "0"}
    options = load_options("UGSTATSD_", StatsdOptions, {}, env)
    assert (options.max_series, options.max_set_members, options.series_ttl) == (7, 10_000, 0.0)
    assert StatsdAggregator(max_members=0).limits.max_members == 0
    with pytest.raises(ConfigError, match="max_series"):
        load_options("UGSTATSD_", StatsdOptions, {}, {"UGSTATSD_MAX_SERIES": "-1"})


@pytest.mark.parametrize(
    ("option", "value", "shown"),
    [
        ("ttl", "60", "UGSTATSD_TTL=60"),
        ("timer_type", "histogram", "UGSTATSD_TIMER_TYPE=histogram"),
        ("buckets", "0.1,1", "UGSTATSD_BUCKETS=0.1,1"),
        ("quantiles", "0.5", "UGSTATSD_QUANTILES=0.5"),
        ("max_series_per_metric", "5", "UGSTATSD_MAX_SERIES_PER_METRIC=5"),
        ("summary_max_age", "60", "UGSTATSD_SUMMARY_MAX_AGE=60"),
        ("summary_age_buckets", "2", "UGSTATSD_SUMMARY_AGE_BUCKETS=2"),
        ("bare_tag_label", "tag", "UGSTATSD_BARE_TAG_LABEL=tag"),
    ],
)
def test_an_exposition_option_with_the_jsonl_output_alone_is_refused(
    option: str, value: str, shown: str
) -> None:
    """It would change nothing: the server refuses to start, naming it (as for a mapping)."""
    env = {f"UGSTATSD_{option.upper()}": value}
    options = load_options("UGSTATSD_", StatsdOptions, {}, env)
    with pytest.raises(ConfigError, match=f"{shown} shapes the series on the metrics endpoint"):
        options.resolved_output(served=False)
    with pytest.raises(ConfigError, match="UGSTATSD_OUTPUT=jsonl"):
        msgspec.structs.replace(options, output="jsonl").resolved_output(served=True)
    assert options.resolved_output(served=True) == "prometheus"
    assert msgspec.structs.replace(options, output="both").resolved_output(served=True) == "both"


def test_exposition_options_at_their_defaults_pass_with_the_jsonl_output() -> None:
    env = {"UGSTATSD_TTL": "0", "UGSTATSD_TIMER_TYPE": "summary", "UGSTATSD_MAX_SERIES": "9"}
    options = load_options("UGSTATSD_", StatsdOptions, {}, env)
    assert options.resolved_output(served=False) == "jsonl"


def test_several_exposition_options_are_named_together() -> None:
    options = StatsdOptions(ttl=5.0, mapping="/etc/map.yml")
    with pytest.raises(ConfigError) as caught:
        options.resolved_output(served=False)
    assert "UGSTATSD_MAPPING=/etc/map.yml, UGSTATSD_TTL=5 shape the series" in str(caught.value)
    assert "or unset them" in str(caught.value)

"""The lines, syslog and statsd parsers: vectors from the RFCs and real clients, properties."""

from __future__ import annotations

import contextlib
import inspect
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ugram import HandlerImportError
from ugram.codecs import (
    CodecError,
    Event,
    Line,
    Metric,
    ServiceCheck,
    SyslogMessage,
    fan_out,
    make_decoder,
    take_invalid_lines,
)
from ugram.codecs import syslog as _syslog
from ugram.codecs.statsd import format_line, parse_line, parse_packet
from ugram.codecs.syslog import MONTHS, format_rfc3164, format_rfc5424, parse_syslog
from ugram.workers.handler import DECODE_ERRORS

# -- syslog vectors -----------------------------------------------------------------------------


def test_rfc5424_example_with_bom_and_no_structured_data() -> None:
    msg = parse_syslog(
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
        b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8"
    )
    assert (msg.facility, msg.severity, msg.version) == (4, 2, 1)
    assert msg.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert (msg.hostname, msg.app_name, msg.procid, msg.msgid) == (
        "mymachine.example.com",
        "su",
        None,
        "ID47",
    )
    assert msg.message == "'su root' failed for lonvick on /dev/pts/8"
    assert (msg.facility_name, msg.severity_name, msg.priority) == ("auth", "crit", 34)


def test_rfc5424_structured_data_with_escapes_and_no_message() -> None:
    msg = parse_syslog(
        b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - "
        b'[exampleSDID@32473 iut="3" eventSource="App\\"lication\\]"]'
        b'[examplePriority@32473 class="high"]'
    )
    assert msg.timestamp == datetime(
        2003, 8, 24, 5, 14, 15, 3, tzinfo=timezone(-timedelta(hours=7))
    )
    assert msg.procid == "8710"
    assert msg.structured_data == {
        "exampleSDID@32473": {"iut": "3", "eventSource": 'App"lication]'},
        "examplePriority@32473": {"class": "high"},
    }
    assert msg.message == ""


def test_util_linux_logger_local_format_has_tag_and_pid_but_no_hostname() -> None:
    msg = parse_syslog(b"<156>Nov  8 02:12:20 myapp[123]: hi: there")
    assert (msg.facility, msg.severity) == (19, 4)
    assert (msg.hostname, msg.app_name, msg.procid, msg.message) == (
        None,
        "myapp",
        "123",
        "hi: there",
    )
    assert msg.timestamp is not None
    assert (msg.timestamp.month, msg.timestamp.day, msg.timestamp.hour) == (11, 8, 2)
    assert msg.timestamp.tzinfo is not None


def test_bsd_format_with_hostname() -> None:
    msg = parse_syslog(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed")
    assert (msg.hostname, msg.app_name, msg.message) == ("mymachine", "su", "'su root' failed")
    assert msg.version == 0


def test_python_sysloghandler_format_is_all_message() -> None:
    msg = parse_syslog(b"<163>app: with ident\x00")
    assert (msg.facility, msg.severity, msg.message) == (20, 3, "app: with ident")
    assert msg.app_name is msg.timestamp is msg.hostname is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"no pri", "no pri"),
        (b"<192>too big", "<192>too big"),
        (b"<abc>x", "<abc>x"),
        (b"<13>1 not a 5424 header at all", "1 not a 5424 header at all"),
        (
            b"<13>1 2003-13-45T00:00:00Z h a p m - bad date",
            "1 2003-13-45T00:00:00Z h a p m - bad date",
        ),
        (b"42 <13>octet counted\n", "octet counted"),
    ],
)
def test_tolerated_oddities(payload: bytes, message: str) -> None:
    assert parse_syslog(payload).message == message


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\r\n"])
def test_empty_syslog_datagrams_are_invalid(payload: bytes) -> None:
    with pytest.raises(CodecError):
        parse_syslog(payload)


# -- syslog properties --------------------------------------------------------------------------

_PRINTABLE = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
_HEADER = _PRINTABLE.filter(lambda s: s != "-")
_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='= ]"'),
    min_size=1,
    max_size=12,
)
_MESSAGE = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=40
).map(lambda s: s.lstrip("\ufeff"))
_TIMESTAMPS = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=7))]
    ),
)


@given(st.binary(max_size=300))
def test_syslog_parser_never_crashes_on_arbitrary_bytes(payload: bytes) -> None:
    try:
        msg = parse_syslog(payload)
    except CodecError:
        return
    assert 0 <= msg.facility <= 23
    assert 0 <= msg.severity <= 7
    msgspec.json.encode(msg)  # whatever it parsed, the log sink can write


@given(
    st.integers(0, 191),
    st.none() | _TIMESTAMPS,
    st.none() | _HEADER,
    st.none() | _HEADER,
    st.none() | _HEADER,
    st.none() | _HEADER,
    st.dictionaries(
        _NAME,
        st.dictionaries(_NAME, st.text(max_size=10).filter(lambda s: "\x00" not in s), max_size=3),
        max_size=3,
    ),
    _MESSAGE,
)
def test_rfc5424_round_trip(
    pri: int,
    timestamp: datetime | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None,
    msgid: str | None,
    sd: dict[str, dict[str, str]],
    message: str,
) -> None:
    msg = SyslogMessage(
        facility=pri // 8,
        severity=pri % 8,
        timestamp=timestamp,
        hostname=hostname,
        app_name=app_name,
        procid=procid,
        msgid=msgid,
        structured_data=sd,
        message=message.rstrip("\x00\r\n"),
        version=1,
    )
    assert parse_syslog(format_rfc5424(msg)) == msg


_TAG = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":[]"),
    min_size=1,
    max_size=20,
)


@given(
    st.integers(0, 191),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)).filter(
        lambda d: (d.month, d.day) != (2, 29)  # no year is sent: Feb 29 may not exist this year
    ),
    st.none() | _TAG,
    _TAG,
    st.none() | st.text("0123456789", min_size=1, max_size=6),
    _MESSAGE,
)
def test_rfc3164_round_trip(
    pri: int, when: datetime, hostname: str | None, tag: str, pid: str | None, message: str
) -> None:
    msg = SyslogMessage(
        facility=pri // 8,
        severity=pri % 8,
        timestamp=when.replace(microsecond=0),
        hostname=hostname,
        app_name=tag,
        procid=pid,
        message=message.rstrip("\x00\r\n"),
    )
    got = parse_syslog(format_rfc3164(msg))
    assert got.timestamp is not None  # the year is the receiver's guess: compare the rest
    assert got.timestamp.timetuple()[1:6] == when.timetuple()[1:6]
    assert msgspec.structs.replace(got, timestamp=msg.timestamp) == msg


@given(
    st.lists(
        st.tuples(
            st.sampled_from(MONTHS),
            st.integers(1, 31),
            st.integers(0, 25),
            st.integers(0, 61),
            st.integers(0, 61),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_a_remembered_bsd_timestamp_is_the_one_resolved_afresh(
    stamps: list[tuple[str, int, int, int, int]],
) -> None:
    """Lines sharing a timestamp get it from the per-second cache: the same answer as
    resolving it again (valid or not: 25:61:61, Feb 30), repeated or not."""
    for month, *numbers in stamps * 2:
        fields = (month, *(str(n) for n in numbers))
        line = (
            f"<13>{month} {numbers[0]:2d} {numbers[1]:02d}:{numbers[2]:02d}:{numbers[3]:02d} h t: m"
        )
        got = parse_syslog(line.encode())
        if _syslog._bsd_cache_second == int(time.time()):  # not across a second's edge
            assert got.timestamp == _syslog._resolve_bsd_time(*fields)


def test_the_bsd_timestamp_cache_is_forgotten_each_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cached answer lives one second of the clock: a new year (or a new day's "a day
    ahead") is seen at the next second."""
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(_syslog, "_resolve_bsd_time", lambda *fields: datetime(2000, 1, 1))
    first = parse_syslog(b"<13>Jan  1 00:00:00 h t: m").timestamp
    monkeypatch.setattr(_syslog, "_resolve_bsd_time", lambda *fields: datetime(2001, 1, 1))
    assert parse_syslog(b"<13>Jan  1 00:00:00 h t: m").timestamp == first  # the same second
    clock[0] += 1.0
    assert parse_syslog(b"<13>Jan  1 00:00:00 h t: m").timestamp == datetime(2001, 1, 1)


# -- statsd vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"page.views:1|c", Metric(name="page.views", type="c", values=(1.0,))),
        (
            b"fuel.level:0.5|g|#env:prod,fuel",
            Metric(name="fuel.level", type="g", values=(0.5,), tags=("env:prod", "fuel")),
        ),
        (
            b"song.length:240|h|@0.5",
            Metric(name="song.length", type="h", values=(240.0,), sample_rate=0.5),
        ),
        (b"users.uniques:1234|s", Metric(name="users.uniques", type="s", members=("1234",))),
        (b"lat:1:2.5:-3e2|d", Metric(name="lat", type="d", values=(1.0, 2.5, -300.0))),
        (
            b"t:7|ms|@1|#a|T1656581400|c:abc|card:low|e:it",
            Metric(
                name="t",
                type="ms",
                values=(7.0,),
                tags=("a",),
                timestamp=1656581400,
                container_id="abc",
            ),
        ),
        (b"q:-5|c", Metric(name="q", type="c", values=(-5.0,))),
        (
            b"_e{5,9}:title|two\\nline|d:1|h:web|k:deploy|p:low|s:ci|t:error|#a,b:c",
            Event(
                title="title",
                text="two\nline",
                timestamp=1,
                hostname="web",
                aggregation_key="deploy",
                priority="low",
                source_type_name="ci",
                alert_type="error",
                tags=("a", "b:c"),
            ),
        ),
        (b"_e{3,1}:a|b|c", Event(title="a|b", text="c")),
        ("_e{5,0}:caf\u00e9|".encode(), Event(title="caf\u00e9", text="")),
        (
            b"_sc|api.up|2|d:10|h:web|#env:prod|m:slow m\\: yes|c:x",
            ServiceCheck(
                name="api.up",
                status=2,
                timestamp=10,
                hostname="web",
                tags=("env:prod",),
                message="slow m: yes",
            ),
        ),
    ],
)
def test_dogstatsd_lines(line: bytes, expected: Line) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"no-colon|c",
        b"name:1",
        b":1|c",
        b"name:1|x",
        b"name:abc|c",
        b"name:1e999|g",
        b"name:nan|g",
        b"name:1|c|@0",
        b"name:1|c|@1.5",
        b"name:|s",
        b"name:1|c|Tsoon",
        b"_e{5,4}:short|t",
        b"_e{1,1}:ab|c",
        b"_e{x,1}:a|b",
        b"_sc|name|7",
        b"_sc||0",
        b"\xff:1|c",
    ],
)
def test_bad_dogstatsd_lines(line: bytes) -> None:
    with pytest.raises(CodecError):
        parse_line(line)


def test_packet_keeps_good_lines_and_counts_bad_ones() -> None:
    take_invalid_lines("statsd")
    lines = parse_packet(b"a:1|c\nnonsense\r\n\nb:2|g\n")
    assert [line.name for line in lines if isinstance(line, Metric)] == ["a", "b"]
    assert take_invalid_lines("statsd") == 1
    assert take_invalid_lines("statsd") == 0
    with pytest.raises(CodecError, match="no valid line"):
        parse_packet(b"x\ny\n")
    assert take_invalid_lines("statsd") == 2
    with pytest.raises(CodecError, match="empty"):
        parse_packet(b"\n")


# -- statsd properties --------------------------------------------------------------------------

_STATSD_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":|@#,"),
    min_size=1,
    max_size=15,
)
_TAGS = st.lists(
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="|,"),
        min_size=1,
        max_size=10,
    ),
    max_size=3,
).map(tuple)
_VALUES = st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4).map(
    tuple
)
_RATE = st.sampled_from([1.0, 0.5, 0.25, 0.1, 1e-05])


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(["c", "g", "ms", "h", "s", "d"]))
    values: dict[str, object] = (
        {"members": draw(st.lists(_STATSD_NAME, min_size=1, max_size=3).map(tuple))}
        if kind == "s"
        else {"values": draw(_VALUES)}
    )
    if kind == "g":  # a signed gauge value is a change: an absolute one is never negative
        values["relative"] = draw(st.booleans())
        if not values["relative"]:
            values["values"] = tuple(abs(v) for v in values["values"])  # type: ignore[attr-defined]
    return Metric(
        name=draw(_STATSD_NAME),
        type=kind,
        sample_rate=draw(_RATE),
        tags=draw(_TAGS),
        timestamp=draw(st.none() | st.integers(0, 10**11)),
        container_id=draw(st.none() | _STATSD_NAME),
        **values,
    )


_FREE = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\\\r\n"), max_size=20
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    optional = st.none() | _STATSD_NAME
    return Event(
        title=draw(_FREE),
        text=draw(_FREE),
        timestamp=draw(st.none() | st.integers(0, 10**11)),
        hostname=draw(optional),
        aggregation_key=draw(optional),
        priority=draw(optional),
        source_type_name=draw(optional),
        alert_type=draw(optional),
        tags=draw(_TAGS),
    )


@st.composite
def checks(draw: st.DrawFn) -> ServiceCheck:
    message = st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\\\r\n|"), max_size=20
    )
    return ServiceCheck(
        name=draw(_STATSD_NAME),
        status=draw(st.integers(0, 3)),
        timestamp=draw(st.none() | st.integers(0, 10**11)),
        hostname=draw(st.none() | _STATSD_NAME),
        tags=draw(_TAGS),
        message=draw(st.none() | message),
    )


@given(st.lists(metrics() | events() | checks(), min_size=1, max_size=5))
def test_statsd_round_trip(lines: list[Line]) -> None:
    assert parse_packet(b"\n".join(map(format_line, lines)) + b"\n") == lines


@given(st.binary(max_size=300))
def test_statsd_parser_never_crashes_on_arbitrary_bytes(payload: bytes) -> None:
    try:
        lines = parse_packet(payload)
    except CodecError:
        return
    assert lines


@given(
    st.lists(
        st.sampled_from(
            [b"a:1|c", b"_e{1,1}:a|b", b"_sc|x|0", b"|", b"_e{", b":", b"@", b"#", b"\n", b"1"]
        ),
        max_size=12,
    )
)
def test_statsd_parser_never_crashes_on_near_misses(parts: list[bytes]) -> None:
    with contextlib.suppress(CodecError):
        parse_packet(b"".join(parts))


# -- lines --------------------------------------------------------------------------------------


def test_lines_decoders_by_handler_type() -> None:
    raw = make_decoder(bytes, "lines")
    assert raw is not None
    assert raw(b"a\r\nb\n\nc") == [b"a", b"b", b"c"]
    untyped = make_decoder(inspect.Parameter.empty, "lines")
    assert untyped is not None
    assert untyped(b"x\n") == [b"x"]
    text = make_decoder(str, "lines")
    assert text is not None
    assert text(b"caf\xc3\xa9\n\xff") == ["caf\u00e9"]

    class Point(msgspec.Struct):
        x: int

    points = make_decoder(Point, "lines")
    assert points is not None
    assert points(b'{"x": 1}\n{"x": "no"}\n{"x": 3}') == [Point(1), Point(3)]
    with pytest.raises(CodecError):
        points(b"[]\n")


@given(st.binary(max_size=200))
def test_lines_decoder_errors_are_counted_as_invalid(payload: bytes) -> None:
    decode = make_decoder(dict[str, Any], "lines")
    assert decode is not None
    with contextlib.suppress(DECODE_ERRORS):
        decode(payload)


# -- choosing decoders, fan-out -----------------------------------------------------------------


def test_codec_types_and_codecs_must_match() -> None:
    with pytest.raises(HandlerImportError, match="--codec statsd"):
        make_decoder(Line, "raw")
    with pytest.raises(HandlerImportError, match="--codec syslog"):
        make_decoder(SyslogMessage, "raw")
    with pytest.raises(HandlerImportError, match="SyslogMessage"):
        make_decoder(dict, "syslog")
    with pytest.raises(HandlerImportError, match=r"statsd\.Line"):
        make_decoder(Metric, "statsd")
    assert make_decoder(bytes, "syslog") is None
    assert make_decoder(bytes, "statsd") is None
    assert make_decoder(inspect.Parameter.empty, "syslog", speedups=False) is parse_syslog
    untyped = make_decoder(inspect.Parameter.empty, "syslog")  # compiled where built
    assert untyped is not None
    assert untyped(b"<13>x") == parse_syslog(b"<13>x")


def test_fan_out_calls_once_per_message_and_raises_the_first_error_once() -> None:
    seen: list[tuple[object, ...]] = []

    def handle(message: object, dgram: object) -> None:
        seen.append((message, dgram))
        if message == "bad":
            raise ValueError(message)

    call = fan_out(handle, "both", batch=False)
    with pytest.raises(ValueError, match="bad"):
        call(["a", "bad", "c", "bad"], "D")
    assert seen == [("a", "D"), ("bad", "D"), ("c", "D"), ("bad", "D")]

    batches: list[tuple[object, ...]] = []
    flat = fan_out(lambda ms, ds: batches.append((ms, ds)), "both", batch=True)
    flat([["a", "b"], ["c"]], ["D1", "D2"])
    assert batches == [(["a", "b", "c"], ["D1", "D1", "D2"])]

"""The compiled syslog, statsd and lines parsers (ugram/_parsers.c) against the pure-Python
reference.

Two promises: the compiled one gives exactly the reference's answer (the same message, or
the same CodecError, and for statsd and lines the same count of bad lines) on generated and
adversarial datagrams; and it answers the common shapes itself (an implementation that
handed everything to the reference would pass the first test and be no faster).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.test_codecs import checks, events, metrics
from ugram.codecs import CodecError, SyslogMessage, syslog
from ugram.codecs import native as native_parsers
from ugram.codecs.base import take_invalid_lines
from ugram.codecs.lines import make_decoder as lines_make_decoder
from ugram.codecs.statsd import Line, Metric, format_line, parse_packet
from ugram.codecs.statsd import make_decoder as statsd_make_decoder
from ugram.codecs.syslog import make_decoder, parse_syslog

pytestmark = pytest.mark.skipif(
    native_parsers.PARSERS is None, reason="ugram._parsers is not built"
)

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compiled(fallback: Callable[[bytes], Any] = parse_syslog) -> Callable[[bytes], Any]:
    assert native_parsers.PARSERS is not None
    parser: Callable[[bytes], Any] = native_parsers.PARSERS.SyslogParser(
        fallback, SyslogMessage, syslog._bsd_time, syslog._rfc3339
    )
    return parser


FAST = compiled()


def outcome(parse: Callable[[bytes], Any], payload: bytes) -> object:
    try:
        return parse(payload)
    except CodecError as exc:
        return ("CodecError", str(exc))


def assert_same(payload: bytes) -> None:
    assert outcome(FAST, payload) == outcome(parse_syslog, payload), payload


# -- generated syslog datagrams ------------------------------------------------------------------

# Bytes where the parser decides: separators, NILVALUE, digits, brackets, quotes, escapes,
# control characters (some of them whitespace to Python), non-ASCII whitespace and digits,
# invalid UTF-8, a BOM.
TRICKY = st.sampled_from(
    [
        b" ", b"  ", b"-", b"<", b">", b"[", b"]", b":", b"=", b'"', b"\\", b"\\]", b'\\"',
        b"\t", b"\x0b", b"\x1c", b"\x1f", b"\x00", b"\r", b"\n", b"\x7f", b"0", b"1", b"99",
        b"191", b"192", b"\xc2\xa0", b"\xe2\x80\xa8", b"\xd9\xa3", b"\xef\xbb\xbf", b"\xff",
        b"\xe2\x82", b"\xf0\x9f\x98\x80", b"Jan", b"Feb 29", b"-0000", b"Z", b"T",
    ]
)  # fmt: skip
WORD = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='[]="\\:'),
    min_size=1,
    max_size=12,
)
TEXT = st.text(max_size=40)


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


ZONES = [
    "Z", "z", "+00:00", "-00:00", "-07:00", "+05:30", "+14:00", "+23:59", "+24:00", "-05:60",
    "+1:00", "+0100", "",
]  # fmt: skip


@st.composite
def stamps_5424(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "-"
    when = draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 1, 1)))
    zone = draw(st.sampled_from(ZONES))
    stamp = when.strftime(draw(st.sampled_from(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dt%H:%M:%S"])))
    if draw(st.booleans()):
        stamp += "." + (str(when.microsecond).rjust(6, "0") + "789")[: draw(st.integers(0, 9))]
    return stamp + zone


@st.composite
def structured_data(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "-"
    elements = []
    for _ in range(draw(st.integers(1, 3))):
        params = "".join(
            f' {draw(WORD)}="{draw(st.text(max_size=20)).replace(chr(34), "")}"'
            for _ in range(draw(st.integers(0, 3)))
        )
        elements.append(f"[{draw(WORD)}{params}]")
    return "".join(elements)


@st.composite
def rfc5424(draw: st.DrawFn) -> bytes:
    fields = [draw(st.sampled_from(["-", "host", "h.example.com"]) | WORD) for _ in range(4)]
    head = f"<{draw(st.integers(0, 191))}>{draw(st.integers(1, 3))} {draw(stamps_5424())} "
    text = head + " ".join(fields) + " " + draw(structured_data())
    if draw(st.booleans()):
        text += " " + draw(st.sampled_from(["", "\ufeff"])) + draw(TEXT)
    return _encoded(text)


@st.composite
def rfc3164(draw: st.DrawFn) -> bytes:
    """glibc syslog(3), util-linux logger, Go's log/syslog, logger --rfc3164, SysLogHandler."""
    parts = [f"<{draw(st.integers(0, 191))}>"] if draw(st.integers(0, 5)) else []
    if draw(st.integers(0, 4)):
        month = draw(st.sampled_from(syslog.MONTHS))
        day = draw(st.integers(1, 31))
        day_text = draw(st.sampled_from([f"{day:2d}", f"{day:02d}", str(day)]))
        hms = draw(st.tuples(st.integers(0, 25), st.integers(0, 61), st.integers(0, 61)))
        parts.append(f"{month} {day_text} {hms[0]:02d}:{hms[1]:02d}:{hms[2]:02d} ")
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["host ", "h.example.com ", "x" * 260 + " "])))
    if draw(st.integers(0, 3)):
        pid = draw(st.sampled_from(["", "[123]", "[]", "[1 2]", "[" + "9" * 130 + "]"]))
        parts.append(draw(WORD | st.just("a" * 70)) + pid + draw(st.sampled_from([": ", ":"])))
    parts.append(draw(TEXT))
    return _encoded("".join(parts))


def _mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(payload)))
        cut = draw(st.integers(0, 2))
        payload = payload[:at] + draw(TRICKY) + payload[at + cut :]
    if draw(st.booleans()):
        payload = str(len(payload)).encode() + b" " + payload  # an RFC 6587 octet count
    return payload + draw(st.sampled_from([b"", b"\n", b"\r\n", b"\x00", b"\n\x00"]))


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    return _mutated(draw, draw(rfc5424() | rfc3164()))


# -- equivalence -------------------------------------------------------------------------------


@SETTINGS
@given(datagrams())
@example(b"<13>Dec  4 18:24:31 app[" + b"1" * 129 + b"]: x")
@example(b"<13>1 2003-10-11T22:14:15.003Z " + b"h" * 256 + b" a p m - x")
@example(b'<13>1 - h a p m [id k="v\\"w"] x')
@example(b"<13>\xd9\xa3 x")
@example(b"<13>1 2026-02-29T10:00:00Z h a p m - x")  # not a leap year
@example(b"<13>1 2024-02-29T10:00:00Z h a p m - x")
@example(b"<13>1 2026-12-31T23:59:60Z h a p m - x")
@example(b"<13>1 0000-01-01T00:00:00Z h a p m - x")
@example(b"<13>1 2026-12-31T24:00:00Z h a p m - x")
@example(b"\xd9\xa3 <13>x")
@example(b"<1\xd9\xa3>x")
@example(b"<13>Dec  4 18:24:31 \xc2\xa0app: x")
@example(b"<13>Dec  4 18:24:31 " + "é".encode() * 200 + b" app: x")
def test_the_compiled_parser_answers_as_the_reference(payload: bytes) -> None:
    assert_same(payload)


@SETTINGS
@given(st.binary(max_size=300))
def test_the_compiled_parser_answers_as_the_reference_on_any_bytes(payload: bytes) -> None:
    assert_same(payload)


PIECES = st.lists(st.binary(max_size=6) | TRICKY | WORD.map(str.encode), max_size=12)


@SETTINGS
@given(PIECES.map(b"".join))
@example(b"app\x1cx: y")  # \x1c-\x1f are whitespace to Python: they end a tag
@example(b"app[1\x1f2]: y")
@example(b"host\x0bname app: y")
def test_the_compiled_parser_answers_as_the_reference_on_near_misses(payload: bytes) -> None:
    assert_same(b"<13>" + payload)
    assert_same(b"<13>1 " + payload)
    assert_same(b"<13>1 - h a p m [" + payload)
    assert_same(b"<13>Dec  4 18:24:31 " + payload)


def test_a_timestamp_that_changes_day_is_the_one_the_reference_gives() -> None:
    # The compiled parser remembers its last timestamp per clock second, as the reference does.
    now = datetime.now().astimezone()
    for ahead in (timedelta(hours=-1), timedelta(hours=23), timedelta(days=2)):
        when = now + ahead
        month = syslog.MONTHS[when.month - 1]
        assert_same(f"<13>{month} {when.day:2d} {when:%H:%M:%S} app: x".encode())


def test_rfc5424_zones_are_kept() -> None:
    message = FAST(b"<13>1 2003-10-11T22:14:15.003-07:00 h a p m - x")
    assert message.timestamp == datetime(
        2003, 10, 11, 22, 14, 15, 3000, timezone(timedelta(hours=-7))
    )
    assert FAST(b"<13>1 2003-10-11T22:14:15Z h a p m - x").timestamp == datetime(
        2003, 10, 11, 22, 14, 15, tzinfo=UTC
    )


# -- the common shapes take the compiled path ----------------------------------------------------

COMMON = [
    b"<13>Dec  4 18:24:31 myapp[12345]: a line from glibc syslog(3)",  # glibc, logger
    b"<14>Dec 14 08:00:00 myapp: no pid",  # Go's log/syslog without a pid
    b"<30>Dec  4 18:24:31 host.example.com sshd[99]: logger --rfc3164",
    b"<13>a line from Python's SysLogHandler\x00",
    b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] \xef\xbb\xbfAn event',
    b"<13>1 2026-12-04T18:24:31.123456+01:00 host app 4242 - - logger --rfc5424",
    "<13>Dec  4 18:24:31 app[1]: ünïcödé text is fine in the message".encode(),
    b"123 <13>Dec  4 18:24:31 app: an RFC 6587 octet count\n",
]


def declined(
    build: Callable[[Callable[[bytes], Any]], Callable[[bytes], Any]],
    reference: Callable[[bytes], Any],
    payload: bytes,
) -> list[bytes]:
    """What the compiled parser ``build`` makes handed to ``reference`` while parsing
    ``payload`` (checking that its answer is the reference's)."""
    handed: list[bytes] = []

    def fallback(declined_payload: bytes) -> object:
        handed.append(declined_payload)
        return reference(declined_payload)

    assert build(fallback)(payload) == reference(payload)
    return handed


@pytest.mark.parametrize("payload", COMMON)
def test_common_datagrams_are_parsed_without_the_reference(payload: bytes) -> None:
    assert declined(compiled, parse_syslog, payload) == []


def test_make_decoder_chooses_by_the_speedups_setting() -> None:
    assert make_decoder(SyslogMessage, speedups=False) is parse_syslog
    fast = make_decoder(SyslogMessage, speedups=True)
    assert fast is not parse_syslog
    assert fast is not None
    assert fast(COMMON[0]) == parse_syslog(COMMON[0])


def test_the_compiled_parser_refuses_what_is_not_a_payload() -> None:
    with pytest.raises(TypeError):
        FAST("a str")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FAST()  # type: ignore[call-arg]
    with pytest.raises(CodecError):
        FAST(b"\r\n\x00")


# == statsd =======================================================================================


def compiled_statsd(fallback: Callable[[bytes], Any] = parse_packet) -> Callable[[bytes], Any]:
    assert native_parsers.PARSERS is not None
    parser: Callable[[bytes], Any] = native_parsers.PARSERS.StatsdParser(fallback, Metric)
    return parser


FAST_STATSD = compiled_statsd()


def statsd_outcome(parse: Callable[[bytes], Any], payload: bytes) -> tuple[object, int]:
    """What ``parse`` gave, and how many bad lines it counted."""
    take_invalid_lines("statsd")
    return outcome(parse, payload), take_invalid_lines("statsd")


def assert_same_statsd(payload: bytes) -> None:
    assert statsd_outcome(FAST_STATSD, payload) == statsd_outcome(parse_packet, payload), payload


STATSD_TRICKY = st.sampled_from(
    [
        b":", b"|", b"||", b"@", b"@0", b"@1.5", b"@.5", b"#", b"#,", b",", b"c:", b"T", b"T1",
        b"T1234567890123", b"+", b"-", b".", b"e", b"E5", b"1e999", b"_", b"1_0", b" ", b"\t",
        b"inf", b"nan", b"0x1", b"\r", b"\n", b"\r\n", b"\xff", b"\xc3\xa9", b"_e{", b"_sc|",
        b"|c", b"|g", b"|ms", b"|s", b"|h", b"|d", b"|x", b"a" * 257, b"9" * 400,
        b"|T123456789012", b"|T1234567890123", b"|T-1", b"|@1", b"|@0.0", b"|@1e-3", b"|#a,,b",
        b"|c:", b"|c:\xff", b"|#\xff",
    ]
)  # fmt: skip


@st.composite
def statsd_datagrams(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(metrics() | events() | checks(), min_size=1, max_size=4))
    payload = b"\n".join(map(format_line, lines))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(payload)))
        cut = draw(st.integers(0, 2))
        payload = payload[:at] + draw(STATSD_TRICKY) + payload[at + cut :]
    return payload + draw(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]))


@SETTINGS
@given(statsd_datagrams())
@example(b"a:" + b"1" * 1100 + b"|c")  # over MAX_FIELD: the reference's limits
@example(b"n" * 257 + b":1|c")
@example(b"a:1|c|@0|#x")
@example(b"a:+1:-2|g\nb:1:+2|g")
@example(b"a:1.|c|T000000000001")
@example(b"a:1|c|T1234567890123")  # 13 digits: not a timestamp
def test_the_compiled_statsd_parser_answers_as_the_reference(payload: bytes) -> None:
    assert_same_statsd(payload)


@SETTINGS
@given(st.binary(max_size=200))
def test_the_compiled_statsd_parser_answers_as_the_reference_on_any_bytes(payload: bytes) -> None:
    assert_same_statsd(payload)


@SETTINGS
@given(st.lists(STATSD_TRICKY | WORD.map(str.encode) | st.binary(max_size=4), max_size=10))
def test_the_compiled_statsd_parser_answers_as_the_reference_on_near_misses(
    parts: list[bytes],
) -> None:
    assert_same_statsd(b"".join(parts))
    assert_same_statsd(b"name:" + b"".join(parts))
    assert_same_statsd(b"name:1|c|" + b"".join(parts))


STATSD_COMMON = [
    b"page.views:1|c",
    b"api.latency:12.5|ms|@0.5|#env:prod,service:web",
    b"queue.depth:-3|g|#host:a\nqueue.depth:+1|g\r\n",
    b"users:alice|s|#team:x",
    b"req.size:1024|h|T1733332800|c:83b2e7f0",
    b"dist:1:2:3.5e2|d\n\n",
]


@pytest.mark.parametrize("payload", STATSD_COMMON)
def test_common_statsd_datagrams_are_parsed_without_the_reference(payload: bytes) -> None:
    assert declined(compiled_statsd, parse_packet, payload) == []


def test_repeated_names_and_tags_are_the_same_objects() -> None:
    # What an aggregator's dictionaries find fastest: the key it stored, not an equal copy.
    first, second = (FAST_STATSD(b"api.hits:1|c|#env:prod,host:a")[0] for _ in range(2))
    assert first.name is second.name
    assert first.tags is second.tags
    assert statsd_make_decoder(Line, speedups=False) is parse_packet


# == lines ========================================================================================


class Point(msgspec.Struct):
    x: int
    y: int = 0


LINE_TYPES = [bytes, str, Point, dict[str, Any]]
LINE_SAMPLES = st.sampled_from(
    [
        b"\n", b"\r\n", b"\r", b"\n\n", b"\xff", b"\xc3\xa9", b"x", b"{", b"}", b'{"x": 1}',
        b'{"x": "no"}', b'{"y": 2}', b"[]", b" ", b"\x00",
    ]
)  # fmt: skip
LINE_PIECES = st.lists(LINE_SAMPLES | st.binary(max_size=6), max_size=12).map(b"".join)


def lines_outcome(decode: Callable[[bytes], Any], payload: bytes) -> tuple[object, int]:
    take_invalid_lines("lines")
    return outcome(decode, payload), take_invalid_lines("lines")


@pytest.mark.parametrize("line_type", LINE_TYPES, ids=lambda t: getattr(t, "__name__", str(t)))
@SETTINGS
@given(payload=LINE_PIECES)
def test_the_compiled_lines_codec_answers_as_the_reference(line_type: Any, payload: bytes) -> None:
    fast = lines_make_decoder(line_type, speedups=True)
    reference = lines_make_decoder(line_type, speedups=False)
    assert type(fast) is not type(reference)
    assert lines_outcome(fast, payload) == lines_outcome(reference, payload), payload


def test_a_parser_whose_init_failed_refuses_calls() -> None:
    parser = compiled_statsd()
    with pytest.raises(TypeError):
        parser.__init__(1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="not initialised"):
        parser(b"a:1|c")
    parser.__init__(parse_packet, Metric)  # type: ignore[misc]
    assert parser(b"a:1|c") == parse_packet(b"a:1|c")

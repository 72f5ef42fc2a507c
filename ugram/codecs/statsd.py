"""``--codec statsd``: the DogStatsD line protocol, several newline-separated lines a datagram.

Each line is one of:

* a metric ``name:value[:value...]|type[|@rate][|#tag,key:val][|c:container][|T<ts>]``, with
  type ``c`` (count), ``g`` (gauge), ``ms`` (timer), ``h`` (histogram), ``s`` (set) or
  ``d`` (distribution) -> :class:`Metric`;
* an event ``_e{<title bytes>,<text bytes>}:title|text[|d:ts][|h:host][|k:key][|p:priority]
  [|s:source][|t:alert_type][|#tags]`` -> :class:`Event`;
* a service check ``_sc|name|status[|d:ts][|h:host][|#tags][|m:message]`` -> :class:`ServiceCheck`.

Unknown ``|`` sections (newer protocol versions: ``|e:``, ``|card:``) are ignored. The handler
is called once per line that parses; bad lines are skipped, logged and counted (see
:mod:`ugram.codecs.base`), and a datagram without any good line is ``invalid``.

Limits, in bytes: a line longer than :data:`MAX_LINE` (8 KiB, without its line end) is a bad
line, and so is one with a metric name longer than :data:`MAX_NAME` (256 bytes) or a field
longer than :data:`MAX_FIELD` (1 KiB): one value or set member, one tag, a container id, an
event's host, aggregation key, priority, source or alert type, a service check's name or host.
An event's title and text and a service check's message are bounded by the line alone.

Parsing takes time linear in the line: no regular expression reads the line (``float()``
reads a value), and every scan is a ``bytes`` method.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from math import isfinite
from typing import Any, Literal, TypeAlias

import msgspec

from ..errors import HandlerImportError
from . import native
from .base import CodecError, Decode, parse_lines

NAME = "statsd"

MAX_LINE = 8192
"""The longest line read, in bytes: the DogStatsD clients' default payload over a Unix socket,
and the Datadog Agent's default buffer (which a longer line would not fit either)."""
MAX_NAME = 256
"""The longest metric name, in bytes. Datadog keeps 200 characters of a metric name (ASCII
letters, digits, ``_`` and ``.``); a name is the key of every series an aggregator holds, so a
longer one is refused rather than stored."""
MAX_FIELD = 1024
"""The longest value, set member, tag, container id or event/service check field, in bytes
(Datadog allows 200 characters for a tag)."""

MetricType = Literal["c", "g", "ms", "h", "s", "d"]
METRIC_TYPES: frozenset[str] = frozenset(("c", "g", "ms", "h", "s", "d"))


class Metric(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="metric"):
    """One metric line.

    Attributes:
        name: the metric name.
        type: ``c``, ``g``, ``ms``, ``h``, ``s`` or ``d``.
        values: the numeric values (several with ``name:1:2:3|d``); empty for sets.
        members: a set's values, as text (``s`` only; ``values`` is then empty).
        sample_rate: ``@rate``, in (0, 1]; 1.0 when absent.
        tags: ``#`` tags as sent (``key:value`` or ``value``).
        timestamp: ``|T`` seconds since the epoch, or None.
        container_id: ``|c:`` container id, or None.
        relative: a gauge whose every value was sent with a sign (``g:+3``, ``g:-2``): a
            change to add to the gauge, not a value to set it to (statsd's convention;
            ``g:1:+2`` sets it to 2). False for every other type.
    """

    name: str
    type: MetricType
    values: tuple[float, ...] = ()
    members: tuple[str, ...] = ()
    sample_rate: float = 1.0
    tags: tuple[str, ...] = ()
    timestamp: int | None = None
    container_id: str | None = None
    relative: bool = False


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="event"):
    """One ``_e`` event line (``\\n`` escapes in title and text are unescaped)."""

    title: str
    text: str
    timestamp: int | None = None
    hostname: str | None = None
    aggregation_key: str | None = None
    priority: str | None = None
    source_type_name: str | None = None
    alert_type: str | None = None
    tags: tuple[str, ...] = ()


class ServiceCheck(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="service_check"
):
    """One ``_sc`` service check line; ``status`` is 0 OK, 1 warning, 2 critical, 3 unknown."""

    name: str
    status: int
    timestamp: int | None = None
    hostname: str | None = None
    tags: tuple[str, ...] = ()
    message: str | None = None


Line: TypeAlias = Metric | Event | ServiceCheck
"""What a ``--codec statsd`` handler receives, once per line."""


def make_decoder(message_type: Any, speedups: bool = True) -> Decode | None:
    """Return the decoder for a handler taking ``message_type`` (None: raw bytes): the
    compiled twin of :func:`parse_packet` when ``speedups`` and built, else that function.

    Raises:
        HandlerImportError: the handler takes something other than a statsd Line or bytes.
    """
    if message_type is bytes:
        return None
    if message_type in (inspect.Parameter.empty, Any, object, Line):
        compiled = native.parsers(speedups)
        if compiled is None:
            return parse_packet
        parser: Decode = compiled.StatsdParser(parse_packet, Metric)
        return parser
    raise HandlerImportError(
        "with --codec statsd the handler takes ugram.codecs.statsd.Line "
        f"(Metric | Event | ServiceCheck) or bytes, not {message_type!r}"
    )


def parse_packet(payload: bytes) -> list[Line]:
    """Parse every line of a datagram, skipping (and counting) the bad ones.

    Raises:
        CodecError: no line parsed.
    """
    return parse_lines(NAME, payload, parse_line)


def parse_line(line: bytes) -> Line:
    """Parse one DogStatsD line.

    Raises:
        CodecError: the line is not a valid metric, event or service check, or it (its metric
            name, one of its fields) is longer than :data:`MAX_LINE` (:data:`MAX_NAME`,
            :data:`MAX_FIELD`).
    """
    limits = len(line) > MAX_FIELD  # else neither the line nor a field can be too long
    if limits and len(line) > MAX_LINE:
        raise CodecError(f"statsd: line longer than {MAX_LINE} bytes")
    try:
        if line.startswith(b"_e{"):
            return _event(line, limits)
        if line.startswith(b"_sc|"):
            return _service_check(line, limits)
        return _metric(line, limits)
    except UnicodeDecodeError as exc:
        raise CodecError(f"statsd: not UTF-8: {exc.reason}") from None


# -- metrics ----------------------------------------------------------------------------------


def _metric(line: bytes, limits: bool) -> Metric:
    name, colon, rest = line.partition(b":")
    sections = rest.split(b"|")
    if not name or not colon or len(sections) < 2:
        raise CodecError("statsd: not name:value|type")
    if len(name) > MAX_NAME:  # below MAX_FIELD: checked whatever the line's length
        raise CodecError(f"statsd: metric name longer than {MAX_NAME} bytes")
    kind = sections[1].decode()
    if kind not in METRIC_TYPES:
        raise CodecError(f"statsd: unknown metric type {kind[:40]!r}")
    raw_values = sections[0].split(b":")
    fields: dict[str, Any] = {"name": name.decode(), "type": kind}
    if kind == "s":
        fields["members"] = _members(raw_values)
    else:
        fields["values"] = tuple(map(_number, raw_values))
        if kind == "g" and all(raw[:1] in b"+-" for raw in raw_values):
            fields["relative"] = True
    for section in sections[2:]:
        _metric_section(section, fields)
    if limits:  # checked last: a line that does not parse costs no more for its length
        _limit("set member" if kind == "s" else "value", *raw_values)
        _limit_sections(sections[2:], _METRIC_LIMITS)
    return Metric(**fields)


def _members(raw: list[bytes]) -> tuple[str, ...]:
    if not all(raw):
        raise CodecError("statsd: empty set value")
    return tuple(map(bytes.decode, raw))


_NUMBER_START = b"+-.0123456789"
_NUMBER_END = b".0123456789"


def _number(raw: bytes) -> float:
    """``[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?`` (ASCII digits) as a finite float.

    ``float()`` reads that syntax, and besides it only surrounding whitespace, ``_`` between
    digits, ``inf``, ``infinity`` and ``nan``: refused here by the first and last byte and the
    ``_``. (The regular expression this replaces took time quadratic in a run of digits.)

    Raises:
        CodecError: not that syntax, or too large for a float.
    """
    if raw.isdigit() and len(raw) < 300:  # the usual value, and one no float overflows on
        return float(raw)
    try:
        value = float(raw)
    except ValueError:
        raise CodecError(f"statsd: not a number: {raw[:40]!r}") from None
    if raw[0] in _NUMBER_START and raw[-1] in _NUMBER_END and b"_" not in raw:
        if isfinite(value):
            return value
        raise CodecError(f"statsd: value out of range: {raw[:40]!r}")
    raise CodecError(f"statsd: not a number: {raw[:40]!r}")


def _metric_section(section: bytes, fields: dict[str, Any]) -> None:
    if section.startswith(b"@"):
        rate = _number(section[1:])
        if not 0 < rate <= 1:
            raise CodecError(f"statsd: sample rate {rate} outside (0, 1]")
        fields["sample_rate"] = rate
    elif section.startswith(b"#"):
        fields["tags"] = _tags(section[1:])
    elif section.startswith(b"c:"):
        fields["container_id"] = section[2:].decode()
    elif section.startswith(b"T"):
        fields["timestamp"] = _timestamp(section[1:])
    # anything else: a newer protocol field (|e:, |card:, ...) this parser does not use


def _tags(raw: bytes) -> tuple[str, ...]:
    return tuple(filter(None, raw.decode().split(",")))  # without the empty ones


def _timestamp(raw: bytes) -> int:
    if not (raw.isdigit() and len(raw) <= 12):  # \d{1,12}: bytes.isdigit() is ASCII only
        raise CodecError(f"statsd: not a timestamp: {raw[:40]!r}")
    return int(raw)


# -- limits -----------------------------------------------------------------------------------

# The sections whose value is a field, by prefix: what the field is (in "#", each tag is one).
_METRIC_LIMITS = {b"@": "sample rate", b"c:": "container id", b"#": "tag"}
_EVENT_LIMITS = {
    b"h:": "event hostname",
    b"k:": "event aggregation key",
    b"p:": "event priority",
    b"s:": "event source type",
    b"t:": "event alert type",
    b"#": "tag",
}
_CHECK_LIMITS = {b"h:": "service check hostname", b"#": "tag"}


def _limit(what: str, *fields: bytes) -> None:
    """Check that none of ``fields`` is longer than :data:`MAX_FIELD`.

    Raises:
        CodecError: one is (the message calls it ``what``).
    """
    if max(map(len, fields)) > MAX_FIELD:
        raise CodecError(f"statsd: {what} longer than {MAX_FIELD} bytes")


def _limit_sections(sections: Iterable[bytes], limits: dict[bytes, str]) -> None:
    """Check the fields of the ``sections`` that ``limits`` names (by prefix) with :func:`_limit`.

    Raises:
        CodecError: one is too long.
    """
    for section in sections:
        if len(section) <= MAX_FIELD:  # nor is its field then
            continue
        for prefix, what in limits.items():
            if section.startswith(prefix):
                value = section[len(prefix) :]
                _limit(what, *(value.split(b",") if prefix == b"#" else (value,)))


# -- events and service checks ----------------------------------------------------------------

_EVENT_FIELDS = {
    b"d:": "timestamp",
    b"h:": "hostname",
    b"k:": "aggregation_key",
    b"p:": "priority",
    b"s:": "source_type_name",
    b"t:": "alert_type",
}


def _event(line: bytes, limits: bool) -> Event:
    head_end, title_length, text_length = _event_head(line)
    title_end = head_end + title_length
    text_end = title_end + 1 + text_length
    if line[title_end : title_end + 1] != b"|" or text_end > len(line):
        raise CodecError("statsd: event title/text lengths do not match the line")
    if text_end < len(line) and line[text_end : text_end + 1] != b"|":
        raise CodecError("statsd: event text longer than its length")
    fields: dict[str, Any] = {
        "title": _unescape(line[head_end:title_end]),
        "text": _unescape(line[title_end + 1 : text_end]),
    }
    sections = _sections(line[text_end + 1 :])
    for section in sections:
        _event_section(section, fields)
    if limits:  # checked last: a line that does not parse costs no more for its length
        _limit_sections(sections, _EVENT_LIMITS)
    return Event(**fields)


def _event_head(line: bytes) -> tuple[int, int, int]:
    """Read ``_e{T,X}:`` (T and X: 1 to 6 ASCII digits): (where it ends, T, X).

    Raises:
        CodecError: the line does not start so.
    """
    # "_e{" + 6 digits + "," + 6 digits + "}:" is 18 bytes; as no digit is "}", the first
    # "}:" is the one that ends the head, if the line has one
    close = line.find(b"}:", 3, 19)
    if close > 0:
        title, comma, text = line[3:close].partition(b",")
        if comma and title.isdigit() and text.isdigit() and len(title) <= 6 and len(text) <= 6:
            return close + 2, int(title), int(text)
    raise CodecError("statsd: not _e{title_length,text_length}:title|text")


def _event_section(section: bytes, fields: dict[str, Any]) -> None:
    if section.startswith(b"#"):
        fields["tags"] = _tags(section[1:])
        return
    name = _EVENT_FIELDS.get(section[:2])
    if name == "timestamp":
        fields[name] = _timestamp(section[2:])
    elif name is not None:
        fields[name] = section[2:].decode()


def _service_check(line: bytes, limits: bool) -> ServiceCheck:
    parts = line.split(b"|")
    if len(parts) < 3 or not parts[1] or parts[2] not in (b"0", b"1", b"2", b"3"):
        raise CodecError("statsd: not _sc|name|status with status 0-3")
    fields: dict[str, Any] = {"name": parts[1].decode(), "status": int(parts[2])}
    for section in parts[3:]:
        if section.startswith(b"d:"):
            fields["timestamp"] = _timestamp(section[2:])
        elif section.startswith(b"h:"):
            fields["hostname"] = section[2:].decode()
        elif section.startswith(b"#"):
            fields["tags"] = _tags(section[1:])
        elif section.startswith(b"m:"):
            fields["message"] = _unescape(section[2:]).replace("m\\:", "m:")
    if limits:  # checked last: a line that does not parse costs no more for its length
        _limit("service check name", parts[1])
        _limit_sections(parts[3:], _CHECK_LIMITS)
    return ServiceCheck(**fields)


def _sections(raw: bytes) -> list[bytes]:
    return raw.split(b"|") if raw else []


def _unescape(raw: bytes) -> str:
    return raw.decode().replace("\\n", "\n")


# -- formatting (the inverse, for senders and tests) -------------------------------------------


def format_line(line: Line) -> bytes:
    """Render one line in the DogStatsD protocol (what :func:`parse_line` reads back)."""
    if isinstance(line, Event):
        return _format_event(line)
    if isinstance(line, ServiceCheck):
        return _format_service_check(line)
    if line.type == "s":
        values = line.members
    elif line.relative:
        values = tuple(f"{value:+}" if value == value else repr(value) for value in line.values)
    else:
        values = tuple(map(repr, line.values))
    parts = [f"{line.name}:{':'.join(values)}|{line.type}"]
    if line.sample_rate != 1.0:
        parts.append(f"@{line.sample_rate!r}")
    if line.tags:
        parts.append("#" + ",".join(line.tags))
    if line.container_id is not None:
        parts.append(f"c:{line.container_id}")
    if line.timestamp is not None:
        parts.append(f"T{line.timestamp}")
    return "|".join(parts).encode()


def _escape(text: str) -> bytes:
    return text.replace("\n", "\\n").encode()


def _format_event(event: Event) -> bytes:
    title, text = _escape(event.title), _escape(event.text)
    out = b"_e{%d,%d}:%s|%s" % (len(title), len(text), title, text)
    for prefix, name in _EVENT_FIELDS.items():
        value = getattr(event, name)
        if value is not None:
            out += b"|" + prefix + str(value).encode()
    if event.tags:
        out += b"|#" + ",".join(event.tags).encode()
    return out


def _format_service_check(check: ServiceCheck) -> bytes:
    parts = [f"_sc|{check.name}|{check.status}"]
    if check.timestamp is not None:
        parts.append(f"d:{check.timestamp}")
    if check.hostname is not None:
        parts.append(f"h:{check.hostname}")
    if check.tags:
        parts.append("#" + ",".join(check.tags))
    if check.message is not None:
        parts.append("m:" + check.message.replace("\n", "\\n").replace("m:", "m\\:"))
    return "|".join(parts).encode()

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
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable
from typing import Any, Literal, TypeAlias

import msgspec

from ..errors import HandlerImportError
from .base import CodecError, Decode, parse_lines

NAME = "statsd"

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
    """

    name: str
    type: MetricType
    values: tuple[float, ...] = ()
    members: tuple[str, ...] = ()
    sample_rate: float = 1.0
    tags: tuple[str, ...] = ()
    timestamp: int | None = None
    container_id: str | None = None


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


def make_decoder(message_type: Any) -> Decode | None:
    """Return the decoder for a handler taking ``message_type`` (None: raw bytes).

    Raises:
        HandlerImportError: the handler takes something other than a statsd Line or bytes.
    """
    if message_type is bytes:
        return None
    if message_type in (inspect.Parameter.empty, Any, object, Line):
        return parse_packet
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
        CodecError: the line is not a valid metric, event or service check.
    """
    try:
        if line.startswith(b"_e{"):
            return _event(line)
        if line.startswith(b"_sc|"):
            return _service_check(line)
        return _metric(line)
    except UnicodeDecodeError as exc:
        raise CodecError(f"statsd: not UTF-8: {exc.reason}") from None


# -- metrics ----------------------------------------------------------------------------------

_NUMBER = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TIMESTAMP = re.compile(rb"\d{1,12}")


def _metric(line: bytes) -> Metric:
    name, colon, rest = line.partition(b":")
    sections = rest.split(b"|")
    if not name or not colon or len(sections) < 2:
        raise CodecError("statsd: not name:value|type")
    kind = sections[1].decode()
    if kind not in METRIC_TYPES:
        raise CodecError(f"statsd: unknown metric type {kind!r}")
    raw_values = sections[0].split(b":")
    fields: dict[str, Any] = {"name": name.decode(), "type": kind}
    if kind == "s":
        fields["members"] = _members(raw_values)
    else:
        fields["values"] = tuple(_number(value) for value in raw_values)
    for section in sections[2:]:
        _metric_section(section, fields)
    return Metric(**fields)


def _members(raw: list[bytes]) -> tuple[str, ...]:
    if not all(raw):
        raise CodecError("statsd: empty set value")
    return tuple(value.decode() for value in raw)


def _number(raw: bytes) -> float:
    if not _NUMBER.fullmatch(raw):
        raise CodecError(f"statsd: not a number: {raw[:40]!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise CodecError(f"statsd: value out of range: {raw[:40]!r}")
    return value


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
    return tuple(tag for tag in raw.decode().split(",") if tag)


def _timestamp(raw: bytes) -> int:
    if not _TIMESTAMP.fullmatch(raw):
        raise CodecError(f"statsd: not a timestamp: {raw[:40]!r}")
    return int(raw)


# -- events and service checks ----------------------------------------------------------------

_EVENT_HEAD = re.compile(rb"_e\{(\d{1,6}),(\d{1,6})\}:")
_EVENT_FIELDS = {
    b"d:": "timestamp",
    b"h:": "hostname",
    b"k:": "aggregation_key",
    b"p:": "priority",
    b"s:": "source_type_name",
    b"t:": "alert_type",
}


def _event(line: bytes) -> Event:
    head = _EVENT_HEAD.match(line)
    if head is None:
        raise CodecError("statsd: not _e{title_length,text_length}:title|text")
    title_end = head.end() + int(head.group(1))
    text_end = title_end + 1 + int(head.group(2))
    if line[title_end : title_end + 1] != b"|" or text_end > len(line):
        raise CodecError("statsd: event title/text lengths do not match the line")
    if text_end < len(line) and line[text_end : text_end + 1] != b"|":
        raise CodecError("statsd: event text longer than its length")
    fields: dict[str, Any] = {
        "title": _unescape(line[head.end() : title_end]),
        "text": _unescape(line[title_end + 1 : text_end]),
    }
    for section in _sections(line[text_end + 1 :]):
        _event_section(section, fields)
    return Event(**fields)


def _event_section(section: bytes, fields: dict[str, Any]) -> None:
    if section.startswith(b"#"):
        fields["tags"] = _tags(section[1:])
        return
    name = _EVENT_FIELDS.get(section[:2])
    if name == "timestamp":
        fields[name] = _timestamp(section[2:])
    elif name is not None:
        fields[name] = section[2:].decode()


def _service_check(line: bytes) -> ServiceCheck:
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
    return ServiceCheck(**fields)


def _sections(raw: bytes) -> Iterable[bytes]:
    return raw.split(b"|") if raw else ()


def _unescape(raw: bytes) -> str:
    return raw.decode().replace("\\n", "\n")


# -- formatting (the inverse, for senders and tests) -------------------------------------------


def format_line(line: Line) -> bytes:
    """Render one line in the DogStatsD protocol (what :func:`parse_line` reads back)."""
    if isinstance(line, Event):
        return _format_event(line)
    if isinstance(line, ServiceCheck):
        return _format_service_check(line)
    values = line.members if line.type == "s" else tuple(map(repr, line.values))
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

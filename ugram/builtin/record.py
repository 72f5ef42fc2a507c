"""One datagram, or one decoded message of it, as a JSON-ready record; a batch of them as
JSON lines in one reused buffer (:class:`LineEncoder`)."""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from ..datagram import Datagram, decode_address
from ..escaping import json_bytes, json_unsafe, printable
from ..ring import Record

_encode = msgspec.json.Encoder().encode
_FAST_UNTIL = 253_402_300_000.0  # epoch seconds in year 9999: later ones take datetime's path


def encode(obj: object) -> bytes:
    """``obj`` as JSON (msgspec), with what JSON leaves raw in strings (C1 controls, line
    separators, bidirectional controls) written as ``\\uNNNN``: a reader that splits
    lines on more than ``\\n`` (``str.splitlines``) or a terminal still sees one line.

    Raises:
        TypeError, ValueError, OverflowError, UnicodeEncodeError: as msgspec's ``encode``.
    """
    return json_bytes(_encode(obj))


def record(message: object, dgram: Datagram) -> dict[str, object]:
    """The JSON-ready record of a message: ``time``, ``sender``, credentials, then ``size`` and
    ``text`` (or ``base64``) for bytes, ``text`` for a string, ``data`` for anything decoded."""
    out = _head(dgram, dgram.sender)
    if isinstance(message, bytes):
        out["size"] = len(message)
    _credentials(out, dgram)
    if isinstance(message, bytes):
        try:
            out["text"] = message.decode("utf-8")
        except UnicodeDecodeError:
            out["base64"] = base64.b64encode(message).decode("ascii")
    elif isinstance(message, str):
        out["text"] = message
    else:
        out["data"] = message
    return out


def encode_line(message: object, dgram: Datagram) -> tuple[bytes, str | None]:
    """``message`` as one JSON line (newline included), whatever it holds.

    Control characters in strings are JSON escapes (see :func:`encode`), so one message is
    always one line. A sender path that is not UTF-8 (``os.fsdecode`` gives surrogates) is
    written as :func:`escaped` gives it. A message that still cannot be encoded (a msgpack
    ``Ext``, a string with surrogates) becomes an *error record*: time, sender, credentials,
    the datagram's ``size`` and ``base64``, and ``error`` saying why, so the line is kept,
    never dropped, and the caller can count it.

    Returns:
        The line, and the reason when it is an error record (None otherwise).
    """
    try:
        return encode(record(message, dgram)) + b"\n", None
    except (TypeError, ValueError, OverflowError):  # unsupported type, surrogates
        pass
    sender = escaped(dgram.sender)
    try:
        out = record(message, dgram)
        out["sender"] = sender
        return encode(out) + b"\n", None
    except (TypeError, ValueError, OverflowError) as exc:
        reason = f"the message cannot be encoded as JSON: {exc}"
    out = _head(dgram, sender)
    out["size"] = len(dgram.data)
    _credentials(out, dgram)
    out["base64"] = base64.b64encode(dgram.data).decode("ascii")
    out["error"] = reason
    return encode(out) + b"\n", reason


def escaped(sender: str | None) -> str | None:
    """A sender address as printable text: its bytes that are not UTF-8 and its control
    characters written as ``\\xNN`` (``\\n``, ...), see :func:`ugram.escaping.printable`."""
    return None if sender is None else printable(sender)


def _head(dgram: Datagram, sender: str | None) -> dict[str, object]:
    return {"time": _clock.text(dgram.received_at), "sender": sender}


def _credentials(out: dict[str, object], dgram: Datagram) -> None:
    if dgram.pid is not None:
        out.update(pid=dgram.pid, uid=dgram.uid, gid=dgram.gid)


class IsoClock:
    """Receive times as ``datetime.fromtimestamp(at, UTC).isoformat()`` writes them, without
    building a datetime a record: the last time's text is kept (the records of one read share
    a float time stamp, ~0.24 µs wide), and the date and time of its second.

    The microseconds are rounded as CPython's ``fromtimestamp`` rounds them (the float's
    fraction, ``modf``, times 10**6, half to even, carried into the second at 10**6), so the
    text is the same to the byte (tests/unit/test_sink_lines.py checks it against datetime's).
    """

    __slots__ = ("_at", "_prefix", "_second", "_text")

    def __init__(self) -> None:
        self._at = math.nan  # equal to no time
        self._text = ""
        self._second = -1
        self._prefix = ""

    def text(self, at: float) -> str:
        """``at`` (epoch seconds) as ``2026-11-28T07:18:00.123456+00:00``.

        Raises:
            ValueError, OverflowError, OSError: as ``datetime.fromtimestamp`` (out of range).
        """
        if at == self._at:
            return self._text
        if not 0.0 <= at < _FAST_UNTIL:
            text = datetime.fromtimestamp(at, UTC).isoformat()
        else:
            second = int(at)
            micro = round((at - second) * 1e6)  # the fraction is exact, as modf's
            if micro >= 1_000_000:
                micro, second = micro - 1_000_000, second + 1
            if second != self._second:
                self._prefix = datetime.fromtimestamp(second, UTC).isoformat()[:-6]
                self._second = second
            text = f"{self._prefix}.{micro:06d}+00:00" if micro else self._prefix + "+00:00"
        self._at, self._text = at, text
        return text


_clock = IsoClock()


class _Line(msgspec.Struct):
    """The record :func:`record` builds, as a Struct: the same keys in the same order (the
    UNSET ones are left out), encoded without building a dict."""

    time: str
    sender: str | None
    size: int | UnsetType = UNSET
    pid: int | UnsetType = UNSET
    uid: int | UnsetType | None = UNSET
    gid: int | UnsetType | None = UNSET
    text: str | UnsetType = UNSET
    base64: str | UnsetType = UNSET
    data: Any = UNSET


def _line(message: object, sender: str | None, time: str, record: Record) -> _Line:
    """:func:`record` of ``message``, received as ``record`` from ``sender``, as a
    :class:`_Line`."""
    if isinstance(message, bytes):
        line = _Line(time, sender, size=len(message))
        try:
            line.text = message.decode("utf-8")
        except UnicodeDecodeError:
            line.base64 = base64.b64encode(message).decode("ascii")
    elif isinstance(message, str):
        line = _Line(time, sender, text=message)
    else:
        line = _Line(time, sender, data=message)
    if record[4] != -1 or record[5] != -1:  # credentials collected: Datagram.pid is set
        line.pid, line.uid, line.gid = record[3], record[4], record[5]
    return line


def datagram(record: Record) -> Datagram:
    """The :class:`Datagram` of ``record`` as a worker hands it to a handler (without a
    socket to reply through)."""
    creds = None if record.uid == -1 and record.gid == -1 else record[3:6]
    return Datagram(record.payload, record.recv_ns, record.address, None, creds)


class LineEncoder:
    """A batch of messages as JSON lines, the bytes :func:`encode_line` gives for each: one
    :class:`_Line` a record, then one msgspec ``encode_lines`` call for the whole batch (no
    dict, no ``bytes`` object a line), and one check of the whole batch for characters to
    escape. A batch with a message that is not JSON is encoded again line by line, into a
    buffer kept from batch to batch.

    After :meth:`encode`, :attr:`buffer` holds the lines, each ending in its only ``\\n``
    (JSON escapes the others), and :attr:`ends` the offset just past each one.
    """

    def __init__(self) -> None:
        self.buffer: bytes | bytearray = b""
        self._ends: list[int] | None = []
        encoder = msgspec.json.Encoder()
        self._encode_lines, self._into = encoder.encode_lines, encoder.encode_into
        self._scratch = bytearray()
        self._clock = IsoClock()

    @property
    def ends(self) -> list[int]:
        """The offset just past each line of :attr:`buffer` (found when first asked for)."""
        if self._ends is None:
            self._ends = line_ends(self.buffer)
        return self._ends

    def encode(
        self, messages: Sequence[object], records: Sequence[Record]
    ) -> list[tuple[Record, str]]:
        """Encode one line per message, received as the record beside it (replacing the
        previous batch): the line :func:`encode_line` gives for the message and the
        record's :func:`datagram`.

        Returns:
            The error records written (see :func:`encode_line`): their record and why.
        """
        lines = self._lines(messages, records)
        errors: list[tuple[Record, str]] = []
        try:
            self.buffer, self._ends = self._encode_lines(lines), None
        except (TypeError, ValueError, OverflowError):  # as encode_line's first try
            errors = self._one_by_one(lines, messages, records)
        if json_unsafe(self.buffer):
            self._escape()
        return errors

    def _lines(self, messages: Sequence[object], records: Sequence[Record]) -> list[_Line]:
        """The :class:`_Line` of each message. The records of a batch mostly share their
        sender, those of one read their float receive time, and the messages their type:
        each is looked at once."""
        lines: list[_Line] = []
        append, clock = lines.append, self._clock.text
        address, sender, at, time = b"", None, math.nan, ""
        kind: type | None = None
        decoded = False  # kind is neither bytes nor str (nor a subclass of them)
        for message, record in zip(messages, records, strict=True):
            _, addr, ns, _, uid, gid = record
            if addr != address:
                address, sender = addr, decode_address(addr)
            if ns / 1e9 != at:
                at = ns / 1e9
                time = clock(at)
            if type(message) is not kind:
                kind, decoded = type(message), not isinstance(message, bytes | str)
            if decoded and uid == -1 and gid == -1:  # no credentials: most lines
                append(_Line(time, sender, data=message))
            else:
                append(_line(message, sender, time, record))
        return lines

    def _one_by_one(
        self, lines: list[_Line], messages: Sequence[object], records: Sequence[Record]
    ) -> list[tuple[Record, str]]:
        """:meth:`encode` of a batch with a line msgspec refuses: each line encoded alone, a
        refused one as :func:`encode_line` writes it."""
        buf, into, ends = self._scratch, self._into, []
        errors: list[tuple[Record, str]] = []
        end = 0
        for line, message, record in zip(lines, messages, records, strict=True):
            try:
                into(line, buf, end)
                buf += b"\n"
            except (TypeError, ValueError, OverflowError):
                del buf[end:]
                text, error = encode_line(message, datagram(record))
                buf += text
                if error is not None:
                    errors.append((record, error))
            end = len(buf)
            ends.append(end)
        del buf[end:]
        self.buffer, self._ends = buf, ends
        return errors

    def _escape(self) -> None:
        """Escape, line by line, what :func:`encode` checks for (rare: DEL, C1 controls,
        line separators, bidirectional controls in a message)."""
        lines, start = [], 0
        for end in self.ends:
            lines.append(json_bytes(bytes(self.buffer[start:end])))
            start = end
        self.buffer = b"".join(lines)
        self._ends = list(itertools.accumulate(map(len, lines)))


def line_ends(data: bytes | bytearray) -> list[int]:
    """The offset just past each ``\\n`` of ``data``."""
    ends: list[int] = []
    at = data.find(b"\n")
    while at >= 0:
        ends.append(at + 1)
        at = data.find(b"\n", at + 1)
    return ends

"""One datagram, or one decoded message of it, as a JSON-ready record."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec

from ..datagram import Datagram
from ..escaping import json_bytes, printable

_encode = msgspec.json.Encoder().encode


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
    return {"time": datetime.fromtimestamp(dgram.received_at, UTC).isoformat(), "sender": sender}


def _credentials(out: dict[str, object], dgram: Datagram) -> None:
    if dgram.pid is not None:
        out.update(pid=dgram.pid, uid=dgram.uid, gid=dgram.gid)

"""One datagram, or one decoded message of it, as a JSON-ready record."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec

from ..datagram import Datagram

encode = msgspec.json.Encoder().encode


def record(message: object, dgram: Datagram) -> dict[str, object]:
    """The JSON-ready record of a message: ``time``, ``sender``, credentials, then ``size`` and
    ``text`` (or ``base64``) for bytes, ``text`` for a string, ``data`` for anything decoded."""
    out: dict[str, object] = {
        "time": datetime.fromtimestamp(dgram.received_at, UTC).isoformat(),
        "sender": dgram.sender,
    }
    if isinstance(message, bytes):
        out["size"] = len(message)
    if dgram.pid is not None:
        out.update(pid=dgram.pid, uid=dgram.uid, gid=dgram.gid)
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

"""Built-in handlers usable from the CLI without writing any code."""

from __future__ import annotations

import base64
import sys
from datetime import UTC, datetime

import msgspec

from .datagram import Datagram

_encode = msgspec.json.Encoder().encode


def print_json(dgram: Datagram) -> None:
    """Print each datagram as one JSON line on stdout: time, sender, size, and the payload.

    The payload is under ``text`` when it is valid UTF-8, else under ``base64``.
    """
    record: dict[str, object] = {
        "time": datetime.fromtimestamp(dgram.received_at, UTC).isoformat(),
        "sender": dgram.sender,
        "size": len(dgram.data),
    }
    if dgram.pid is not None:
        record.update(pid=dgram.pid, uid=dgram.uid, gid=dgram.gid)
    try:
        record["text"] = dgram.data.decode("utf-8")
    except UnicodeDecodeError:
        record["base64"] = base64.b64encode(dgram.data).decode("ascii")
    # One write per line: lines from several workers never interleave mid-line.
    sys.stdout.buffer.write(_encode(record) + b"\n")
    sys.stdout.buffer.flush()

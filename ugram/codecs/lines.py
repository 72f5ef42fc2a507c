"""``--codec lines``: one datagram carries several newline-separated messages.

The handler is called once per non-empty line (``\\n`` or ``\\r\\n``). What it receives
depends on the type of its first parameter:

* ``bytes`` (or no annotation): the line's bytes;
* ``str``: the line decoded as UTF-8;
* any other type ``T`` msgspec decodes: the line decoded from JSON into ``T`` (JSON lines).

A line that does not decode is skipped, logged (rate-limited) and counted in
:func:`~ugram.codecs.base.take_invalid_lines`; a datagram none of whose lines decode is
counted as ``invalid``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import HandlerImportError
from . import native
from .base import Decode, parse_lines

NAME = "lines"


def make_decoder(message_type: Any, speedups: bool = True) -> Decode:
    """Return ``decode(payload) -> list`` of the lines, each decoded for ``message_type``
    (split by the compiled parser when ``speedups`` and built).

    Raises:
        HandlerImportError: msgspec cannot decode JSON into ``message_type``.
    """
    parse = _line_parser(message_type)

    def decode(payload: bytes) -> list[Any]:
        return parse_lines(NAME, payload, parse)

    compiled = native.parsers(speedups)
    if compiled is None:
        return decode
    # str asks it for each line's strict UTF-8 text, as _utf8 gives (decoded in C).
    splitter: Decode = compiled.LinesParser(decode, str if parse is _utf8 else parse)
    return splitter


def _line_parser(message_type: Any) -> Callable[[bytes], Any]:
    if message_type in (bytes, inspect.Parameter.empty):
        return bytes
    if message_type is str:
        return _utf8
    try:
        decoder: Any = msgspec.json.Decoder(message_type)
    except TypeError as exc:
        raise HandlerImportError(f"msgspec cannot decode {message_type!r}: {exc}") from exc
    parse: Callable[[bytes], Any] = decoder.decode
    return parse


def _utf8(line: bytes) -> str:
    return line.decode("utf-8")

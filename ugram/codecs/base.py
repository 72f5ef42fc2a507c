"""What every ugram codec shares: the error it raises, line splitting, bad-line accounting."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec

from ..escaping import printable
from ..logs import RateLimited

Decode = Callable[[bytes], Any]
T = TypeVar("T")

log = logging.getLogger("ugram.codecs")
_warn = RateLimited(log)

# Lines that did not parse, per codec, in this process. Multi-message codecs deliver the good
# lines of a datagram and count the bad ones here (the worker counts a datagram as invalid
# only when none of its lines parsed). Read with :func:`take_invalid_lines`.
_invalid_lines: Counter[str] = Counter()


class CodecError(msgspec.DecodeError):
    """Raised by a codec when a payload (or, for multi-message codecs, every line) cannot be
    parsed. A worker counts the datagram as ``invalid``; it is a ``ValueError`` too."""


def split_lines(payload: bytes) -> Iterator[bytes]:
    """Yield the non-empty lines of ``payload`` (``\\n`` or ``\\r\\n`` separated)."""
    for line in payload.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            yield line


def parse_lines(codec: str, payload: bytes, parse: Callable[[bytes], T]) -> list[T]:
    """Parse each line of ``payload``; keep the good ones, count and log the bad ones.

    Returns:
        The parsed lines, in order (at least one).

    Raises:
        CodecError: the payload has no line, or no line parsed.
    """
    parsed: list[T] = []
    bad = 0
    for line in split_lines(payload):
        try:
            parsed.append(parse(line))
        except (ValueError, RecursionError) as exc:  # CodecError and msgspec's are ValueErrors
            bad += 1
            _warn.warning(
                "%s codec: skipped a line that does not parse (%s): %.80r",
                codec,
                printable(str(exc)),
                line,
            )
    if bad:
        _invalid_lines[codec] += bad
    if not parsed:
        raise CodecError(f"{codec}: no valid line in the datagram" if bad else f"{codec}: empty")
    return parsed


def take_invalid_lines(codec: str) -> int:
    """Return how many lines of ``codec`` failed to parse in this process since the last call."""
    return _invalid_lines.pop(codec, 0)

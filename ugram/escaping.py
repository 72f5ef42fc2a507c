"""Text a sender controls, made safe to log or to write as a line.

Sender addresses, payload excerpts and decoder messages end up in ugram's log lines and in
the built-ins' JSON lines. A sender chooses them freely: a socket name may hold a newline
(which forges a log line), ANSI escapes (which rewrite the operator's terminal) or bytes
that are not UTF-8. Everything ugram logs or writes as text passes through here first.
"""

from __future__ import annotations

import re

# C0 controls (newline included), DEL, C1 controls, the line and paragraph separators (lines
# to str.splitlines and some viewers), the bidirectional marks, embeddings, overrides and
# isolates (they reorder what a terminal shows), and lone surrogates (bytes that were not
# UTF-8, from os.fsdecode's surrogateescape).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# What msgspec and json.dumps(ensure_ascii=False) leave raw inside a JSON string: the same
# characters but the C0 controls (which JSON always escapes).
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# The same in UTF-8 (JSON text has no lone surrogates: msgspec refuses to encode them).
_JSON_UNSAFE_UTF8 = re.compile(
    rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]"
)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` as one line with no control character: ``\\n``, ``\\r``, ``\\t``, ``\\xNN``
    (other controls, and the bytes of a path that were not UTF-8) or ``\\uNNNN`` (line
    separators, bidirectional controls, other lone surrogates). Backslashes are left as
    they are, so the result is for reading, not for decoding back."""
    return _UNSAFE.sub(_escape, text)


def printable_bytes(data: bytes) -> str:
    """:func:`printable` of ``data`` decoded as UTF-8, invalid bytes written ``\\xNN``."""
    return printable(data.decode("utf-8", "backslashreplace"))


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _json_escape_utf8(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


def json_text(text: str) -> str:
    """JSON text with the characters JSON encoders leave raw (DEL, C1 controls, line
    separators, bidirectional controls, lone surrogates) written as ``\\uNNNN`` escapes.

    They can only stand inside strings (everything else in JSON is ASCII), where such an
    escape decodes to the very same character: the value is unchanged.
    """
    return _JSON_UNSAFE.sub(_json_escape, text)


def json_unsafe(data: bytes | bytearray) -> bool:
    """True when UTF-8 JSON ``data`` holds a character :func:`json_bytes` escapes."""
    # Every such character's encoding starts with one of these bytes: three byte searches
    # (memchr) rule out the usual text many times faster than the expression's scan.
    if b"\x7f" not in data and b"\xc2" not in data and b"\xe2" not in data:
        return False
    return _JSON_UNSAFE_UTF8.search(data) is not None


def json_bytes(data: bytes) -> bytes:
    """:func:`json_text` for UTF-8 JSON (what ``msgspec.json.encode`` returns)."""
    if not json_unsafe(data):  # the usual case: no copy
        return data
    return _JSON_UNSAFE_UTF8.sub(_json_escape_utf8, data)

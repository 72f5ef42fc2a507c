"""Escaping what a sender chose: one line, no control characters, JSON values unchanged."""

from __future__ import annotations

import logging
import socket
import traceback

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ugram
from ugram.builtin.record import encode, escaped
from ugram.escaping import json_bytes, json_text, printable, printable_bytes
from ugram.logs import JsonFormatter, TextFormatter, format_exception

# What a reader may take for a line end (str.splitlines) or a terminal for a command.
LINE_BREAKERS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/run/app.sock", "/run/app.sock"),
        ("@x\nFAKE", "@x\\nFAKE"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x1b[2J\x00\x7f\x85\x9b", "\\x1b[2J\\x00\\x7f\\x85\\x9b"),
        ("\u2028\u2029\u202e\u2066\u200f", "\\u2028\\u2029\\u202e\\u2066\\u200f"),
        ("/tmp/a\udcffb", "/tmp/a\\xffb"),  # os.fsdecode's stand-in for the byte 0xff
        ("lone \ud800", "lone \\ud800"),
        ("été ✓ \\n", "été ✓ \\n"),  # printable text, backslashes included, as it is
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_bytes_and_escaped_sender() -> None:
    assert printable_bytes(b"GET /\x1b[2J\xff HTTP/1.0") == "GET /\\x1b[2J\\xff HTTP/1.0"
    assert escaped("/tmp/a\udcff\nb") == "/tmp/a\\xff\\nb"
    assert escaped(None) is None


@given(st.text())
def test_printable_is_one_line_without_controls(text: str) -> None:
    out = printable(text)
    assert len(out.splitlines()) <= 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    out.encode("utf-8")  # no lone surrogate left


@given(st.text(st.characters(blacklist_categories=["Cs"])))
def test_json_keeps_the_value_on_one_line(text: str) -> None:
    line = encode({"text": text})
    assert msgspec.json.decode(line) == {"text": text}
    assert len(line.decode().splitlines()) == 1
    assert not set(LINE_BREAKERS) & set(line.decode())
    assert json_bytes(line) == line  # already safe: unchanged


def test_json_text_escapes_what_json_dumps_leaves_raw() -> None:
    assert json_text('{"m": "a\x85b\u2028c"}') == '{"m": "a\\u0085b\\u2028c"}'


def test_a_reply_error_names_the_sender_on_one_line() -> None:
    """Whoever logs the exception (a handler, a log_config of one's own) gets one line."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for address in (b"\0x\nFAKE\x1b[2J", b"/no/such\nFAKE.sock"):
            dgram = ugram.Datagram(b"", 0, address, server, creds=(1, 0, 0))
            with pytest.raises(ugram.ReplyError) as caught:
                dgram.reply(b"answer")
            assert "FAKE" in str(caught.value)
            assert len(str(caught.value).splitlines()) == 1
            assert "\x1b" not in str(caught.value)
    finally:
        server.close()


def record_of(exc: BaseException, message: str = "handler raised %s") -> logging.LogRecord:
    return logging.LogRecord(
        "t", logging.WARNING, __file__, 1, message, ("x\nFAKE",), (type(exc), exc, None)
    )


def raised() -> BaseException:
    try:
        try:
            raise KeyError("inner\nFAKE")
        except KeyError as exc:
            raise ValueError("outer" + chr(10) + "FAKE " + chr(27) + "[2J") from exc
    except ValueError as exc:
        return exc


def test_text_formatter_escapes_messages_and_exception_messages() -> None:
    exc = raised()
    out = TextFormatter().format(record_of(exc))
    assert [line for line in out.splitlines() if line.startswith("FAKE")] == []
    assert "handler raised x\\nFAKE" in out
    assert "ValueError: outer\\nFAKE \\x1b[2J" in out
    assert "direct cause of the following exception" in out
    # the same traceback as Python's, the messages aside
    python = "".join(traceback.format_exception(exc)).replace("outer\nFAKE \x1b[2J", "")
    assert format_exception(exc).replace("outer\\nFAKE \\x1b[2J", "") == python.rstrip("\n")


def test_json_formatter_keeps_one_object_a_line() -> None:
    out = JsonFormatter().format(record_of(raised(), "from %s \x85\u2028"))
    assert len(out.splitlines()) == 1
    assert msgspec.json.decode(out)["message"] == "from x\nFAKE \x85\u2028"

"""LogSink's batch path writes, to the byte, the lines it wrote one dict and one encode at a
time: the receive time as ``datetime.isoformat`` gives it, the same keys in the same order,
the same escapes, the same error records, and one ``write(2)`` a batch that fits the file."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ugram import Datagram
from ugram.builtin import LogSink
from ugram.builtin.record import IsoClock, LineEncoder, datagram, encode_line, escaped
from ugram.codecs.syslog import parse_syslog
from ugram.escaping import json_bytes
from ugram.ring import Record

# -- the reference: the record path as it was before LineEncoder (git 3405425) ----------------

_UNSAFE_UTF8 = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def _escape(data: bytes) -> bytes:
    return _UNSAFE_UTF8.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), data)


def _reference_head(dgram: Datagram, sender: str | None) -> dict[str, object]:
    out: dict[str, object] = {
        "time": datetime.fromtimestamp(dgram.received_at, UTC).isoformat(),
        "sender": sender,
    }
    return out


def _reference_record(message: object, dgram: Datagram, sender: str | None) -> dict[str, object]:
    out = _reference_head(dgram, sender)
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


def reference_line(message: object, dgram: Datagram) -> tuple[bytes, str | None]:
    """The line, and the reason when it is an error record."""
    for sender in (dgram.sender, escaped(dgram.sender)):
        try:
            line = msgspec.json.encode(_reference_record(message, dgram, sender))
            return _escape(line) + b"\n", None
        except (TypeError, ValueError, OverflowError) as exc:
            reason = f"the message cannot be encoded as JSON: {exc}"
    out = _reference_head(dgram, escaped(dgram.sender))
    out["size"] = len(dgram.data)
    if dgram.pid is not None:
        out.update(pid=dgram.pid, uid=dgram.uid, gid=dgram.gid)
    out["base64"] = base64.b64encode(dgram.data).decode("ascii")
    out["error"] = reason
    return _escape(msgspec.json.encode(out)) + b"\n", reason


# -- what the records are made of ----------------------------------------------------------------

UNSAFE = "\x7f\x85\x9b\u2028\u2029\u202e\u2066\u200f"
texts = st.text(st.characters(blacklist_categories=["Cs"]) | st.sampled_from(UNSAFE))
syslog_lines = st.builds(
    lambda pri, text: f"<{pri}>Dec  3 16:56:08 app[42]: {text}".encode(),
    st.integers(0, 191),
    texts,
)
messages = st.one_of(
    st.binary(max_size=40),
    texts,
    st.text(max_size=3).map(lambda t: t + "\ud800"),  # a lone surrogate: an error record
    syslog_lines.map(parse_syslog),
    st.dictionaries(texts, st.integers() | texts | st.none(), max_size=3),
    st.none(),
    st.just(msgspec.msgpack.Ext(1, b"x")),  # not JSON: an error record
    st.integers(-(2**70), 2**70),  # past 64 bits: msgspec refuses
)
senders = st.sampled_from([b"", b"/run/app.sock", b"/run/a\xffb.sock", b"\0abstract\n", b"/x\n"])
recv_ns = st.integers(0, 2**62) | st.sampled_from([10**18, 1_700_000_000_999_999_500, 10**9])
creds = st.none() | st.tuples(st.integers(1, 2**22), st.integers(0, 2**32 - 1), st.integers(0, 9))
records = st.builds(  # as the ring holds them: uid == gid == -1 when none were collected
    lambda data, ns, sender, cred: Record(data, sender, ns, *(cred or (0, -1, -1))),
    st.binary(max_size=20),
    recv_ns,
    senders,
    creds,
)


def test_a_record_is_the_datagram_a_handler_would_get() -> None:
    plain = datagram(Record(b"x", b"/run/a.sock", 1_500_000_000_000_000_001, 0, -1, -1))
    assert (plain.data, plain.sender, plain.received_ns) == (
        b"x",
        "/run/a.sock",
        1_500_000_000_000_000_001,
    )
    assert (plain.pid, plain.uid, plain.gid) == (None, None, None)
    sent = datagram(Record(b"", b"", 1, 42, 0, 7))
    assert (sent.pid, sent.uid, sent.gid, sent.sender) == (42, 0, 7, None)


@settings(max_examples=300)
@given(st.lists(st.tuples(messages, records), max_size=12))
def test_a_batch_is_the_lines_the_reference_writes(batch: list[tuple[object, Record]]) -> None:
    encoder = LineEncoder()
    encoder.encode([b"stale"] * 3, [Record(b"", b"", 1, 0, -1, -1)] * 3)  # a previous batch
    msgs, recs = [m for m, _ in batch], [r for _, r in batch]

    errors = encoder.encode(msgs, recs)

    expected = [reference_line(m, datagram(r)) for m, r in batch]
    lines = [line for line, _ in expected]
    assert bytes(encoder.buffer) == b"".join(lines)
    assert encoder.ends == list(itertools.accumulate(map(len, lines)))
    assert [(id(r), why) for r, why in errors] == [
        (id(r), why) for (_, r), (_, why) in zip(batch, expected, strict=True) if why is not None
    ]
    assert [encode_line(m, datagram(r)) for m, r in batch] == expected  # print_json's path


@given(st.floats(0, 2**35, allow_nan=False) | recv_ns.map(lambda ns: ns / 1e9))
@example(1_700_000_000.0078125)  # exactly 7812.5 µs: rounds to even (7812), not up
@example(1_700_000_000.0234375)  # exactly 23437.5 µs: to even is up (23438)
@example(1_700_000_000.9999996)  # rounds up into the next second
@example(0.0)
@example(253_401_000_000.5)
def test_the_receive_time_is_isoformat_to_the_byte(at: float) -> None:
    clock = IsoClock()
    assert clock.text(at) == datetime.fromtimestamp(at, UTC).isoformat()
    assert clock.text(at) == datetime.fromtimestamp(at, UTC).isoformat()  # the kept text
    assert clock.text(at + 1.5) == datetime.fromtimestamp(at + 1.5, UTC).isoformat()


@given(st.binary() | texts.map(str.encode))
def test_the_escape_check_finds_what_the_expression_finds(data: bytes) -> None:
    assert json_bytes(data) == _escape(data)


def test_a_log_sink_batch_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = LogSink(path=str(tmp_path / "s.jsonl"), fsync="never")
    sink.setup()
    payloads = [f"<14>Dec  3 16:56:08 app[42]: line {i} \u2028".encode() for i in range(64)]
    recs = [
        Record(p, b"", 1_700_000_000_000_000_000 + i, 0, -1, -1) for i, p in enumerate(payloads)
    ]
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr("ugram.builtin.sink.os.write", counting_write)
    sink.handle_batch([parse_syslog(p) for p in payloads], recs)
    monkeypatch.undo()
    sink.teardown()

    written = (tmp_path / "s.jsonl").read_bytes()
    expected = [
        reference_line(parse_syslog(p), datagram(r))[0] for p, r in zip(payloads, recs, strict=True)
    ]
    assert written == b"".join(expected)
    assert writes == [len(written)]


def test_a_log_sink_batch_rotates_between_its_lines(tmp_path: Path) -> None:
    texts = [f"line {i}" for i in range(5)]
    recs = [Record(b"", b"", 1_700_000_000_000_000_000, 0, -1, -1)] * 5
    one = len(reference_line(texts[0], datagram(recs[0]))[0])
    sink = LogSink(path=str(tmp_path / "s.jsonl"), fsync="never", max_bytes=2 * one, backups=3)
    sink.setup()
    sink.handle_batch(texts, recs)
    sink.teardown()

    files = ["s.jsonl.2", "s.jsonl.1", "s.jsonl"]  # oldest first
    lines = [(tmp_path / name).read_text().splitlines() for name in files]
    assert [[json.loads(line)["text"] for line in file] for file in lines] == [
        texts[0:2],
        texts[2:4],
        texts[4:],
    ]

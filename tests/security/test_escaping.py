"""What a hostile sender chooses (its socket's name, its payload) against ugram's own lines,
and a reply meant for an abstract name against the next user to bind that name.

The attacker (``ugattacker``) binds names holding newlines, ANSI escapes, C1 controls, line
separators and bytes that are not UTF-8. None of that may start a line of the server's log
that is not the server's, rewrite the operator's terminal, or split a JSON line of the
built-ins' or dead-letter files.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.conftest import child_env, read_records, run_server, wait_for
from tests.security.conftest import Attacker

EVIL = "\nFAKE LINE \x1b[2J\x85\u2028"
"""In every name the attacker binds: a newline, a screen-clearing escape, NEL and LINE
SEPARATOR (both of which ``str.splitlines`` takes for line ends)."""


@pytest.fixture
def sticky_dir() -> Iterator[Path]:
    """A root-owned sticky directory anyone may create in (like /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="uge", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def forged(text: str) -> list[str]:
    """The lines of ``text`` that start with the attacker's FAKE (any line end counts)."""
    return [line for line in text.splitlines() if line.startswith("FAKE")]


# -- the server's log ---------------------------------------------------------------------------

NAMES_AND_PAYLOADS = r"""
import json, os, socket, sys
server, home, evil = sys.argv[1], os.fsencode(sys.argv[2]), sys.argv[3].encode()
def bound(name):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(name)
    return sock
# an abstract name: the reply to it is refused, and the refusal names it
bound(b"\0ugx" + evil).sendto(b'{"op": "hi"}', server)
# a path that is bound, then removed: the reply fails, and the failure names it
path = home + b"/p" + evil + b"\xff.sock"
gone = bound(path)
os.unlink(path)
gone.sendto(b'{"op": "hi"}', server)
unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
# an unknown field: msgspec's message quotes its name
unbound.sendto(json.dumps({"x" + evil.decode() + "field": 1}).encode(), server)
# the handler raises an error that quotes the payload
unbound.sendto(json.dumps({"op": "raise" + evil.decode()}).encode(), server)
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sender_names_and_payloads_never_forge_a_server_log_line(
    attacker: Attacker, sticky_dir: Path, out_dir: Path, log_format: str
) -> None:
    path = sticky_dir / "s.sock"
    args = ("--codec", "json", "--workers", "1", "--mode", "0666", "--log-format", log_format)
    with run_server("trustapps:strict_echo", path, *args, out_dir=out_dir) as server:
        done = attacker.run(NAMES_AND_PAYLOADS, str(path), str(sticky_dir), EVIL)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: read_records(out_dir).count("handled") == 3, what="3 handled")
        assert server.stop() == 0, server.stderr
    summary = server.summary()
    assert (summary["received"], summary["invalid"], summary["handler_errors"]) == (4, 1, 3)
    stderr = server.stderr
    assert forged(stderr) == [], stderr
    assert "\x1b" not in stderr
    assert "\x85" not in stderr
    assert "\u2028" not in stderr
    escaped = "\\nFAKE LINE \\x1b[2J\\x85\\u2028"
    raised = f"unknown op raise{escaped}"  # escaped in the traceback by the text formatter
    if log_format == "json":  # one object a line, which no name can split
        entries = [json.loads(line) for line in stderr.splitlines()]
        stderr = "\n".join(e["message"] + e.get("exception", "") for e in entries)
        raised = f"unknown op raise{EVIL}"  # the value, JSON-escaped on the line
    # The lines are there, with the names and payloads escaped.
    assert f"refusing to reply to @ugx{escaped}" in stderr
    assert f"/p{escaped}\\xff.sock" in stderr
    assert f"unknown field `x{escaped}field`" in stderr
    assert raised in stderr


SINK_SENDER = r"""
import socket, sys
server, evil = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(b"\0ugx" + evil.encode())
sock.sendto(bytes.fromhex(sys.argv[3]), server)  # a msgpack Ext: an error record, logged
sock.sendto(bytes.fromhex(sys.argv[4]), server)  # a string holding the same characters
"""


def test_log_sink_lines_and_warnings_stay_one_line_each(
    attacker: Attacker, sticky_dir: Path, sock_dir: Path
) -> None:
    path, sink = sticky_dir / "log.sock", sock_dir / "app.jsonl"
    env = child_env(None, UGSINK_PATH=str(sink), UGSINK_FSYNC="always")
    ext = msgspec.msgpack.encode(msgspec.msgpack.Ext(7, b"not JSON"))
    text = msgspec.msgpack.encode("payload" + EVIL)
    args = ("--codec", "msgpack", "--workers", "1", "--mode", "0666")
    with run_server("ugram.builtin:LogSink", path, *args, env=env) as server:
        done = attacker.run(SINK_SENDER, str(path), EVIL, ext.hex(), text.hex())
        assert done.returncode == 0, done.stderr
        wait_for(lambda: sink.exists() and sink.read_bytes().count(b"\n") == 2, what="2 lines")
        assert server.stop() == 0, server.stderr
    lines = sink.read_text().splitlines()
    assert len(lines) == 2, lines  # no NEL or LINE SEPARATOR left raw to split one
    error, message = (json.loads(line) for line in lines)
    assert message == message | {"sender": "@ugx" + EVIL, "text": "payload" + EVIL}
    assert error["sender"] == "@ugx\\nFAKE LINE \\x1b[2J\\x85\\u2028"  # as it is logged
    assert "written as an error record" in server.stderr
    assert forged(server.stderr) == []
    assert "\x1b" not in server.stderr


POISON_SENDER = r"""
import os, socket, sys
server, home, evil = sys.argv[1], os.fsencode(sys.argv[2]), sys.argv[3].encode()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(home + b"/q" + evil + b"\xff.sock")  # not UTF-8: msgspec cannot encode it raw
sock.sendto(b"POISON", server)
sock.sendto(b"good", server)
"""


def test_a_poison_record_from_a_hostile_name_reaches_the_dead_letter_file(
    attacker: Attacker, sticky_dir: Path, sock_dir: Path, out_dir: Path
) -> None:
    path, dead = sticky_dir / "s.sock", sock_dir / "dead.jsonl"
    args = ("--workers", "1", "--poison-attempts", "1", "--mode", "0666", "--dead-letter")
    with run_server("faulty:poison", path, *args, str(dead), out_dir=out_dir) as server:
        done = attacker.run(POISON_SENDER, str(path), str(sticky_dir), EVIL)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "good" in read_records(out_dir), timeout=30, what="the good record")
        assert server.stop() == 0, server.stderr[-3000:]
    assert server.summary()["quarantined"] == 1
    (line,) = dead.read_text().splitlines()
    letter = json.loads(line)
    assert letter["data_base64"] == "UE9JU09O"
    assert letter["sender"] == f"{sticky_dir}/q\\nFAKE LINE \\x1b[2J\\x85\\u2028\\xff.sock"


# -- replies to abstract names -------------------------------------------------------------------

THIEF = r"""
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(bytes.fromhex(sys.argv[1]))  # the name its first holder just gave up
print("bound", flush=True)
sock.settimeout(3.0)
try:
    print("GOT", sock.recv(1000).decode(), flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""


def test_a_reply_meant_for_an_abstract_name_never_reaches_its_next_binder(
    attacker: Attacker, sock_dir: Path, out_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    name = b"\0ugram-victim-" + uuid.uuid4().hex.encode()
    with run_server("trustapps:echo_when_told", path, "--workers", "1", out_dir=out_dir) as srv:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as victim:
            victim.bind(name)
            victim.sendto(b"token for the victim only", str(path))
            wait_for(lambda: "holding" in read_records(out_dir), what="the request in hand")
        thief = attacker.start(THIEF, name.hex())  # the victim is gone: its name is free
        assert thief.stdout is not None
        assert thief.stdout.readline().strip() == "bound"
        (out_dir / "go").touch()
        out, _ = thief.communicate(timeout=30)
        assert srv.stop() == 0, srv.stderr
    assert out.strip() == "nothing", out
    (outcome,) = [r for r in read_records(out_dir) if r != "holding"]
    assert outcome.startswith("refused: refusing to reply to @ugram-victim-"), outcome

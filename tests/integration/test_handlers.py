"""Handlers run by real workers: byte-exact payloads, rejects, errors, replies, codecs, routing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.conftest import (
    child_env,
    profile_env,
    read_records,
    run_server,
    send_all,
    send_async,
    teardowns,
    until,
    wait_for,
)
from ugram import Snapshot, Supervisor, make_config

# -- helpers ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(path: Path, **options: Any) -> AsyncIterator[Supervisor]:
    """A real Supervisor serving in this event loop; killed at the end whatever happened."""
    sup = Supervisor(make_config(socket=str(path), **options))
    task = asyncio.create_task(sup.serve())
    try:
        await until(lambda: sup.is_running or task.done(), what="serving")
        assert sup.is_running, task.exception() if task.done() else None
        yield sup
    finally:
        sup.close()
        await asyncio.wait_for(task, 30)


async def stop(sup: Supervisor) -> Snapshot:
    assert await sup.shutdown() == 0
    return sup.statistics()


@contextlib.contextmanager
def client(bind: str, timeout: float = 10.0) -> Iterator[socket.socket]:
    """A datagram socket bound to ``bind`` (a path, or ``\\0name``) that can get replies."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(bind)
        sock.settimeout(timeout)
        yield sock
    finally:
        sock.close()


def sizes_seen(out_dir: Path) -> Counter[tuple[int, str]]:
    """What ``seqrec:Sizes`` recorded: (length, sha1) pairs."""
    pairs = (line.split() for line in read_records(out_dir))
    return Counter((int(n), digest) for n, digest in pairs)


def digest(payload: bytes) -> tuple[int, str]:
    return len(payload), hashlib.sha1(payload).hexdigest()


# -- payloads arrive byte-exact, oversized ones never ----------------------------------------


def test_sizes_arrive_byte_exact(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    payloads = [b"", b"\x00", os.urandom(4096), os.urandom(65536)]
    with run_server("seqrec:Sizes", path, "--workers", "2", out_dir=out_dir) as server:
        send_all(path, *payloads)
        wait_for(lambda: len(read_records(out_dir)) == 4, timeout=10, what="4 records")
        assert server.stop() == 0, server.stderr
    assert sizes_seen(out_dir) == Counter(digest(p) for p in payloads)
    summary = server.summary()
    assert (summary["received"], summary["handled"], summary["rejected"]) == (4, 4, 0)


@pytest.mark.asyncio
async def test_one_byte_over_max_datagram_is_rejected_not_truncated(
    sock_dir: Path, apps_env: Path
) -> None:
    path = sock_dir / "s.sock"
    fits, over, exact = os.urandom(999), os.urandom(1001), os.urandom(1000)
    async with serving(path, handler="seqrec:Sizes", workers=1, max_datagram=1000) as sup:
        await send_async(path, fits, over, exact)
        await until(lambda: sup.statistics().received == 3, what="3 received")
        await until(lambda: sup.statistics().handled == 2, what="2 handled")
        stats = await stop(sup)
    assert (stats.received, stats.handled, stats.oversized, stats.rejected) == (3, 2, 1, 1)
    # Neither the whole 1001 bytes nor its first 1000 were ever given to the handler.
    assert sizes_seen(apps_env) == Counter([digest(fits), digest(exact)])


# -- handler errors --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_handler_raising_every_tenth_is_counted_and_worker_goes_on(
    sock_dir: Path, apps_env: Path
) -> None:
    path = sock_dir / "s.sock"
    async with serving(path, handler="seqrec:raise_every_tenth", workers=2) as sup:
        await send_async(path, *(str(i).encode() for i in range(1, 1001)))
        await until(lambda: sup.statistics().handled == 1000, what="1000 handled")
        stats = await stop(sup)
    assert stats.handled == 1000
    assert stats.handler_errors == 100
    assert stats.rejected == 0
    assert stats.restarts == 0


# -- replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "profile"),
    [("path", "linux"), ("abstract", "linux"), ("path", "portable")],
    ids=["path", "abstract", "path-portable"],
)
def test_reply_round_trip(sock_dir: Path, kind: str, profile: str) -> None:
    """Portable: no credentials, so the sender's private directory proves its ownership."""
    path = sock_dir / "s.sock"
    bind = str(sock_dir / "c.sock") if kind == "path" else f"\0ugtest-{uuid.uuid4().hex}"
    allow = ["--allow-abstract-replies"] if kind == "abstract" else []
    env = profile_env(profile)
    with (
        run_server("seqrec:echo", path, "--workers", "2", *allow, env=env) as server,
        client(bind) as sock,
    ):
        for word in (b"hello", b"world", b"ugram"):
            sock.sendto(word, str(path))
            assert sock.recv(100) == word.upper()
        assert server.stop() == 0, server.stderr
    assert server.summary()["handler_errors"] == 0


@pytest.mark.asyncio
async def test_a_reply_to_an_abstract_name_is_refused_by_default(
    sock_dir: Path, apps_env: Path
) -> None:
    """An abstract name proves no ownership: by default the reply is refused and counted."""
    path = sock_dir / "s.sock"
    async with serving(path, handler="seqrec:echo", workers=1) as sup:
        with client(f"\0ugtest-{uuid.uuid4().hex}") as sock:
            sock.sendto(b"anyone there?", str(path))
            await until(lambda: sup.statistics().handled == 1, what="the reply attempt")
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):  # the sender is still there: nothing came
                sock.recv(100)
        stats = await stop(sup)
    assert (stats.handled, stats.handler_errors, stats.reply_errors) == (1, 1, 1)


def test_reply_comes_from_the_server_path(sock_dir: Path) -> None:
    """A client can tell the reply is the server's, and answer it at the address it came from."""
    path = sock_dir / "s.sock"
    with (
        run_server("seqrec:echo", path, "--workers", "1") as server,
        client(str(sock_dir / "c.sock")) as sock,
    ):
        sock.sendto(b"ping", str(path))
        reply, source = sock.recvfrom(100)
        assert reply == b"PING"
        assert source == str(path)
        sock.sendto(b"pong", source)  # answering the source reaches the same server
        assert sock.recv(100) == b"PONG"
        assert server.stop() == 0, server.stderr


def test_unbound_sender_to_echo_does_not_break_the_server(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:echo", path, "--workers", "1") as server:
        send_all(path, b"nobody to answer")  # unbound: the reply cannot be sent
        with client(str(sock_dir / "c.sock")) as sock:
            sock.sendto(b"still here?", str(path))
            assert sock.recv(100) == b"STILL HERE?"
        assert server.stop() == 0, server.stderr
    assert "bound no address" in server.stderr
    summary = server.summary()
    assert (summary["received"], summary["handled"], summary["handler_errors"]) == (2, 2, 1)


@pytest.mark.asyncio
async def test_failed_reply_is_counted_as_reply_error(sock_dir: Path, apps_env: Path) -> None:
    path = sock_dir / "s.sock"
    async with serving(path, handler="seqrec:echo", workers=1) as sup:
        await send_async(path, b"unbound sender")
        await until(lambda: sup.statistics().handled == 1, what="1 handled")
        stats = await stop(sup)
    assert stats.reply_errors == 1


# -- codecs ----------------------------------------------------------------------------------

GARBAGE = {
    # not JSON; wrong type for x; missing y
    "json": [b"not json", b'{"x": "one", "y": 2}', b'{"x": 1}'],
    # reserved byte 0xc1; truncated map; a map with wrong type for y
    "msgpack": [b"\xc1", b"\x82\xa1x", msgspec.msgpack.encode({"x": 1, "y": "two"})],
}


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_codec_decodes_struct_and_counts_invalid(
    sock_dir: Path, apps_env: Path, codec: str
) -> None:
    path = sock_dir / "s.sock"
    encode = msgspec.json.encode if codec == "json" else msgspec.msgpack.encode
    points = [(1, 2), (40, 2), (-5, 3)]
    async with serving(path, handler="seqrec:points", workers=2, codec=codec) as sup:
        await send_async(path, *GARBAGE[codec])
        with client(str(sock_dir / "c.sock")) as sock:
            for x, y in points:
                sock.sendto(encode({"x": x, "y": y}), str(path))
                assert await asyncio.to_thread(sock.recv, 100) == str(x + y).encode()
        await until(lambda: sup.statistics().invalid == 3, what="3 invalid")
        stats = await stop(sup)
    assert (stats.received, stats.handled, stats.invalid) == (6, 3, 3)
    assert stats.handler_errors == 0


# -- lifecycle hooks -------------------------------------------------------------------------


def test_class_handler_setup_and_teardown_run_in_every_worker(
    sock_dir: Path, out_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    sent = [f"m{i}".encode() for i in range(50)]
    with run_server("checks:Lifecycle", path, "--workers", "2", out_dir=out_dir) as server:
        send_all(path, *sent)
        wait_for(lambda: len(list(out_dir.glob("*.life"))) == 2, timeout=10, what="2 setups")
        assert server.stop() == 0, server.stderr
    seen: list[str] = []
    for file in out_dir.glob("*.life"):
        lines = file.read_text().splitlines()
        assert lines[0] == "setup"
        # teardown ran last, after every record this worker handled
        assert lines[-1] == f"teardown {len(lines) - 2}"
        seen.extend(lines[1:-1])
    assert sorted(seen) == sorted(p.decode() for p in sent)
    assert server.summary()["handler_errors"] == 0


def test_recorder_teardown_marker_per_worker(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "2", out_dir=out_dir) as server:
        send_all(path, *(f"r{i}".encode() for i in range(20)))
        wait_for(lambda: len(read_records(out_dir)) == 20, timeout=10, what="20 records")
        assert teardowns(out_dir) == 0  # not before shutdown
        assert server.stop() == 0, server.stderr
    assert teardowns(out_dir) == 2


# -- the built-in default handler ------------------------------------------------------------


def test_default_handler_prints_one_json_line_per_datagram(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    stdout_file, stderr_file = sock_dir / "default.stdout", sock_dir / "default.stderr"
    with open(stdout_file, "wb") as out, open(stderr_file, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ugram", "serve", "--socket", str(path), "--workers", "1"],
            env=child_env(),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for(lambda: path.exists() or proc.poll() is not None, what="server")
        assert proc.poll() is None, stderr_file.read_text()
        started = time.time()
        binary = b"\xff\xfe\x00ok"
        with client(str(sock_dir / "c.sock")) as sock:
            sock.sendto("héllo".encode(), str(path))
        send_all(path, binary, b"")
        wait_for(lambda: stdout_file.read_bytes().count(b"\n") >= 3, timeout=10, what="3 lines")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, stderr_file.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    printed = stdout_file.read_text()
    lines = [json.loads(line) for line in printed.splitlines()]
    assert len(lines) == 3, printed
    text, raw, empty = lines
    assert text["text"] == "héllo"
    assert text["size"] == len("héllo".encode())
    assert text["sender"] == str(sock_dir / "c.sock")
    assert "base64" not in text
    assert base64.b64decode(raw["base64"]) == binary
    assert raw["size"] == len(binary)
    assert raw["sender"] is None
    assert "text" not in raw
    assert (empty["size"], empty["text"]) == (0, "")
    for line in lines:
        when = datetime.fromisoformat(line["time"])
        assert when.tzinfo is not None
        assert abs(when.timestamp() - started) < 30


# -- routing by key --------------------------------------------------------------------------


def test_route_by_key_keeps_each_key_on_one_worker(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    records = [json.dumps({"key": f"k{i % 12}", "n": i}).encode() for i in range(600)]
    args = ("--workers", "2", "--codec", "json", "--route-by", "key")
    with run_server("seqrec:Recorder", path, *args, out_dir=out_dir) as server:
        send_all(path, *records[:300], b'{"n": -1}', *records[300:])
        wait_for(lambda: len(read_records(out_dir)) == 600, timeout=15, what="600 records")
        assert server.stop() == 0, server.stderr
    workers_of: dict[str, set[str]] = {}
    for file in out_dir.glob("*.log"):
        for line in file.read_text().splitlines():
            if line != "#teardown":
                workers_of.setdefault(json.loads(line)["key"], set()).add(file.name)
    assert len(workers_of) == 12
    assert all(len(files) == 1 for files in workers_of.values()), workers_of
    assert len(set().union(*workers_of.values())) == 2  # both workers got keys
    assert sorted(read_records(out_dir)) == sorted(r.decode() for r in records)
    summary = server.summary()
    assert (summary["received"], summary["handled"], summary["rejected"]) == (601, 600, 1)


def test_sigterm_right_after_start_still_drains_the_queue(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        "seqrec:Recorder", path, "--workers", "1", out_dir=out_dir, wait=False
    ) as server:
        wait_for(lambda: path.exists() or server.proc.poll() is not None, what="socket file")
        send_all(path, b"a", b"b", b"c")  # queued by the kernel while the children boot
        code = server.stop()
    assert sorted(read_records(out_dir)) == ["a", "b", "c"], server.stderr
    assert code == 0, server.stderr

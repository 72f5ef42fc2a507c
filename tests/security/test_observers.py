"""Attacks by a second local user on what operators read: ``ugram stats``, its control
socket and the metrics endpoint of a server run by root.

The attacker forges a whole server in a shared directory for ``ugram stats`` to trust, holds
the metrics endpoint's connections open, and floods the control socket; each test checks
what a user would see.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.conftest import child_env, read_records, run_server, send_all, wait_for
from tests.security.conftest import Attacker, stop
from ugram.control import expected_peer
from ugram.health import Health
from ugram.observe import ProcessInfo, Report
from ugram.stats import LATENCY_BOUNDS, Latency, Snapshot


def ugram(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ugram`` command as root (the victim), with a deadline."""
    cmd = [sys.executable, "-m", "ugram", *args]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=30)


# -- ugram stats: a forged server in a shared directory ----------------------------------------

# The attacker binds both names ugram stats reads: a datagram socket at the server's path
# and a stream socket at <path>.ctl that answers every connection with a forged report.
FAKE_SERVER = r"""
import os, socket, sys
path, report = sys.argv[1], sys.argv[2].encode()
server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
server.bind(path)
ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ctl.bind(path + ".ctl")
os.chmod(path + ".ctl", 0o777)
ctl.listen(8)
print("ready", flush=True)
ctl.settimeout(30)
try:
    while True:
        conn, _ = ctl.accept()
        conn.sendall(report)
        conn.close()
except OSError:
    pass
"""

# Escapes a terminal acts on: clear the screen (C0 ESC, and the C1 CSI U+009B), a line
# break to forge a line of output, and a bidi override to reorder what is shown.
HOSTILE = "\x1b[2J\x9b31m\u202e\nugram: all clear"


def forged_report(socket_path: str) -> str:
    """A report that decodes as a real one, with terminal escapes in its strings."""
    zeros = {f.name: 0 for f in msgspec.structs.fields(Snapshot)}
    report = Report(
        version="6.6.6-forged",
        time=1000.0,
        pid=1,
        socket=socket_path + HOSTILE,
        phase="running" + HOSTILE,
        uptime_seconds=1.0,
        active_workers=0,
        worker_slots=0,
        totals=Snapshot(**zeros),
        receiver=ProcessInfo(pid=1, state="running" + HOSTILE),
        workers=[],
        latency=Latency(bounds=list(LATENCY_BOUNDS), counts=[0] * 31, sum_seconds=0.0),
        health=Health(ok=False, reasons=["forged" + HOSTILE]),
        metrics="",
        config={"handler": HOSTILE},
    )
    return msgspec.json.encode(report).decode()


@pytest.fixture
def fake_server(attacker: Attacker, shared_dir: Path) -> Iterator[Path]:
    """The attacker's server socket and control socket in the shared directory."""
    path = shared_dir / "s.sock"
    proc = attacker.start(FAKE_SERVER, str(path), forged_report(str(path)))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", stop(proc)
        assert path.lstat().st_uid == attacker.uid
        yield path
    finally:
        stop(proc)


def test_stats_refuses_a_server_forged_whole_in_a_shared_directory(fake_server: Path) -> None:
    """The attacker owns the server socket file too: in a sticky directory that proves
    nothing, so only root or the user running ``ugram stats`` may answer."""
    result = ugram("stats", "--json", "--socket", str(fake_server))
    assert result.returncode == 1, result.stdout
    assert "forged" not in result.stdout
    assert "served by ugattacker" in result.stderr
    assert "writable by everyone (sticky), so any user may own s.sock" in result.stderr
    assert "--expect-user ugattacker" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_stats_escapes_what_a_server_it_was_told_to_trust_sends(
    fake_server: Path, as_json: bool
) -> None:
    """With ``--expect-user`` the report is read, but its strings reach the terminal inert."""
    args = ["--json"] if as_json else ["--interval", "0.05"]
    result = ugram("stats", *args, "--expect-user", "ugattacker", "--socket", str(fake_server))
    assert result.returncode == 0, result.stderr
    assert "6.6.6-forged" in result.stdout
    assert all(ch == "\n" or ch.isprintable() for ch in result.stdout), repr(result.stdout)
    assert not any(line.startswith("ugram: all clear") for line in result.stdout.splitlines())
    if as_json:
        assert msgspec.json.decode(result.stdout)["socket"] == str(fake_server) + HOSTILE
    else:
        assert "\\x1b[2J\\x9b31m\\u202e\\nugram: all clear" in result.stdout


def socket_at(path: Path, uid: int) -> socket.socket:
    """A socket file at ``path`` owned by ``uid`` (root makes it and hands it over)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.chown(path, uid, -1)
    return sock


def test_stats_trusts_a_socket_owner_only_where_nobody_else_makes_names(
    attacker: Attacker, shared_dir: Path
) -> None:
    private = Path(tempfile.mkdtemp(prefix="ugp", dir="/tmp"))
    own = Path(tempfile.mkdtemp(prefix="ugo", dir="/tmp"))
    try:
        private.chmod(0o755)
        own.chmod(0o750)
        os.chown(own, attacker.uid, attacker.gid)  # a service user's RuntimeDirectory=
        socks = [socket_at(d / "s.sock", attacker.uid) for d in (private, own, shared_dir)]
        try:
            for trusted in (private, own):
                peer = expected_peer(str(trusted / "s.sock"))
                assert peer.uids == {attacker.uid}, peer
                assert "the owner of" in peer.who
            shared = expected_peer(str(shared_dir / "s.sock"))
            assert shared.uids == {0}
            assert "sticky" in shared.doubt
            assert expected_peer(str(shared_dir / "s.sock"), attacker.uid).uids == {attacker.uid}
        finally:
            for sock in socks:
                sock.close()
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(own, ignore_errors=True)


# -- the metrics endpoint: connections held open -----------------------------------------------

# Holds ``count`` connections to the endpoint for ``seconds``, each trickling a request head
# too long to finish under the deadline, and opens a new one for each the server closes (as
# a real attacker would: the cap is only full while it keeps refilling it).
SLOWLORIS = r"""
import select, socket, sys, time
where, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
HEAD = b"GET /healthz HTTP/1.0\r\n" + b"X-Slow: 0123456789\r\n" * 1000

def connect():
    if where.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(where)
    else:
        host, port = where.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
    sock.setblocking(False)
    return sock

socks = {connect(): 0 for _ in range(count)}
print("ready", flush=True)
cut = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    readable = select.select(list(socks), [], [], 0.2)[0]
    for sock in readable:  # answered or closed: the server cut it off
        sock.close()
        del socks[sock]
        cut += 1
    while len(socks) < count:
        try:
            socks[connect()] = 0
        except OSError:
            break
    for sock, sent in list(socks.items()):
        try:
            socks[sock] += sock.send(HEAD[sent : sent + 1])
        except OSError:
            pass
print(cut, flush=True)
"""


def healthz(where: str, timeout: float = 5.0) -> bytes:
    """The answer to one GET /healthz, or what went wrong (``timeout``: liveness, not speed)."""
    family = socket.AF_UNIX if where.startswith("/") else socket.AF_INET
    host, _, port = where.rpartition(":")
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(where if family == socket.AF_UNIX else (host, int(port)))
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return b"".join(iter(lambda: sock.recv(65536), b""))
    except OSError as exc:  # refused, reset, or no answer within the timeout
        return repr(exc).encode()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_connections_held_open_by_another_user_do_not_lock_out_healthz(
    attacker: Attacker, shared_dir: Path, transport: str
) -> None:
    path = shared_dir / "s.sock"
    value = "127.0.0.1:0" if transport == "tcp" else str(shared_dir / "m.sock")
    args = ("--workers", "1", "--mode", "0666", "--metrics", value)
    with run_server("seqrec:Recorder", path, *args) as server:
        wait_for(lambda: "serving metrics on" in server.stderr, what="the metrics endpoint")
        where = value
        if transport == "tcp":
            host, port = re.findall(r"serving metrics on http://(.+):(\d+)/", server.stderr)[0]
            where = f"{host}:{port}"
        wait_for(lambda: healthz(where).endswith(b"\r\n\r\nok\n"), what="a healthy server")
        slowloris = attacker.start(SLOWLORIS, where, "100", "6.5")
        try:
            assert slowloris.stdout is not None
            assert slowloris.stdout.readline().strip() == "ready", stop(slowloris)
            answers = []
            for _ in range(20):
                answers.append(healthz(where))
                time.sleep(0.25)
            cut = int(slowloris.stdout.readline() or "0")
        finally:
            stop(slowloris)
        assert server.stop() == 0
    assert all(answer.startswith(b"HTTP/1.0 200 ") for answer in answers), answers
    assert cut >= 36, "the attacker held the cap full and kept refilling it"


# -- the control socket: a flood of connections ------------------------------------------------

# Connects to the control socket in a loop from four threads until the stop file appears,
# and prints how many reports it got and the distinct build times they carried.
CTL_FLOOD = r"""
import json, os, re, socket, sys, threading
path, stop_file = sys.argv[1], sys.argv[2]
answers, times = [0], set()

def flood():
    while not os.path.exists(stop_file):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            try:
                sock.connect(path)
                data = b"".join(iter(lambda: sock.recv(65536), b""))
            except OSError:
                continue
        found = re.search(rb'"time":([0-9.e+-]+)', data)
        if found:
            answers[0] += 1
            times.add(float(found.group(1)))

threads = [threading.Thread(target=flood) for _ in range(4)]
for thread in threads:
    thread.start()
print("ready", flush=True)
for thread in threads:
    thread.join()
print(json.dumps({"answers": answers[0], "times": sorted(times)}), flush=True)
"""


def test_a_control_socket_flood_builds_few_reports_and_the_server_goes_on(
    attacker: Attacker, shared_dir: Path, out_dir: Path
) -> None:
    path, stop_file = shared_dir / "s.sock", shared_dir / "stop-flood"
    payloads = [f"d{i}".encode() for i in range(3000)]
    args = ("--workers", "2", "--mode", "0666")
    with run_server("seqrec:Recorder", path, *args, out_dir=out_dir) as server:
        flood = attacker.start(CTL_FLOOD, f"{path}.ctl", str(stop_file))
        try:
            assert flood.stdout is not None
            assert flood.stdout.readline().strip() == "ready", stop(flood)
            send_all(path, *payloads[:1500])
            server.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda: server.stderr.count("replaced (now pid") == 2,
                timeout=120,
                what="the SIGHUP reload to replace both workers, under the flood",
            )
            send_all(path, *payloads[1500:])
            wait_for(
                lambda: len(set(read_records(out_dir))) == len(payloads),
                timeout=120,
                what="every datagram handled, under the flood",
            )
            stop_file.touch()
            flooded = json.loads(flood.stdout.readline())
        finally:
            stop_file.touch()
            stop(flood)
        assert server.stop() == 0, server.stderr[-3000:]

    assert set(read_records(out_dir)) == {p.decode() for p in payloads}
    # Many answers, few reports: no two built less than ANSWER_MAX_AGE (0.1 s) apart, by the
    # server's own clock (the gap includes building one, so it is never shorter).
    times = flooded["times"]
    assert flooded["answers"] >= 2 * len(times), flooded["answers"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps, default=1.0) >= 0.09, sorted(gaps)[:10]

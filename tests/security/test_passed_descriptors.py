"""Descriptors a second local user passes with a datagram (SCM_RIGHTS) to a server run by root.

The kernel refuses them where it can (SO_PASSRIGHTS, Linux 6.16); the tests of the
receiver's own defence turn that back on first (``accept_passed_descriptors``), as on older
kernels.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    Server,
    accept_passed_descriptors,
    kernel_refuses_rights,
    read_records,
    run_server,
    send,
    wait_for,
)
from tests.security.conftest import Attacker, stop
from ugram.control import fetch

# A TCP socket whose close blocks: SO_LINGER on with a long timeout, and data that cannot
# leave (a peer that never accepts, a receive window full). Passed in a datagram, then the
# attacker's own copy closed: once the datagram is read, the receiver holds the last one.
# Prints "passed" after that close, or the error sendmsg raised.
LINGERING = """
import socket, struct, sys, time
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
listener.bind(("127.0.0.1", 0))
listener.listen(1)  # never accepted, never read
conn = socket.socket()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
conn.connect(listener.getsockname())
conn.setblocking(False)
for _ in range(50):  # until both buffers are full for good
    try:
        while True:
            conn.send(b"x" * 65536)
    except BlockingIOError:
        time.sleep(0.01)
conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 120))
sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sender.connect(sys.argv[1])
try:
    socket.send_fds(sender, [b"lingering"], [conn.fileno()])
except OSError as exc:
    print(type(exc).__name__, exc.errno, flush=True)  # the close below would wait out the linger
else:
    conn.close()
    print("passed", flush=True)
time.sleep(600)  # the listener stays: the connection neither drains nor resets
"""


def receiver_of(server: Server) -> psutil.Process:
    """The server's receiver process."""
    (receiver,) = [
        child
        for child in psutil.Process(server.proc.pid).children()
        if "ugram: receiver" in " ".join(child.cmdline())
    ]
    return receiver


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned directory the attacker may enter (the socket's mode lets it send)."""
    path = Path(tempfile.mkdtemp(prefix="ugp", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    "args",
    [(), ("--speedups=false",), ("--receive-batch", "1")],
    ids=["compiled", "pure-python", "recvmsg"],
)
def test_a_lingering_socket_passed_does_not_freeze_the_receiver(
    attacker: Attacker, open_dir: Path, args: tuple[str, ...]
) -> None:
    out = open_dir / "out"
    out.mkdir()
    path = open_dir / "s.sock"
    # seqrec's handler may reply: credentials are collected, so descriptors are installed.
    with run_server(
        "seqrec:Recorder", path, "--workers", "1", "--mode", "0666", *args, out_dir=out
    ) as server:
        wait_for(lambda: fetch(str(path)).receiver.state == "running", what="the receiver")
        accept_passed_descriptors(server)  # False before Linux 6.16: they pass anyway
        # Stopped until the attacker has closed its copy: the receiver's is then the last.
        receiver = receiver_of(server)
        receiver.suspend()
        proc = attacker.start(LINGERING, str(path))
        try:
            assert proc.stdout is not None
            outcome = proc.stdout.readline().strip()
            receiver.resume()
            assert outcome == "passed"
            with send(path, *(b"after:%d" % i for i in range(20))):
                pass
            # Without the abort, the receiver's close waits out the 120 s linger.
            wait_for(lambda: len(read_records(out)) == 21, what="the datagrams after it")
            totals = fetch(str(path)).totals
        finally:
            stop(proc)
        assert server.stop() == 0
    assert sorted(read_records(out)) == sorted(["lingering", *(f"after:{i}" for i in range(20))])
    assert totals.fds_closed == 1


def test_the_kernel_refuses_descriptors_where_it_can(attacker: Attacker, open_dir: Path) -> None:
    if not kernel_refuses_rights():
        pytest.skip("this kernel lacks SO_PASSRIGHTS (Linux 6.16): the receiver closes them")
    out = open_dir / "out"
    out.mkdir()
    path = open_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1", "--mode", "0666", out_dir=out):
        proc = attacker.start(LINGERING, str(path))
        try:
            assert proc.stdout is not None
            outcome = proc.stdout.readline().strip()
        finally:
            stop(proc)
        assert outcome == "PermissionError 1"  # EPERM: sendmsg refused, nothing queued
        with send(path, b"after"):
            pass
        wait_for(lambda: read_records(out) == ["after"], what="the next datagram")
        assert fetch(str(path)).totals.fds_closed == 0

"""The socket file: its mode and group while serving, what sits at the path before, cleanup."""

from __future__ import annotations

import contextlib
import grp
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env, read_records, run_server, send, wait_for


def serve_refused(path: Path, out_dir: Path, timeout: float = 20.0) -> tuple[int, str]:
    """Run a `ugram serve` that is expected to exit on its own; return (code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ugram", "serve", "seqrec:Recorder", "--socket", str(path)],
        env=child_env(out_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return proc.returncode, err.decode(errors="replace")


def is_live(path: Path) -> bool:
    """True once a server receives on ``path`` (connect is no longer refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return False
    return True


def identity(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def other_group() -> grp.struct_group:
    """A group that is not this process's own, preferably ``daemon``."""
    own = os.getgid()
    with contextlib.suppress(KeyError):
        daemon = grp.getgrnam("daemon")
        if daemon.gr_gid != own:
            return daemon
    for group in grp.getgrall():
        if group.gr_gid != own:
            return group
    pytest.skip("no group other than the process's own exists")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("0600", 0o600), ("0660", 0o660), ("rw-r-----", 0o640)],
    ids=["0600", "0660", "rw-r-----"],
)
def test_mode_while_serving(sock_dir: Path, mode: str, expected: int) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1", "--mode", mode) as server:
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == expected, oct(info.st_mode)
        assert server.stop() == 0, server.stderr


def test_group_is_set_on_the_file(sock_dir: Path) -> None:
    group = other_group()
    path = sock_dir / "s.sock"
    args = ("--workers", "1", "--group", group.gr_name, "--mode", "0660")
    with run_server("seqrec:Recorder", path, *args) as server:
        info = os.lstat(path)
        assert info.st_gid == group.gr_gid != os.getgid()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert server.stop() == 0, server.stderr


def test_stale_socket_is_replaced_and_served(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays: a stale socket nobody receives on
    assert not is_live(path)

    with run_server("seqrec:Recorder", path, "--workers", "1", out_dir=out_dir) as server:
        # The path existed before: wait until the server has replaced it and is bound.
        wait_for(lambda: is_live(path) or server.proc.poll() is not None, what="bound")
        assert server.proc.poll() is None, server.stderr
        send(path, b"hello", b"world").close()
        wait_for(lambda: len(read_records(out_dir)) == 2, timeout=10, what="2 records")
        assert server.stop() == 0, server.stderr
    assert sorted(read_records(out_dir)) == ["hello", "world"]
    assert not path.exists()


def test_live_socket_is_refused_and_first_server_keeps_working(
    sock_dir: Path, out_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1", out_dir=out_dir) as first:
        ours = identity(path)
        send(path, b"before").close()
        wait_for(lambda: read_records(out_dir) == ["before"], timeout=10, what="first record")

        code, err = serve_refused(path, out_dir)
        assert code == 1, err
        assert "already in use" in err

        assert identity(path) == ours  # the second server neither removed nor replaced it
        send(path, b"after").close()
        wait_for(lambda: "after" in read_records(out_dir), timeout=10, what="record after")
        assert first.stop() == 0, first.stderr
    assert sorted(read_records(out_dir)) == ["after", "before"]


def test_regular_file_is_refused_and_left_intact(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    path.write_text("precious data\n")
    code, err = serve_refused(path, out_dir)
    assert code == 1, err
    assert "not a socket" in err
    assert path.read_text() == "precious data\n"
    assert list(out_dir.iterdir()) == []  # no worker ever ran


def test_sigterm_removes_the_socket_file(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1") as server:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert server.stop(signal.SIGTERM) == 0, server.stderr
    assert not path.exists()


def test_exit_leaves_a_successors_socket_alone(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1", out_dir=out_dir) as server:
        # Someone removes our file and binds their own socket at the same path.
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as theirs:
            theirs.bind(str(path))
            theirs.settimeout(10)
            their_file = identity(path)

            assert server.stop() == 0, server.stderr

            assert path.exists()
            assert identity(path) == their_file
            send(path, b"still theirs").close()
            assert theirs.recv(100) == b"still theirs"

"""Trust boundaries: file permissions against a second user, kernel-verified credentials,
allow lists, rate limits, socket-path hardening, abstract names, systemd socket activation."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    accept_passed_descriptors,
    child_env,
    kernel_refuses_rights,
    read_records,
    run_server,
    send,
    wait_for,
)
from ugram.control import fetch
from ugram.observe import Report
from ugram.sockets import SO_PASSRIGHTS

SEND_AS = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "try:\n"
    "    for i in range(int(sys.argv[2])):\n"
    "        s.sendto(f'{sys.argv[3]}:{i}'.encode(), sys.argv[1])\n"
    "except PermissionError:\n"
    "    sys.exit(13)\n"
)

# The venv's interpreter may sit in a directory only root can enter; the sender script uses
# the standard library only, so the system interpreter serves the unprivileged user.
SYSTEM_PYTHON = "/usr/bin/python3"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="switching users needs root and a system python3",
)


def nobody() -> tuple[int, int]:
    """An unprivileged user and its primary group."""
    user = pwd.getpwnam("nobody")
    return user.pw_uid, user.pw_gid


def send_as(uid: int, gid: int, path: Path, count: int, tag: str) -> int:
    """Send from a child process running as ``uid:gid``; returns its exit code (13: EACCES)."""
    return subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", SEND_AS, str(path), str(count), tag],
        user=uid,
        group=gid,
        extra_groups=[],
        cwd="/",
        timeout=30,
        check=False,
    ).returncode


@pytest.fixture
def open_dir(sock_dir: Path) -> Path:
    """The socket directory, traversable by other users (the file's mode is what protects)."""
    sock_dir.chmod(0o755)
    return sock_dir


@needs_root
def test_file_mode_and_group_decide_who_may_send(open_dir: Path, out_dir: Path) -> None:
    uid, gid = nobody()
    out_dir.chmod(0o777)
    path = open_dir / "s.sock"
    with run_server(
        "seqrec:Recorder", path, "--workers", "1", "--mode", "0600", out_dir=out_dir
    ) as server:
        assert send_as(uid, gid, path, 1, "denied") == 13  # EACCES from the kernel
        assert server.stop() == 0
    group = grp.getgrgid(gid).gr_name
    with run_server(
        "seqrec:Recorder", path, "--workers", "1", "--group", group, out_dir=out_dir
    ) as server:
        assert send_as(uid, gid, path, 5, "nobody") == 0
        wait_for(lambda: len(read_records(out_dir)) == 5, what="nobody's datagrams")
        assert server.stop() == 0
    assert sorted(read_records(out_dir)) == sorted(f"nobody:{i}" for i in range(5))


@needs_root
def test_allow_uid_rejects_other_users(open_dir: Path, out_dir: Path) -> None:
    uid, gid = nobody()
    path = open_dir / "s.sock"
    with run_server(
        "seqrec:Recorder",
        path,
        "--workers",
        "1",
        "--mode",
        "0666",
        "--allow-uid",
        "root",
        out_dir=out_dir,
    ) as server:
        assert send_as(uid, gid, path, 7, "nobody") == 0  # the kernel accepts them...
        with send(path, b"root:0"):
            pass
        wait_for(lambda: read_records(out_dir) == ["root:0"], what="root's datagram")
        assert server.stop() == 0
    summary = server.summary()
    assert summary["rejected"] == 7  # ...ugram rejects them before any ring
    assert summary["handled"] == 1


def test_handler_sees_the_senders_credentials(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("trustapps:creds", path, "--workers", "1", "--credentials", out_dir=out_dir):
        code = (
            "import os, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "s.sendto(str(os.getpid()).encode(), sys.argv[1])\n"
            "print(os.getpid())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        )
        wait_for(lambda: read_records(out_dir), what="the record")
    pid = int(out.stdout)
    assert read_records(out_dir) == [f"{pid} {pid} {os.getuid()} {os.getgid()}"]


def receiver_fds(server_pid: int) -> int:
    """How many descriptors the server's receiver process holds open."""
    titles = {p.pid: " ".join(p.cmdline()) for p in psutil.Process(server_pid).children()}
    (pid,) = [pid for pid, title in titles.items() if "ugram: receiver" in title]
    return len(os.listdir(f"/proc/{pid}/fd"))


def report_since(path: Path, since: float) -> Report:
    """A report read after ``since``: the control socket answers with one up to 0.1 s old."""
    deadline = time.monotonic() + 20
    while (report := fetch(str(path))).time < since:
        assert time.monotonic() < deadline, "no report newer than the records"
        time.sleep(0.02)
    return report


@pytest.mark.parametrize(
    "args",
    [
        ("--credentials",),
        ("--credentials", "--speedups=false"),
        ("--credentials", "--receive-batch", "1"),
    ],
    ids=["credentials-compiled", "credentials-pure-python", "credentials-recvmsg"],
)
def test_descriptors_senders_pass_are_closed_and_datagrams_delivered(
    sock_dir: Path, out_dir: Path, args: tuple[str, ...]
) -> None:
    path = sock_dir / "s.sock"
    count, per_datagram = 300, 6
    with run_server("seqrec:Recorder", path, "--workers", "1", *args, out_dir=out_dir) as server:
        wait_for(lambda: fetch(str(path)).receiver.state == "running", what="the receiver")
        accept_passed_descriptors(server)  # as before Linux 6.16, which would refuse them
        before = receiver_fds(server.proc.pid)
        passed = [os.open(os.devnull, os.O_RDONLY) for _ in range(per_datagram)]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                sender.connect(str(path))
                for i in range(count):
                    socket.send_fds(sender, [b"%d" % i], passed)
        finally:
            for fd in passed:
                os.close(fd)
        wait_for(lambda: len(read_records(out_dir)) == count, what=f"{count} records")
        after = receiver_fds(server.proc.pid)
        totals = report_since(path, time.time()).totals
    assert sorted(map(int, read_records(out_dir))) == list(range(count))
    assert after == before  # none kept: 6 a datagram would have made 1800
    # With credentials the kernel installs them and the receiver closes them; without, it
    # gives the receiver no room for them and closes them itself.
    assert totals.fds_closed == (count * per_datagram if args else 0)


def test_rate_limit_passes_exactly_the_burst_per_sender(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        "seqrec:Recorder",
        path,
        "--workers",
        "1",
        "--rate-limit",
        "1/h",  # no refill during the test: exactly the burst passes
        "--burst",
        "20",
        "--rate-limit-by",
        "pid",
        out_dir=out_dir,
    ) as server:
        noisy = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).parent.parent / "apps" / "sender.py"),
                str(path),
                "noisy",
                "500",
            ],
            env=child_env(),
        )
        assert noisy.wait(30) == 0
        with send(path, *[f"calm:{i}".encode() for i in range(10)]):
            pass
        wait_for(lambda: len(read_records(out_dir)) == 30, what="30 records")
        assert server.stop() == 0
    records = read_records(out_dir)
    assert sorted(r for r in records if r.startswith("noisy")) == sorted(
        f"noisy:{i}" for i in range(20)
    )
    assert sorted(r for r in records if r.startswith("calm")) == sorted(
        f"calm:{i}" for i in range(10)
    )
    assert server.summary()["rejected"] == 480


def test_never_wider_than_asked_under_umask_000(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append(os.lstat(path).st_mode)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        env = child_env()
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'umask 000; exec "$@"',
                "sh",
                sys.executable,
                "-m",
                "ugram",
                "serve",
                "--socket",
                str(path),
                "--workers",
                "1",
                "--mode",
                "0640",
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: len(seen) > 1000 and stat.S_IMODE(seen[-1]) == 0o640)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        stop.set()
        watcher.join()
    modes = {stat.S_IMODE(m) for m in seen}
    assert all(mode & ~0o640 == 0 for mode in modes), sorted(oct(m) for m in modes)


def test_symlink_at_path_is_refused(sock_dir: Path) -> None:
    target = sock_dir / "elsewhere.sock"
    link = sock_dir / "s.sock"
    link.symlink_to(target)
    result = serve_once("--socket", str(link))
    assert result.returncode == 1
    assert "symbolic link" in result.stderr
    assert link.is_symlink()
    assert not target.exists()


def test_missing_parent_is_an_error_unless_mkdir(sock_dir: Path) -> None:
    path = sock_dir / "run" / "app" / "s.sock"
    result = serve_once("--socket", str(path))
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    with run_server(None, path, "--workers", "1", "--mkdir"):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
        assert stat.S_ISSOCK(path.lstat().st_mode)


def test_path_too_long_is_a_clear_error(sock_dir: Path) -> None:
    result = serve_once("--socket", str(sock_dir / ("x" * 120)))
    assert result.returncode == 1
    assert "at most 107" in result.stderr


def test_relative_path_is_resolved(sock_dir: Path) -> None:
    log = sock_dir / "stderr"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ugram", "serve", "--socket", "rel.sock", "--workers", "1"],
            cwd=sock_dir,
            env=child_env(),
            stderr=stderr,
        )
    try:
        wait_for(lambda: (sock_dir / "rel.sock").exists(), what="relative socket")
        # "listening on" comes once the workers have booted
        wait_for(lambda: "listening on" in log.read_text(), what="listening")
    finally:
        proc.terminate()
        proc.wait(30)
    assert f"listening on {sock_dir / 'rel.sock'}" in log.read_text()  # its absolute path


def test_abstract_socket(out_dir: Path) -> None:
    name = f"@ugram-test-{os.getpid()}"
    env = child_env(out_dir)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ugram",
            "serve",
            "seqrec:Recorder",
            "--socket",
            name,
            "--workers",
            "1",
            "--mode",
            "0600",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

        def sent() -> bool:
            try:
                client.sendto(b"abstract", b"\0" + name[1:].encode())
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            return True

        wait_for(sent, what="abstract socket")
        client.close()
        wait_for(lambda: read_records(out_dir) == ["abstract"], what="the record")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "mode and group do not apply" in err


def test_socket_activation_adopts_the_inherited_socket(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'ugram', 'serve', "
        "'seqrec:Recorder', '--workers', '1', '--socket', sys.argv[2]])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, str(listener.fileno()), str(sock_dir / "unused.sock")],
        pass_fds=[listener.fileno()],
        env=child_env(out_dir),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with send(path, b"via systemd"):
            pass
        wait_for(lambda: read_records(out_dir) == ["via systemd"], what="the record")
        # The same socket (systemd's copy, here ours): ugram told the kernel to refuse
        # descriptors passed to it, as for a socket it binds.
        if kernel_refuses_rights():
            assert listener.getsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS) == 0
    finally:
        listener.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert path.exists()  # systemd's socket file is never unlinked by ugram
    assert not (sock_dir / "unused.sock").exists()


def serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ugram", "serve", "--workers", "1", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

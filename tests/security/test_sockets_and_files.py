"""Attacks by a second local user on the files and sockets of a server run by root.

Each test starts real servers, lets a real process of another uid plant symlinks, race
binds or squat names, and checks that no file outside ugram's own was changed, read or
created (``fs.protected_symlinks`` and ``fs.protected_regular`` may be off: nothing relies
on them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import child_env, read_records, run_server, send, wait_for
from tests.security.conftest import Attacker, Victim, plant_hardlink, reply_swap_attack, stop


def serve(
    path: Path, *args: str, handler: str = "seqrec:Recorder", **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run ``ugram serve`` that is expected to fail at start-up; return its result."""
    cmd = [sys.executable, "-m", "ugram", "serve", handler, "--socket", str(path), *args]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=30)


# -- socket directories ------------------------------------------------------------------------


def test_a_socket_directory_owned_by_another_user_is_refused(hostile_dir: Path) -> None:
    result = serve(hostile_dir / "s.sock")
    assert result.returncode == 1, result.stderr
    assert str(hostile_dir) in result.stderr
    assert "owned by another user, ugattacker" in result.stderr
    assert "--allow-unsafe-dir" in result.stderr
    assert os.listdir(hostile_dir) == [], "nothing created there"


def test_doctor_does_not_call_an_attackers_directory_private(hostile_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ugram", "doctor", "--socket", str(hostile_dir / "s.sock")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "private" not in result.stdout.split("socket directory")[1].splitlines()[0]
    assert "[fail]  socket directory" in result.stdout
    assert "owned by another user, ugattacker" in result.stdout
    assert result.returncode == 1


def test_a_group_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    where = Path(tempfile.mkdtemp(prefix="ugg", dir="/tmp"))
    try:
        where.chmod(0o770)
        result = serve(where / "s.sock")
        assert result.returncode == 1
        assert "writable by its group without the sticky bit" in result.stderr
    finally:
        shutil.rmtree(where)


def test_mkdir_does_not_reuse_a_directory_the_attacker_created(
    attacker: Attacker, shared_dir: Path
) -> None:
    planted = shared_dir / "app"
    attacker.run(
        "import os, sys; os.mkdir(sys.argv[1], 0o777); os.chmod(sys.argv[1], 0o777)", str(planted)
    )
    result = serve(planted / "s.sock", "--mkdir")
    assert result.returncode == 1, result.stderr
    assert "owned by another user, ugattacker" in result.stderr
    assert os.listdir(planted) == []
    assert stat.S_IMODE(planted.stat().st_mode) == 0o777


def test_mkdir_creates_private_directories_whatever_the_umask(shared_dir: Path) -> None:
    path = shared_dir / "a" / "b" / "s.sock"
    env = child_env()
    cmd = [
        sys.executable,
        "-c",
        "import os, runpy, sys; os.umask(0); sys.argv = ['ugram', *sys.argv[1:]]; "
        "runpy.run_module('ugram', run_name='__main__')",
    ]
    proc = subprocess.Popen(
        [*cmd, "serve", "--socket", str(path), "--mkdir"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: path.exists(), what="the socket")
        for directory in (shared_dir / "a", shared_dir / "a" / "b"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o750
        assert stat.S_IMODE(path.lstat().st_mode) == 0o660
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_mkdir_creates_nothing_below_a_directory_another_user_may_write(
    attacker: Attacker, shared_dir: Path
) -> None:
    planted = shared_dir / "app"
    attacker.run(
        "import os, sys; os.mkdir(sys.argv[1], 0o777); os.chmod(sys.argv[1], 0o777)", str(planted)
    )
    result = serve(planted / "a" / "b" / "s.sock", "--mkdir")
    assert result.returncode == 1, result.stderr
    assert f"{planted} is owned by another user, ugattacker" in result.stderr
    assert "--allow-unsafe-dir" in result.stderr
    assert os.listdir(planted) == [], "refused before creating anything there"


def test_mkdir_gives_its_directories_the_sockets_group(
    attacker: Attacker, shared_dir: Path, out_dir: Path
) -> None:
    """A member of ``--group`` (here the second user's group) can reach the socket."""
    path = shared_dir / "a" / "b" / "s.sock"
    args = ("--mkdir", "--group", str(attacker.gid), "--workers", "1")
    with run_server("seqrec:Recorder", path, *args, out_dir=out_dir) as server:
        for directory in (shared_dir / "a", shared_dir / "a" / "b"):
            info = directory.stat()
            assert (info.st_uid, info.st_gid) == (0, attacker.gid), directory
            assert stat.S_IMODE(info.st_mode) == 0o750, directory
        done = attacker.run(
            "import socket, sys\n"
            "sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "sock.sendto(b'from the group', sys.argv[1])",
            str(path),
        )
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "from the group" in read_records(out_dir), what="the group's datagram")
        assert server.stop() == 0


# -- the live/stale probe ----------------------------------------------------------------------

BACKLOGGED = r"""
import socket, sys, time
path, kind = sys.argv[1], sys.argv[2]
held = []
if kind == "stream":  # listens, never accepts: one pending connection fills backlog 0
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        try:
            client.connect(path)
        except BlockingIOError:
            break
        held.append(client)
else:  # bound, never reads: its queue is full
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.setblocking(False)
    try:
        while True:
            client.sendto(b"x", path)
    except BlockingIOError:
        pass
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize(
    ("kind", "name"), [("stream", "s.sock"), ("dgram", "s.sock"), ("stream", "s.sock.ctl")]
)
def test_a_squatter_with_a_full_backlog_cannot_hang_serve_or_doctor(
    attacker: Attacker, shared_dir: Path, kind: str, name: str
) -> None:
    """The live/stale probe must not wait on a socket nobody accepts on (a subprocess
    timeout, not a clock, is the failure)."""
    squatter = attacker.start(BACKLOGGED, str(shared_dir / name), kind)
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "ready", stop(squatter)
        result = serve(shared_dir / "s.sock")
        assert result.returncode == 1, result.stderr
        if name == "s.sock":
            assert f"{shared_dir / name} is already in use by another server" in result.stderr
        else:
            assert "cannot serve the control socket" in result.stderr
        doctor = subprocess.run(
            [sys.executable, "-m", "ugram", "doctor", "--socket", str(shared_dir / name)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"socket {shared_dir / name}: live" in doctor.stdout, doctor.stdout
    finally:
        stop(squatter)


# -- the bind race -----------------------------------------------------------------------------


def test_bind_race_never_changes_the_target_of_a_swapped_path(
    attacker: Attacker, hostile_dir: Path, victim: Victim, racer: str
) -> None:
    """The attacker owns the directory (accepted by the operator) and swaps each socket file
    for a symlink to root's file as soon as it appears: mode and group must never reach it."""
    names = ["s.sock", "s.sock.ctl", "m.sock"]
    swapper = attacker.start_program(racer, str(victim.path), str(hostile_dir), "60", *names)
    try:
        for round_ in range(10):
            for name in os.listdir(hostile_dir):
                if os.path.islink(hostile_dir / name):
                    attacker.run("import os, sys; os.unlink(sys.argv[1])", str(hostile_dir / name))
            with run_server(
                "seqrec:Recorder",
                hostile_dir / "s.sock",
                "--allow-unsafe-dir",
                "--mode",
                "0666",
                "--group",
                str(attacker.gid),
                "--metrics",
                str(hostile_dir / "m.sock"),
                "--workers",
                "1",
                wait=False,
            ) as server:
                wait_for(
                    lambda: "listening on" in server.stderr or server.proc.poll() is not None,
                    what=f"round {round_}: start or refusal",
                )
                assert "listening on" in server.stderr, server.stderr[-2000:]
                server.proc.terminate()
                server.proc.wait(20)
            victim.assert_untouched()
    finally:
        stop(swapper)
    victim.assert_untouched()


def test_in_a_sticky_directory_the_attacker_cannot_move_the_socket(
    attacker: Attacker, shared_dir: Path, victim: Victim, racer: str
) -> None:
    names = ("s.sock", "s.sock.ctl")
    swapper = attacker.start_program(racer, str(victim.path), str(shared_dir), "10", *names)
    try:
        with run_server("seqrec:Recorder", shared_dir / "s.sock", "--mode", "0666") as server:
            time.sleep(0.5)
            assert stat.S_ISSOCK((shared_dir / "s.sock").lstat().st_mode)
            assert stat.S_ISSOCK((shared_dir / "s.sock.ctl").lstat().st_mode)
            assert server.stop() == 0
    finally:
        stop(swapper)
    assert "is writable by everyone (sticky)" in server.stderr
    victim.assert_untouched()


# -- the control socket ------------------------------------------------------------------------

SQUATTER = r"""
import json, os, socket, sys, time
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(8)
print("ready", flush=True)
srv.settimeout(20)
try:
    while True:
        conn, _ = srv.accept()
        conn.sendall(sys.argv[2].encode())
        conn.close()
except OSError:
    pass
"""


def forged_report() -> str:

    return json.dumps({"forged": True, "version": "6.6.6"})


def test_a_squatted_control_socket_stops_the_start(attacker: Attacker, shared_dir: Path) -> None:
    squatter = attacker.start(SQUATTER, str(shared_dir / "s.sock.ctl"), "{}")
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "ready"
        result = serve(shared_dir / "s.sock")
        assert result.returncode == 1, result.stderr
        assert "cannot serve the control socket" in result.stderr
        assert "--control=false" in result.stderr
        assert not (shared_dir / "s.sock").exists(), "the server socket was cleaned up"
        with run_server("seqrec:Recorder", shared_dir / "s.sock", "--control=false") as server:
            assert server.stop() == 0
    finally:
        stop(squatter)


def test_ugram_stats_refuses_a_report_from_another_user(
    attacker: Attacker, shared_dir: Path
) -> None:
    path = shared_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--control=false", "--mode", "0666") as server:
        squatter = attacker.start(SQUATTER, str(shared_dir / "s.sock.ctl"), forged_report())
        try:
            assert squatter.stdout is not None
            assert squatter.stdout.readline().strip() == "ready"
            result = subprocess.run(
                [sys.executable, "-m", "ugram", "stats", "--json", "--socket", str(path)],
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            stop(squatter)
        assert server.stop() == 0
    assert result.returncode == 1
    assert "served by ugattacker" in result.stderr
    assert "forged" not in result.stdout


# -- the dead-letter file ----------------------------------------------------------------------


def poison_once(path: Path, out_dir: Path, *args: str) -> str:
    """Run the poison handler, send one POISON and one good record; return the stderr."""
    with run_server(
        "faulty:poison", path, "--workers", "1", "--poison-attempts", "1", *args, out_dir=out_dir
    ) as server:
        with send(path, b"POISON", b"good"):
            pass
        wait_for(lambda: "good" in read_records(out_dir), timeout=60, what="the good record")
        assert server.stop() == 0, server.stderr[-3000:]
    assert server.summary()["quarantined"] == 1
    return server.stderr


def test_default_dead_letter_never_lands_in_a_shared_directory(
    attacker: Attacker, shared_dir: Path, victim: Victim, out_dir: Path
) -> None:
    path = shared_dir / "s.sock"
    planted = shared_dir / "s.sock.dead-letter.jsonl"
    attacker.run(
        "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(victim.path), str(planted)
    )
    state = Path("/var/lib/ugram") / (str(path).strip("/").replace("/", "_") + ".dead-letter.jsonl")
    try:
        poison_once(path, out_dir)
        victim.assert_untouched()
        assert planted.is_symlink()
        letter = json.loads(state.read_text().splitlines()[0])
        assert letter["data_base64"] == "UE9JU09O"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.parent.stat().st_mode) & 0o007 == 0
    finally:
        state.unlink(missing_ok=True)


@pytest.mark.parametrize("plant", ["file-0666", "symlink", "hardlink", "fifo"])
def test_an_explicit_dead_letter_path_planted_by_the_attacker_is_refused(
    attacker: Attacker, shared_dir: Path, victim: Victim, out_dir: Path, plant: str
) -> None:
    dead = shared_dir / "dead.jsonl"
    code = {
        "file-0666": "import os, sys; os.fchmod(os.open(sys.argv[2], os.O_CREAT, 0o666), 0o666)",
        "symlink": "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
        # Nobody reads it: a blocking open for writing would wait forever.
        "fifo": "import os, sys; os.mkfifo(sys.argv[2], 0o666)",
    }.get(plant)
    if code is None:
        plant_hardlink(attacker, victim.path, dead)
    else:
        done = attacker.run(code, str(victim.path), str(dead))
        assert done.returncode == 0, done.stderr
    stderr = poison_once(shared_dir / "s.sock", out_dir, "--dead-letter", str(dead))
    victim.assert_untouched()
    if plant == "file-0666":
        assert dead.read_bytes() == b"", "the attacker's file got no record"
    if plant == "fifo":
        assert stat.S_ISFIFO(dead.lstat().st_mode)
        assert f"{dead} is a FIFO (named pipe), not a regular file" in stderr
    assert "dead-letter" in stderr


# -- replies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("swap", ["symlink", "hardlink"])
def test_a_reply_never_reaches_a_socket_the_sender_does_not_own(
    attacker: Attacker, shared_dir: Path, out_dir: Path, swap: str
) -> None:
    stderr = reply_swap_attack(
        attacker,
        shared_dir / "s.sock",
        shared_dir / "a.sock",
        swap,
        out_dir,
        child_env(out_dir),
        2.0,
    )
    assert "does not own it" in stderr


def test_a_reply_to_a_relative_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that bound ``rel.sock`` in its own directory must not reach ours."""
    import ugram
    from ugram.errors import ReplyError

    monkeypatch.chdir(tmp_path)
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.bind("rel.sock")
    ours.settimeout(0.5)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        dgram = ugram.Datagram(b"x", 0, b"rel.sock", server, creds=(1, os.geteuid(), 0))
        with pytest.raises(ReplyError, match="not an absolute path"):
            dgram.reply(b"reflected")
        with pytest.raises(TimeoutError):
            ours.recv(10)
    finally:
        ours.close()
        server.close()


# -- ugram send --------------------------------------------------------------------------------


@pytest.fixture
def guarded() -> Iterator[socket.socket]:
    """Root's socket in a searchable root-only directory: ``<dir>/root-only.sock``, 0600."""
    home = Path(tempfile.mkdtemp(prefix="ugq", dir="/tmp"))
    home.chmod(0o711)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(home / "root-only.sock"))
    os.chmod(home / "root-only.sock", 0o600)
    sock.settimeout(1.0)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(home)


@pytest.mark.parametrize("planted", ["socket", "directory"])
def test_ugram_send_follows_no_symlink_another_user_planted(
    attacker: Attacker, shared_dir: Path, guarded: socket.socket, planted: str
) -> None:
    """Root sends to a path in /tmp; the attacker's link there must not take the datagram to
    root's own socket (where the attacker could not send it)."""
    import ugram
    from ugram.errors import UnsafePathError

    target = Path(guarded.getsockname())
    link = shared_dir / ("evil.sock" if planted == "socket" else "d")
    pointed = target if planted == "socket" else target.parent
    done = attacker.run("import os, sys; os.symlink(*sys.argv[1:])", str(pointed), str(link))
    assert done.returncode == 0, done.stderr
    path = link if planted == "socket" else link / target.name
    result = subprocess.run(
        [sys.executable, "-m", "ugram", "send", str(path), "from root"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert f"{link} is a symbolic link owned by ugattacker" in result.stderr
    client = ugram.Client(path, policy="drop")
    with client, pytest.raises(UnsafePathError, match="refusing to follow it"):
        client.send(b"from root's client")
    with pytest.raises(TimeoutError):
        guarded.recv(100)


def test_ugram_send_follows_a_symlink_of_root_in_a_private_directory(sock_dir: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_dir / "real.sock"))
    receiver.settimeout(10.0)
    os.symlink("real.sock", sock_dir / "link.sock")  # like /dev/log -> /run/systemd/...
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ugram", "send", str(sock_dir / "link.sock"), "through"],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert receiver.recv(100) == b"through"
    finally:
        receiver.close()

"""The built-in handlers' files against a hostile second local user (``ugattacker2``).

The server runs as root with ``fs.protected_symlinks`` / ``fs.protected_regular`` off: the
attacker prepares directories, symlinks to root's files, foreign partial aggregates and
undecodable datagrams, and the built-ins must neither write through them, nor merge them,
nor lose other users' lines because of them. Every test checks that root's victim files kept
their content, mode, owner and mtime, and that nothing was created beside them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil
import pytest

from tests.conftest import Server, child_env, run_server, send, wait_for
from ugram.builtin import RotatingFile
from ugram.builtin.aggregate import Bucket, dump_bucket
from ugram.builtin.statsd import Spool
from ugram.codecs.statsd import parse_packet

ATTACKER = "ugattacker2"
AGGREGATOR = "ugram.builtin:StatsdAggregator"
SINK = "ugram.builtin:LogSink"
SECRET = b"root's secret, mode 0600\n"


# -- the hostile user, root's victim files, a directory both may write -------------------------


@pytest.fixture(scope="session")
def attacker() -> pwd.struct_passwd:
    """The hostile local account, created if missing (the tests run as root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the attacker is a second local account the tests create")
    try:
        return pwd.getpwnam(ATTACKER)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(ATTACKER)


def as_attacker(script: str) -> None:
    """Run a shell script as the attacker (it fails the test if the script fails)."""
    subprocess.run(["sh", "-ec", script], user=ATTACKER, group=ATTACKER, check=True, timeout=30)


@dataclass
class Vault:
    """A root-only directory (0700) holding root's victim files."""

    path: Path
    baseline: dict[str, tuple[bytes, int, int, int, int]] | None = None

    def settle(self) -> None:
        """Take what the vault holds now as what it must hold at the end of the test."""
        self.baseline = self.snapshot()

    @property
    def victim(self) -> Path:
        return self.path / "victim"

    def snapshot(self) -> dict[str, tuple[bytes, int, int, int, int]]:
        """Name -> (content, mode, uid, nlink, mtime_ns) of everything in the vault."""
        out = {}
        for entry in sorted(self.path.iterdir()):
            info = entry.lstat()
            content = entry.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            out[entry.name] = (content, info.st_mode, info.st_uid, info.st_nlink, info.st_mtime_ns)
        return out


@pytest.fixture
def vault(attacker: pwd.struct_passwd) -> Iterator[Vault]:
    """Root's victim files; after the test, every one of them is as it was, and no other."""
    path = Path(tempfile.mkdtemp(prefix="ugvault", dir="/tmp"))
    os.chmod(path, 0o700)
    vault = Vault(path)
    vault.victim.write_bytes(SECRET)
    os.chmod(vault.victim, 0o600)
    vault.settle()
    try:
        yield vault
        assert vault.snapshot() == vault.baseline, "root's files were changed or created"
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def shared(attacker: pwd.struct_passwd) -> Iterator[Path]:
    """A directory like /tmp: everyone may create entries (mode 1777)."""
    path = Path(tempfile.mkdtemp(prefix="ugshared", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def refused_at_start(server: Server, within: float = 10.0) -> bool:
    """True when the server exits by itself within ``within`` seconds (its workers refused to
    boot); False when it is still serving then (it may say "listening" before they fail)."""
    deadline = time.monotonic() + within
    while server.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.proc.poll() is not None


def workers_of(server: Server) -> list[psutil.Process]:
    """The server's live worker processes (once they have set their title)."""
    found = []
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone, or a zombie, meanwhile
            if child.cmdline()[:1] == ["ugram: worker 0"]:
                found.append(child)
    return found


# -- StatsdAggregator: the directory another user prepared --------------------------------------


@pytest.mark.parametrize("owner", ["attacker", "root-world-writable"])
def test_statsd_refuses_a_directory_another_user_prepared(
    sock_dir: Path, shared: Path, vault: Vault, owner: str
) -> None:
    spool = shared / "statsd"
    if owner == "attacker":
        as_attacker(f"mkdir -m 0777 {spool}")
    else:
        spool.mkdir()
        os.chmod(spool, 0o777)  # root's, but anyone may add and remove entries
    # The attacker's links to root's files, at every name the aggregator writes.
    as_attacker(
        f"cd {spool}\n"
        f"ln -s {vault.victim} .totals.json.tmp\n"
        f"ln -s {vault.victim} statsd.jsonl\n"
        f"ln -s {vault.victim} .lock\n"
        f"ln -s {vault.path}/created-by-root totals.json\n"
    )
    path = sock_dir / "dsd.sock"
    env = child_env(None, UGSTATSD_DIR=str(spool), UGSTATSD_FLUSH_INTERVAL="0.2")
    args = ("--codec", "statsd", "--workers", "2", "--boot-retries", "1")
    with run_server(AGGREGATOR, path, *args, env=env, wait=False) as server:
        if not refused_at_start(server):
            send(path, b"hits:1|c\nusers:eve|s").close()
            time.sleep(1.0)  # a few flushes, through whatever was planted
            server.stop()
        code = server.proc.wait(30)

    assert code == 3, server.stderr
    assert f"refusing the statsd directory {spool}" in server.stderr
    assert "UGSTATSD_DIR" in server.stderr
    reason = f"owned by another user, {ATTACKER}" if owner == "attacker" else "writable by everyone"
    assert reason in server.stderr
    assert sorted(os.listdir(spool)) == [".lock", ".totals.json.tmp", "statsd.jsonl", "totals.json"]


def test_statsd_creates_nothing_below_a_directory_another_user_owns(
    sock_dir: Path, shared: Path, vault: Vault
) -> None:
    planted = shared / "theirs"
    as_attacker(f"mkdir -m 0777 {planted}")
    spool = planted / "app" / "statsd"
    path = sock_dir / "dsd.sock"
    env = child_env(None, UGSTATSD_DIR=str(spool))
    args = ("--codec", "statsd", "--workers", "1", "--boot-retries", "1")
    with run_server(AGGREGATOR, path, *args, env=env, wait=False) as server:
        if not refused_at_start(server):
            server.stop()
        code = server.proc.wait(30)

    assert code == 3, server.stderr
    assert f"refusing the statsd directory {spool}" in server.stderr
    assert f"{planted} is owned by another user, {ATTACKER}" in server.stderr
    assert os.listdir(planted) == [], "refused before creating anything there"


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_statsd_modes_do_not_follow_the_umask(sock_dir: Path, umask: int) -> None:
    path, spool = sock_dir / "dsd.sock", sock_dir / "statsd"
    env = child_env(None, UGSTATSD_DIR=str(spool), UGSTATSD_FLUSH_INTERVAL="0.2")
    old = os.umask(umask)  # the server inherits it
    try:
        with run_server(AGGREGATOR, path, "--codec", "statsd", "--workers", "2", env=env) as srv:
            send(path, b"hits:1|c\nusers:ann|s").close()
            wait_for(lambda: (spool / "totals.json").exists(), what="a first flush")
            assert srv.stop() == 0, srv.stderr
    finally:
        os.umask(old)

    modes = {
        name: stat.S_IMODE(os.lstat(spool / name).st_mode)
        for name in ("", "partials", "workers", "statsd.jsonl", "totals.json", ".lock")
    }
    expected = {"": 0o750, "partials": 0o750, "workers": 0o750}
    expected |= {"statsd.jsonl": 0o640, "totals.json": 0o640, ".lock": 0o600}
    assert modes == expected


def test_statsd_partial_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        spool = Spool(str(tmp_path / "statsd"))
        bucket = Bucket(1000.0)
        for line in parse_packet(b"hits:1|c"):
            bucket.add(line, 10**12)
        spool.write_partial(bucket)
        spool.register()
        spool.close()
    finally:
        os.umask(old)
    files = [*(tmp_path / "statsd/partials").iterdir(), *(tmp_path / "statsd/workers").iterdir()]
    assert len(files) == 2
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def forged_partial(name: str, value: float) -> bytes:
    bucket = Bucket(1.0)
    for line in parse_packet(f"{name}:{value}|c".encode()):
        bucket.add(line, 1_000_000_000)
    return dump_bucket(bucket)


def test_statsd_merges_only_partials_that_are_its_own(
    sock_dir: Path, vault: Vault, attacker: pwd.struct_passwd
) -> None:
    spool = sock_dir / "statsd"
    partials = spool / "partials"
    partials.mkdir(parents=True, mode=0o750)
    # Partials of the interval that started at 1 s since the epoch: merged at the first tick.
    foreign = partials / "000000000001000-1-aa-0.msgpack"
    foreign.write_bytes(forged_partial("forged.owner", 1e6))
    os.chown(foreign, attacker.pw_uid, attacker.pw_gid)
    (vault.path / "linked").write_bytes(forged_partial("forged.link", 1e6))
    os.chmod(vault.path / "linked", 0o600)
    (vault.path / "pointed").write_bytes(forged_partial("forged.symlink", 1e6))
    os.chmod(vault.path / "pointed", 0o600)
    vault.settle()  # with the two files that partials/ reaches: unchanged at the end too
    os.link(vault.path / "linked", partials / "000000000001000-1-bb-0.msgpack")
    os.symlink(vault.path / "pointed", partials / "000000000001000-1-cc-0.msgpack")
    (partials / "000000000001000-1-dd-0.msgpack").mkdir()
    (partials / "1000x.msgpack").write_bytes(b"a name that is not a partial's")

    path = sock_dir / "dsd.sock"
    env = child_env(None, UGSTATSD_DIR=str(spool), UGSTATSD_FLUSH_INTERVAL="0.2")
    with run_server(AGGREGATOR, path, "--codec", "statsd", "--workers", "2", env=env) as srv:
        send(path, b"legit:1|c").close()
        wait_for(lambda: (spool / "totals.json").exists(), what="a first flush")
        assert srv.stop() == 0, srv.stderr

    totals = json.loads((spool / "totals.json").read_text())
    assert [(c["name"], c["value"]) for c in totals["counters"]] == [("legit", 1.0)]
    assert totals["skipped_partials"] == 3
    assert f"owned by {ATTACKER}" in srv.stderr
    assert "has 2 hard links" in srv.stderr
    assert "symbolic link" in srv.stderr
    # The rest was merged or removed; a directory is no partial and is left alone.
    assert sorted(os.listdir(partials)) == ["000000000001000-1-dd-0.msgpack", "1000x.msgpack"]


def test_statsd_caps_series_and_set_members_in_a_real_server(sock_dir: Path) -> None:
    path, spool = sock_dir / "dsd.sock", sock_dir / "statsd"
    env = child_env(
        None,
        UGSTATSD_DIR=str(spool),
        UGSTATSD_FLUSH_INTERVAL="0.2",
        UGSTATSD_MAX_SERIES="5",
        UGSTATSD_MAX_SET_MEMBERS="3",
    )
    # One datagram: one receive time, so one interval (caps are per interval and in totals).
    members = b"users:" + b":".join(b"u%d" % i for i in range(10)) + b"|s"
    packet = b"\n".join([members, *(b"m%d:1|c" % i for i in range(20))])
    with run_server(AGGREGATOR, path, "--codec", "statsd", "--workers", "1", env=env) as srv:
        send(path, packet).close()
        wait_for(lambda: (spool / "totals.json").exists(), what="a first flush")
        assert srv.stop() == 0, srv.stderr

    totals = json.loads((spool / "totals.json").read_text())
    assert [s["value"] for s in totals["sets"]] == [3]
    assert len(totals["counters"]) == 4  # the set is one of the five series
    assert (totals["refused_lines"], totals["refused_members"]) == (16, 7)
    assert "statsd: refused 16 line(s)" in srv.stderr


# -- LogSink: links planted at its file, its lock, its rotated files --------------------------


@pytest.mark.parametrize("planted", ["file", "lock", "directory", "fifo"])
def test_log_sink_never_writes_through_what_another_user_planted(
    sock_dir: Path, shared: Path, vault: Vault, planted: str
) -> None:
    sink = shared / "app.jsonl"
    if planted == "file":
        as_attacker(f"ln -s {vault.victim} {sink}")
        expected = f"{sink} is a symbolic link"
    elif planted == "lock":
        as_attacker(f"ln -s {vault.path}/created-by-root {sink}.lock")
        expected = f"{sink}.lock is a symbolic link"
    elif planted == "fifo":  # nobody reads it: a blocking open for writing never returns
        as_attacker(f"mkfifo -m 0666 {sink}")
        expected = f"{sink} is a FIFO (named pipe), not a regular file"
    else:
        sink = shared / "logs" / "app.jsonl"
        as_attacker(f"mkdir -m 0755 {sink.parent}")
        expected = f"owned by another user, {ATTACKER}"
    path = sock_dir / "log.sock"
    env = child_env(None, UGSINK_PATH=str(sink), UGSINK_FSYNC="always")
    with run_server(
        SINK, path, "--workers", "1", "--boot-retries", "1", env=env, wait=False
    ) as srv:
        if not refused_at_start(srv):
            send(path, b"a line for the log").close()
            time.sleep(0.5)
            srv.stop()
        code = srv.proc.wait(30)

    assert code == 3, srv.stderr
    assert f"UGSINK_PATH={sink}" in srv.stderr
    assert expected in srv.stderr
    if planted == "directory":
        assert os.listdir(sink.parent) == []


def test_log_sink_rotation_never_reopens_a_link_planted_meanwhile(
    shared: Path, vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = shared / "app.jsonl"
    real = {name: getattr(os, name) for name in ("rename", "replace")}

    def rename_then_plant(name: str):  # type: ignore[no-untyped-def]
        def wrapped(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
            real[name](src, dst, *args, **kwargs)
            if os.fspath(dst).endswith("app.jsonl.1"):  # the attacker wins the race
                as_attacker(f"ln -s {vault.victim} {sink}")

        return wrapped

    file = RotatingFile(str(sink), max_bytes=20, backups=2, sync_on_rotate=False)
    for name in real:
        monkeypatch.setattr(os, name, rename_then_plant(name))
    lines = [b"line %02d 0123456\n" % i for i in range(4)]  # 16 bytes: one a file
    try:
        file.write(lines[:2])  # rotates once: the attacker plants app.jsonl -> victim
        file.write(lines[2:])
    finally:
        monkeypatch.undo()
        file.close()

    assert os.path.islink(sink)
    assert (shared / "app.jsonl.1").read_bytes() == b"".join(lines)  # nothing lost


# -- LogSink: one record that cannot be encoded costs nothing to the others ------------------


def test_log_sink_writes_every_line_when_some_cannot_be_encoded(sock_dir: Path) -> None:
    path, sink = sock_dir / "log.sock", sock_dir / "app.jsonl"
    env = child_env(None, UGSINK_PATH=str(sink), UGSINK_FSYNC="always")
    legit = [msgspec.msgpack.encode(f"line {i}") for i in range(400)]
    ext = msgspec.msgpack.encode(msgspec.msgpack.Ext(7, b"not JSON"))
    with run_server(SINK, path, "--codec", "msgpack", "--workers", "1", env=env) as srv:
        wait_for(lambda: len(workers_of(srv)) == 1, what="the worker's title")
        (worker,) = workers_of(srv)
        worker.send_signal(signal.SIGSTOP)  # so that the records wait in one ring: batches
        try:
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as good,
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bad,
            ):
                good.bind(str(sock_dir / "ok.sock"))
                bad.bind(os.fsencode(sock_dir) + b"/bad\xff.s")  # a path that is not UTF-8
                for i, payload in enumerate(legit):
                    good.sendto(payload, str(path))
                    if i % 10 == 0:
                        bad.sendto(ext, str(path))
                        bad.sendto(msgspec.msgpack.encode(f"bad path {i}"), str(path))
            time.sleep(0.5)  # the receiver moves them to the ring: not asserted, only batched
        finally:
            worker.send_signal(signal.SIGCONT)
        wait_for(lambda: sink.exists() and len(sink.read_bytes().splitlines()) == 480, what="480")
        assert srv.stop() == 0, srv.stderr

    records = [json.loads(line) for line in sink.read_text().splitlines()]
    texts = [r.get("text") for r in records if r["sender"].endswith("ok.sock")]
    assert sorted(texts) == sorted(f"line {i}" for i in range(400))
    escaped = f"{sock_dir}/bad\\xff.s"
    from_bad = [r for r in records if r["sender"] == escaped]
    assert sorted(r["text"] for r in from_bad if "text" in r) == sorted(
        f"bad path {i}" for i in range(0, 400, 10)
    )
    errors = [r for r in from_bad if "error" in r]
    assert len(errors) == 40
    assert {base64.b64decode(r["base64"]) for r in errors} == {ext}
    assert "written as an error record" in srv.stderr

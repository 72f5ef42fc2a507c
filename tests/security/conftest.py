"""A real second, unprivileged user for the attacks, and victims it must not touch.

The tests run as root (CI does) against servers started by root; the attacker's actions run
in processes that really are another uid. Without root they are skipped: there is no second
user to be.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import read_records, run_server, wait_for

ATTACKER = "ugattacker"
# The attacker's interpreter: the test's own may live where the attacker cannot reach it
# (a virtual environment under /root); the attacks need only the standard library.
PYTHON = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin") or ""


@dataclass(frozen=True)
class Attacker:
    """The hostile local user: ``run`` executes Python code as that user."""

    name: str
    uid: int
    gid: int

    def run(self, code: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with ``python -c`` as the attacker (``sys.argv[1:]`` = ``args``)."""
        return subprocess.run(
            [PYTHON, "-c", code, *args],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        )

    def start(self, code: str, *args: str) -> subprocess.Popen[str]:
        """Start ``code`` as the attacker in the background (the test stops it)."""
        return self.start_program(PYTHON, "-c", code, *args)

    def start_program(self, *argv: str) -> subprocess.Popen[str]:
        """Start the program ``argv`` as the attacker in the background."""
        return subprocess.Popen(
            list(argv),
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        )


def stop(proc: subprocess.Popen[str]) -> str:
    """Kill a process started with :meth:`Attacker.start`; return what it printed."""
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


def plant_hardlink(attacker: Attacker, target: Path, link: Path) -> None:
    """Hard-link ``target`` at ``link`` as the attacker could with fs.protected_hardlinks = 0.

    Where the sysctl is on (the kernel refuses the attacker), root makes the same link: the
    state ugram then finds is what such an attacker leaves.
    """
    done = attacker.run("import os, sys; os.link(sys.argv[1], sys.argv[2])", str(target), str(link))
    if done.returncode != 0:
        os.link(target, link)


@pytest.fixture(scope="session")
def attacker() -> Attacker:
    """The unprivileged user, created once (``useradd``) if missing."""
    if os.geteuid() != 0:
        pytest.skip("the attacks need root: they create and become a second user")
    if not PYTHON:
        pytest.skip("no python3 outside the virtual environment for the attacker to run")
    try:
        entry = pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
            check=True,
        )
        entry = pwd.getpwnam(ATTACKER)
    return Attacker(ATTACKER, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session")
def racer() -> Iterator[str]:
    """The compiled bind-race attacker (tests/security/c/racer.c), executable by anyone."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the bind-race attacker")
    home = Path(tempfile.mkdtemp(prefix="ugc", dir="/tmp"))
    home.chmod(0o755)
    binary = home / "racer"
    source = Path(__file__).parent / "c" / "racer.c"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    try:
        yield str(binary)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp (root's)."""
    path = Path(tempfile.mkdtemp(prefix="ugs", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hostile_dir(attacker: Attacker) -> Iterator[Path]:
    """A directory the attacker owns (mode 0755), reachable by root: the socket's home."""
    base = Path(tempfile.mkdtemp(prefix="ugh", dir="/tmp"))
    base.chmod(0o755)
    os.chown(base, attacker.uid, attacker.gid)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Victim:
    """A root-owned 0600 file in a root-only directory, with its state before the attack."""

    path: Path
    digest: str
    mode: int
    owner: tuple[int, int]
    mtime_ns: int

    def assert_untouched(self) -> None:
        info = self.path.lstat()
        assert hashlib.sha256(self.path.read_bytes()).hexdigest() == self.digest, "content"
        assert info.st_mode & 0o7777 == self.mode, f"mode is now {info.st_mode & 0o7777:04o}"
        assert (info.st_uid, info.st_gid) == self.owner, "owner or group changed"
        assert info.st_mtime_ns == self.mtime_ns, "written to"


@pytest.fixture
def victim() -> Iterator[Victim]:
    """A file the attacker must never change (mode, group, content) through ugram."""
    home = Path(tempfile.mkdtemp(prefix="ugv", dir="/tmp"))
    home.chmod(0o711)  # searchable, not listable: the attacker can name (and hard-link) it
    path = home / "secret"
    path.write_bytes(b"root's secret\n")
    path.chmod(0o600)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    info = path.lstat()
    try:
        yield Victim(
            path,
            hashlib.sha256(path.read_bytes()).hexdigest(),
            0o600,
            (info.st_uid, info.st_gid),
            info.st_mtime_ns,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


# A sender that binds its own socket, asks for a reply, then swaps its socket's name for a
# symlink (or a hard link, "link:" before the target) to a socket it does not own.
SWAPPER = r"""
import os, socket, sys, time
server, mine, target = sys.argv[1], sys.argv[2], sys.argv[3]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(mine)
sock.sendto(b"reflected", server)
os.rename(mine, mine + ".away")
if target.startswith("link:"):
    try:
        os.link(target[5:], mine)
    except PermissionError:  # fs.protected_hardlinks: the test plants it for us
        print("link-needed", flush=True)
        while not os.path.exists(mine):
            time.sleep(0.01)
else:
    os.symlink(target, mine)
print("swapped", flush=True)
time.sleep(3)
"""


def reply_swap_attack(
    attacker: Attacker,
    server: Path,
    mine: Path,
    swap: str,
    out_dir: Path,
    env: dict[str, str],
    recv_timeout: float,
) -> str:
    """Run ``trustapps:slow_echo`` on ``server`` and the swapper; returns the server's stderr.

    A root-only socket stands in for the victim: the test fails if the reply reaches it.
    """
    guarded_dir = Path(tempfile.mkdtemp(prefix="ugr", dir="/tmp"))
    guarded_dir.chmod(0o711)
    guarded = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    target = str(guarded_dir / "root-only.sock")
    guarded.bind(target)
    os.chmod(target, 0o600)
    guarded.settimeout(recv_timeout)
    try:
        with run_server(
            "trustapps:slow_echo", server, "--workers", "1", "--mode", "0666", env=env
        ) as srv:
            prefix = "link:" if swap == "hardlink" else ""
            swapper = attacker.start(SWAPPER, str(server), str(mine), prefix + target)
            assert swapper.stdout is not None
            line = swapper.stdout.readline().strip()
            if line == "link-needed":  # fs.protected_hardlinks is on: plant it for the attacker
                os.link(target, mine)
                line = swapper.stdout.readline().strip()
            assert line == "swapped", stop(swapper)
            wait_for(lambda: "reflected" in read_records(out_dir), what="the reply attempt")
            with pytest.raises(TimeoutError):
                guarded.recv(100)
            stop(swapper)
            assert srv.stop() == 0
        return srv.stderr
    finally:
        guarded.close()
        shutil.rmtree(guarded_dir)

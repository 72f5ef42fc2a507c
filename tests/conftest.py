"""Fixtures: short socket paths, a real `ugram serve` process, real senders, cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from ugram.sockets import SO_PASSRIGHTS, refuse_rights

# The machines are shared and noisy: a per-example deadline would make properties flaky.
settings.register_profile("ugram", deadline=None)
settings.load_profile("ugram")

# Options any run may pass (``pytest --chaos-seed 5``), so declared before collection.
pytest_plugins = ["tests.chaos.options"]

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).parent.parent


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temp directory (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ug", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def out_dir(sock_dir: Path) -> Path:
    """Where test handlers write what they saw."""
    out = sock_dir / "out"
    out.mkdir()
    return out


def child_env(out_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for ugram and sender subprocesses: test apps importable, no UGRAM_* leak."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UGRAM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(REPO)])
    if out_dir is not None:
        env["UGTEST_OUT"] = str(out_dir)
    env.update(extra)
    return env


# The portable profile (ugram.portable, docs/portable.md): every Linux-only path off, as on
# macOS. A few representative tests run once with it ("linux" is the default profile).
PROFILES: dict[str, dict[str, str]] = {"linux": {}, "portable": {"UGRAM_PORTABLE": "1"}}


def profile_env(profile: str, out_dir: Path | None = None) -> dict[str, str]:
    """:func:`child_env` for a server run under ``profile`` ("linux" or "portable")."""
    return child_env(out_dir, **PROFILES[profile])


@pytest.fixture
def apps_env(monkeypatch: pytest.MonkeyPatch, out_dir: Path) -> Path:
    """Let workers started by an in-process Supervisor import the test apps."""
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    monkeypatch.setenv("UGTEST_OUT", str(out_dir))
    return out_dir


async def until(predicate: Callable[[], object], within: float = 15.0, what: str = "") -> None:
    """Await ``predicate`` in an event loop; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def send_all(path: Path, *payloads: bytes) -> None:
    """Send from one unbound socket; a server that stops reading fails the test, never hangs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10.0)  # seconds: a stalled server fails the test
        for payload in payloads:
            sock.sendto(payload, str(path))


async def send_async(path: Path, *payloads: bytes) -> None:
    """Send from a worker thread: a full kernel queue must not block the supervisor's loop."""
    await asyncio.to_thread(send_all, path, *payloads)


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def gone(proc: psutil.Process) -> bool:
    """True once ``proc`` has exited (a zombie counts: it runs no more code)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Server:
    """A running `ugram serve` process."""

    proc: subprocess.Popen[bytes]
    path: Path
    stderr_file: Path
    exit_code: int | None = None
    _stderr: str = field(default="", repr=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.exit_code = self.proc.wait(timeout)
        return self.exit_code

    @property
    def stderr(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.stderr_file.read_text(errors="replace")

    def summary(self) -> dict[str, int]:
        """The counters of the final ``stopped: key=value ...`` line."""
        match = re.search(r"stopped: (.*)", self.stderr)
        assert match, self.stderr
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def run_server(
    handler: str | None,
    path: Path,
    *args: str,
    out_dir: Path | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Iterator[Server]:
    """Start `python -m ugram serve` in its own process group; always kill it at the end."""
    cmd = [sys.executable, "-m", "ugram", "serve", "--socket", str(path), *args]
    if handler is not None:
        cmd.insert(4, handler)
    logs_dir = next(p for p in path.parents if p.is_dir())  # --mkdir may create path.parent
    stderr_file = logs_dir / f"{path.name}.stderr"
    with open(stderr_file, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            env=env or child_env(out_dir),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    server = Server(proc, path, stderr_file)
    try:
        if wait:
            # The path alone is not proof: a stale file from an earlier server may sit there.
            quiet = "--log-level" in args
            wait_for(
                lambda: (
                    (path.exists() and (quiet or "listening on" in server.stderr))
                    or proc.poll() is not None
                ),
                what=f"server on {path}",
            )
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {server.stderr}")
        yield server
    finally:
        _kill_group(proc)


# Sender processes started by the current test: a test that fails before wait_senders()
# must not leave them running into the next test.
_SENDERS: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _reap_senders() -> Iterator[None]:
    yield
    while _SENDERS:
        proc = _SENDERS.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_senders(path: Path, count: int, senders: int) -> list[subprocess.Popen[bytes]]:
    """Start ``senders`` blocking sender processes, each sending ``s<i>:<seq>``, count times."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(APPS / "sender.py"), str(path), f"s{i}", str(count)],
            env=child_env(),
        )
        for i in range(senders)
    ]
    _SENDERS.extend(procs)
    return procs


def wait_senders(procs: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    """Wait for every sender to finish successfully."""
    try:
        for proc in procs:
            assert proc.wait(timeout) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def read_records(out_dir: Path) -> list[str]:
    """Every line the test handlers wrote, teardown markers excluded."""
    lines: list[str] = []
    for file in sorted(out_dir.glob("*.log")):
        lines.extend(line for line in file.read_text().splitlines() if line != "#teardown")
    return lines


def teardowns(out_dir: Path) -> int:
    """How many workers ran their teardown."""
    return sum(file.read_text().count("#teardown") for file in out_dir.glob("*.log"))


def send(path: Path | str, *payloads: bytes, bind: str | None = None) -> socket.socket:
    """Send payloads from one socket (bound to ``bind`` if given); returns the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if bind is not None:
        sock.bind(bind)
    for payload in payloads:
        sock.sendto(payload, str(path))
    return sock


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the doc lines tests/integration/test_doc_blocks.py left out, and why."""
    notes = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", "") == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "doc_line_not_run"
    ]
    if notes:
        terminalreporter.section("doc lines not run")
        for note in notes:
            terminalreporter.line(note)


def kernel_refuses_rights() -> bool:
    """True where the kernel has SO_PASSRIGHTS (Linux 6.16): it can refuse SCM_RIGHTS."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        return refuse_rights(probe)


_PIDFD_GETFD = 438  # the syscall's number, the same on every architecture (Linux 5.6)


def accept_passed_descriptors(server: Server) -> bool:
    """Let senders pass descriptors to ``server``'s socket, as kernels before Linux 6.16 do.

    ugram turns SO_PASSRIGHTS off on its socket (the kernel then refuses SCM_RIGHTS); this
    takes a copy of the supervisor's socket (pidfd_getfd) and turns the option back on, so
    that the receiver's own defences can be tested on a newer kernel.

    Returns:
        True if it was turned back on; False where the kernel lacks the option (senders may
        pass descriptors anyway).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(server.proc.pid)
    try:
        for name in os.listdir(f"/proc/{server.proc.pid}/fd"):
            fd = libc.syscall(_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue  # closed meanwhile
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # not a socket
                os.close(fd)
                continue
            with sock:
                if sock.type == socket.SOCK_DGRAM and sock.getsockname() == str(server.path):
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 1)
                    except OSError as exc:
                        if exc.errno == errno.ENOPROTOOPT:
                            return False
                        raise
                    return True
    finally:
        os.close(pidfd)
    pytest.fail(f"no socket bound at {server.path} in the server's process")

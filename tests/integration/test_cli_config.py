"""The real ``ugram`` command: bad configuration, unimportable handlers, refused socket paths."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import child_env, read_records, run_server, send, wait_for
from ugram.config import field_names

# One value per config field that `ugram serve` must refuse (exit 2, one line on stderr).
BAD_VALUES: dict[str, str] = {
    "socket": "",
    "handler": "no-colon-here",
    "workers": "0",
    "mode": "0999",
    "group": "ug-no-such-group",
    "codec": "xml",
    "max_datagram": "0",
    "ring_size": "1000",
    "graceful_timeout": "-1",
    "route_by": "has space",
    "max_workers": "-1",
    "worker_timeout": "-1",
    "boot_timeout": "-1",
    "max_records": "-5",
    "max_rss": "lots",
    "poison_attempts": "0",
    "dead_letter": "/nonexistent-ugram-dir/dead.jsonl",
    "dead_letter_max_bytes": "100",
    "boot_retries": "0",
    "credentials": "maybe",
    "allow_uid": "ug-no-such-user",
    "allow_gid": "ug-no-such-group",
    "rate_limit": "fast",
    "burst": "-1",
    "rate_limit_by": "ip",
    "mkdir": "perhaps",
    "allow_unsafe_dir": "perhaps",
    "allow_abstract_replies": "perhaps",
    "batch_size": "0",
    "batch_bytes": "0",
    "receive_batch": "0",
    "speedups": "fast",
    "log_format": "xml",
    "log_config": "/nonexistent-ugram-dir/log.toml",
    "metrics": "no-port",
    "control": "maybe",
    "log_level": "loud",
}
NOT_VALIDATED: dict[str, str] = {}


def _field_params() -> list[object]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=NOT_VALIDATED[name]))
        if name in NOT_VALIDATED
        else name
        for name in field_names()
    ]


@dataclass
class Outcome:
    code: int | None  # None: still running when we gave up (and killed it)
    stderr: str
    elapsed: float
    left: list[str]  # processes that outlived the command (see survivors)


def ugram(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    socket_path: Path | None = None,
    stop_if_bound: bool = False,
    other_server: int | None = None,
) -> Outcome:
    """Run ``python -m ugram ARGS`` in its own session; always kill what is left of it.

    Processes that outlive the command are looked for (by session, and by ``socket_path``
    on their command line) before the session is killed. With ``stop_if_bound``, a server
    that binds ``socket_path`` counts as started (code None) and is not waited for.
    """
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ugram", *args],
            env=env or child_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            code = _wait(proc, start + timeout, socket_path if stop_if_bound else None)
            elapsed = time.monotonic() - start
            left = survivors(proc.pid, socket_path, other_server) if code is not None else []
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Outcome(code, stderr, elapsed, left)


def _wait(proc: subprocess.Popen[bytes], deadline: float, started: Path | None) -> int | None:
    while (code := proc.poll()) is None and time.monotonic() < deadline:
        if started is not None and os.path.lexists(started):
            return None
        time.sleep(0.01)
    return code


def survivors(session: int, path: Path | None, other_server: int | None = None) -> list[str]:
    """Processes left in ``session`` or naming ``path`` on their command line.

    Processes in the session of ``other_server`` (a live server on the same path) are not
    counted.
    """
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if not cmdline or proc.status() == psutil.STATUS_ZOMBIE:
                continue  # already exiting: nothing outlives it
            sid = os.getsid(proc.pid)
            if proc.pid == os.getpid() or (other_server is not None and sid == other_server):
                continue
            if sid == session or (path is not None and str(path) in cmdline):
                found.append(f"{proc.pid}: {cmdline.strip()[:120]}")
    return found


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- every config field ---------------------------------------------------------------------------


def test_bad_value_table_covers_every_field() -> None:
    assert set(BAD_VALUES) == set(field_names()), "add a bad value for each new field"


@pytest.mark.parametrize("name", _field_params())
def test_bad_flag_exits_2_with_one_line_naming_field_and_value(sock_dir: Path, name: str) -> None:
    value = BAD_VALUES.get(name)
    assert value is not None, f"no bad value for config field {name!r} in BAD_VALUES"
    path = sock_dir / "s.sock"
    args = ["serve", f"--{name.replace('_', '-')}={value}"]
    if name != "socket":
        args += ["--socket", str(path)]

    outcome = ugram(*args, timeout=20, socket_path=path, stop_if_bound=True)

    assert outcome.code == 2, outcome.stderr
    lines = error_lines(outcome.stderr)
    assert len(lines) == 1, outcome.stderr
    assert re.search(rf"\b{name}\b: '?{re.escape(value)}'?", lines[0]), lines[0]
    assert not path.exists()


@pytest.mark.parametrize("name", _field_params())
def test_bad_environment_value_exits_2_naming_field_and_value(sock_dir: Path, name: str) -> None:
    value = BAD_VALUES.get(name)
    assert value is not None, f"no bad value for config field {name!r} in BAD_VALUES"
    path = sock_dir / "s.sock"
    env = child_env()
    env["UGRAM_SOCKET"] = str(path)
    env[f"UGRAM_{name.upper()}"] = value

    outcome = ugram("serve", env=env, timeout=20, socket_path=path, stop_if_bound=True)

    assert outcome.code == 2, outcome.stderr
    lines = error_lines(outcome.stderr)
    assert len(lines) == 1, outcome.stderr
    assert re.search(rf"\b{name}\b: '?{re.escape(value)}'?", lines[0]), lines[0]
    assert not path.exists()


def test_help_lists_a_flag_for_every_field() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "ugram", "serve", "--help"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    missing = [n for n in field_names() if f"--{n.replace('_', '-')}" not in help_text]
    assert not missing, f"no flag for {missing}"


def test_handler_both_as_argument_and_flag_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"

    outcome = ugram(
        "serve",
        "a:b",
        "--handler",
        "c:d",
        "--socket",
        str(path),
        socket_path=path,
        stop_if_bound=True,
    )

    assert outcome.code == 2
    assert len(error_lines(outcome.stderr)) == 1, outcome.stderr
    assert "handler" in outcome.stderr


# -- handlers that cannot be imported -------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("tests_missing_module:handle", "No module named 'tests_missing_module'"),
        ("broken:handle", "RuntimeError: this handler module is broken on purpose"),
        ("seqrec:no_such_handler", "has no attribute 'no_such_handler'"),
    ],
)
def test_unimportable_handler_exits_4_and_leaves_nothing(
    sock_dir: Path, handler: str, message: str
) -> None:
    path = sock_dir / "s.sock"

    outcome = ugram(
        "serve", handler, "--socket", str(path), "--workers", "2", timeout=30, socket_path=path
    )

    assert outcome.code == 4, outcome.stderr
    assert message in outcome.stderr
    assert outcome.elapsed < 15, "stops instead of respawning workers"
    assert not path.exists(), "socket file left behind"
    assert outcome.left == [], "processes outlived the server"


# -- socket paths that are taken ------------------------------------------------------------------


def test_live_server_path_is_refused_and_the_server_goes_on(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1", out_dir=out_dir) as server:
        inode = os.lstat(path).st_ino
        assert any("ugram: supervisor" in s for s in survivors(server.proc.pid, path)), (
            "survivors() finds a running server"
        )

        outcome = ugram(
            "serve",
            *("--socket", str(path), "--workers", "1"),
            timeout=30,
            socket_path=path,
            other_server=server.proc.pid,
        )

        assert outcome.code == 1, outcome.stderr
        lines = error_lines(outcome.stderr)
        assert len(lines) == 1, outcome.stderr
        assert "already in use" in lines[0]
        assert str(path) in lines[0]
        assert os.lstat(path).st_ino == inode, "the live server's socket file was touched"
        send(path, b"after-1", b"after-2").close()
        wait_for(lambda: len(read_records(out_dir)) == 2, timeout=20, what="records handled")
        assert read_records(out_dir) == ["after-1", "after-2"]
        assert server.proc.poll() is None
        assert outcome.left == []


def test_regular_file_at_the_path_is_refused_and_intact(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    path.write_bytes(b"do not delete\n")

    outcome = ugram("serve", "--socket", str(path), timeout=30, socket_path=path)

    assert outcome.code == 1, outcome.stderr
    lines = error_lines(outcome.stderr)
    assert len(lines) == 1, outcome.stderr
    assert "not a socket" in lines[0]
    assert path.read_bytes() == b"do not delete\n"


# -- ugram send -----------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "stale"])
def test_send_without_a_server_exits_1_with_one_line(sock_dir: Path, what: str) -> None:
    path = sock_dir / "s.sock"
    if what == "stale":
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
            dead.bind(str(path))

    outcome = ugram("send", str(path), "hello", timeout=20)

    assert outcome.code == 1
    lines = error_lines(outcome.stderr)
    assert len(lines) == 1, outcome.stderr
    assert str(path) in lines[0]

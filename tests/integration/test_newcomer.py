"""What a newcomer runs into first: the CLI forms the docs show, and errors that name their cause.

Each test here is one stumble a fresh user hit (issue "A newcomer never stumbles"): it fails
on the code before its fix.
"""

from __future__ import annotations

import glob
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ugram
import ugram.testing
from tests.conftest import APPS, child_env, run_server, send_all, wait_for

from .test_cli_config import ugram as ugram_cmd


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ugram ARGS`` to completion (a short command, not a server)."""
    return subprocess.run(
        [sys.executable, "-m", "ugram", *args],
        env=env or child_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the forms the docs list ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["-rw-rw----", "rw-rw----", "0660", "0o660", "660"])
def test_every_documented_mode_form_works_with_a_space(form: str) -> None:
    done = cli("config", "--mode", form)
    assert done.returncode == 0, done.stderr
    assert "mode = 0o660" in done.stdout  # shown as octal, whatever form was given


def test_a_mode_from_toml_is_shown_in_octal(tmp_path: Path) -> None:
    file = tmp_path / "ugram.toml"
    file.write_text("mode = 0o640\n")
    done = cli("config", "--config", str(file))
    assert done.returncode == 0, done.stderr
    assert "mode = 0o640" in done.stdout
    assert "432" not in done.stdout
    assert "416" not in done.stdout


def test_numeric_ids_in_toml_are_accepted(tmp_path: Path) -> None:
    file = tmp_path / "ugram.toml"
    file.write_text('allow_uid = [65534, "root"]\nallow_gid = [0]\n')
    done = cli("config", "--config", str(file))
    assert done.returncode == 0, done.stderr
    assert "65534" in done.stdout


@pytest.mark.parametrize(
    ("toml", "option"),
    [("allow_uid = [1.5]", "allow_uid"), ("allow_gid = [true]", "allow_gid")],
)
def test_a_bad_id_names_the_option_and_what_is_allowed(
    tmp_path: Path, toml: str, option: str
) -> None:
    file = tmp_path / "ugram.toml"
    file.write_text(toml + "\n")
    done = cli("config", "--config", str(file))
    assert done.returncode == 2
    assert f"invalid value for {option}" in done.stderr
    assert "numeric ids" in done.stderr


@pytest.mark.parametrize("value", ["10/x", "fast", "-3/s"])
def test_a_bad_rate_limit_shows_the_forms_not_a_regex(value: str) -> None:
    done = cli("config", f"--rate-limit={value}")
    assert done.returncode == 2
    assert "N/s, N/m or N/h" in done.stderr
    assert "regex" not in done.stderr
    assert "^" not in done.stderr


def test_send_takes_data_after_its_options(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "1", out_dir=out_dir) as server:
        done = cli("send", str(path), "--codec", "json", '{"b": 2}')
        assert done.returncode == 0, done.stderr
        wait_for(lambda: "handled=1" in _stats_line(path), what="1 handled")
        server.stop()
    assert server.summary()["handled"] == 1


def _stats_line(path: Path) -> str:
    done = cli("stats", "--socket", str(path), "--json")
    return " ".join(f"{k}={v}" for k, v in _flat(done.stdout).items())


def _flat(text: str) -> dict[str, object]:
    import json

    try:
        report = json.loads(text)
    except ValueError:
        return {}
    totals = report.get("totals", report)
    return {k: v for k, v in totals.items() if isinstance(v, int)}


def test_stats_into_a_closed_pipe_says_nothing(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(None, path, "--workers", "1"):
        # `ugram stats --watch | head -1`: the reader goes away after one line.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ugram",
                "stats",
                "--socket",
                str(path),
                "--watch",
                "--interval",
                "0.05",
                "--count",
                "200",
            ],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(60)
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Broken pipe" not in err, err
    assert code == 0, err


# -- errors that point at their cause -------------------------------------------------------------


def test_an_unimportable_handler_is_reported_once_and_never_as_listening(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    outcome = ugram_cmd(
        "serve",
        "tests_missing_module:handle",
        "--socket",
        str(path),
        "--workers",
        "2",
        timeout=30,
        socket_path=path,
    )
    assert outcome.code == 4, outcome.stderr
    assert "listening on" not in outcome.stderr
    assert outcome.stderr.count("could not load the handler") == 1, outcome.stderr
    assert "fatal:" not in outcome.stderr  # the same news a second time, at INFO


def test_a_bad_builtin_option_is_not_called_an_import_failure(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    env = child_env(UGSINK_PATH=str(sock_dir / "out.jsonl"), UGSINK_MAX_BYTES="lots")
    outcome = ugram_cmd(
        "serve",
        "ugram.builtin:LogSink",
        "--socket",
        str(path),
        "--workers",
        "1",
        env=env,
        timeout=30,
        socket_path=path,
    )
    assert outcome.code == 4, outcome.stderr
    assert "bad option for ugram.builtin:LogSink" in outcome.stderr
    assert "UGSINK_MAX_BYTES" in outcome.stderr
    assert "could not be instantiated" not in outcome.stderr


@pytest.mark.parametrize("speedups", ["true", "false"])
def test_held_back_warnings_are_counted_on_both_paths(sock_dir: Path, speedups: str) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        None, path, "--workers", "1", "--max-datagram", "10", f"--speedups={speedups}"
    ) as server:
        send_all(path, *([b"x" * 100] * 15))
        wait_for(lambda: server.stderr.count("larger than max_datagram") >= 10, what="warnings")
        assert server.stop() == 0
    assert server.stderr.count("larger than max_datagram") == 10, server.stderr
    assert "held back 5 similar message(s)" in server.stderr, server.stderr
    assert server.summary()["oversized"] == 15


def test_a_second_sigint_is_not_called_the_graceful_timeout(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    # A teardown() that takes 5 s: the second SIGINT lands well inside the 10 s timeout.
    with run_server(
        "lifecycle:SlowTeardown",
        path,
        "--workers",
        "1",
        out_dir=out_dir,
        env=child_env(out_dir, UGTEST_TEARDOWN="5"),
    ) as server:
        server.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "draining" in server.stderr, what="drain begun")
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGINT)
        code = server.proc.wait(60)
    assert code == 5, server.stderr
    assert "graceful timeout" not in server.stderr, server.stderr
    assert "when the stop was forced" in server.stderr


def test_socket_activation_says_the_mode_is_systemds(sock_dir: Path) -> None:
    path = sock_dir / "act.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    err = sock_dir / "err"
    # What systemd does before exec: the socket on fd 3, LISTEN_PID naming the process.
    script = (
        "import os, sys; os.dup2(int(sys.argv.pop(1)), 3); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "from ugram.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["serve", "--socket", str(path), "--workers", "1", "--mode", "0600"]
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(sock.fileno()), *args],
            env=child_env(),
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            pass_fds=(sock.fileno(),),
        )
    try:
        wait_for(
            lambda: "listening on" in err.read_text() or proc.poll() is not None,
            what="listening",
        )
        text = err.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        sock.close()
    assert "listening on" in text, text
    assert "no socket file" not in text
    assert "the socket is systemd's: its mode and group come from the unit" in text


# -- the Python API -------------------------------------------------------------------------------


EMBED = """\
import sys
from ugram import ServerFailedError, Supervisor, make_config
config = make_config(socket=sys.argv[1], handler="tests_missing_module:handle", workers=1)
try:
    Supervisor(config).run()   # the return value ignored, as a short script does
except ServerFailedError as exc:
    print("raised", exc.exit_code)
    raise
"""


def test_embedding_makes_a_boot_failure_visible(sock_dir: Path) -> None:
    script = sock_dir / "embed.py"
    script.write_text(textwrap.dedent(EMBED))
    done = subprocess.run(
        [sys.executable, str(script), str(sock_dir / "e.sock")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "raised 4" in done.stdout, done.stderr
    assert done.returncode != 0  # the uncaught error fails the script


@pytest.mark.parametrize("codec", ["lines", "syslog", "statsd", "raw"])
def test_run_server_takes_every_codec_and_leaves_no_directory(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(APPS))
    import newcomerapps

    before = set(glob.glob("/tmp/ugram-*"))
    payload = {
        "lines": b"a\nb",
        "syslog": b"<13>Oct 11 22:14:15 host app: hi",
        "statsd": b"hits:1|c\nlat:2|ms",
        "raw": b"x",
    }[codec]
    handler = newcomerapps.BY_CODEC[codec]
    with ugram.testing.run_server(handler, codec=codec) as server:
        server.client.send(payload)
        assert server.wait_handled(1).invalid == 0
    assert server.exit_code == 0
    assert set(glob.glob("/tmp/ugram-*")) - before == set()
    with ugram.testing.Harness(handler, codec=codec) as harness:
        harness.send(payload)
    assert harness.handled == 1

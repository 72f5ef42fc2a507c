"""The supervisor's lifecycle under stress: reloads of a bad deploy, one worker at a time,
clean exits during the drain, a receiver signalled on its own, embedding processes with many
open files, and a shutdown cut off at the graceful deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import (
    child_env,
    gone,
    read_records,
    run_server,
    send,
    send_all,
    start_senders,
    wait_for,
    wait_senders,
)


def children(pid: int, kind: str) -> list[psutil.Process]:
    """Live receiver or worker processes of the server ``pid`` (found by process title)."""
    title = "ugram: receiver" if kind == "receiver" else "ugram: worker"
    found = []
    for proc in psutil.Process(pid).children():
        try:
            if title in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def worker_pids(pid: int) -> set[int]:
    return {p.pid for p in children(pid, "workers")}


def expected(senders: int, count: int) -> list[str]:
    return sorted(f"s{s}:{i}" for s in range(senders) for i in range(count))


# -- SIGHUP ---------------------------------------------------------------------------------

VERSIONED = """\
import os
{broken_import}
OUT = {out!r}


class Handler:
    def setup(self) -> None:
        {broken_setup}
        self.fd = os.open(f"{{OUT}}/{{os.getpid()}}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle(self, data: bytes) -> None:
        os.write(self.fd, b"{version} " + data + b"\\n")
"""


def deploy(module: Path, out: Path) -> dict[str, str]:
    """Write version 1 of the handler ``module``; return the environment of a server that
    imports it from the source on disk (no stale bytecode: each version must be read anew)."""
    write_handler(module, out, "v1")
    env = child_env(out, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] += os.pathsep + str(module.parent)
    return env


def write_handler(
    module: Path, out: Path, version: str, broken_import: str = "", broken_setup: str = "pass"
) -> None:
    module.write_text(
        VERSIONED.format(
            out=str(out), version=version, broken_import=broken_import, broken_setup=broken_setup
        )
    )


@pytest.mark.parametrize(
    "breakage",
    [
        {"broken_import": "raise RuntimeError('deployed half-written')"},
        {"broken_setup": "raise RuntimeError('cannot reach the database')"},
    ],
    ids=["import", "setup"],
)
def test_hup_with_a_bad_deploy_keeps_the_old_workers(
    sock_dir: Path, out_dir: Path, breakage: dict[str, str]
) -> None:
    path = sock_dir / "s.sock"
    module = sock_dir / "deployed.py"
    env = deploy(module, out_dir)
    with run_server("deployed:Handler", path, "--workers", "2", env=env) as server:
        pid = server.proc.pid
        wait_for(lambda: len(worker_pids(pid)) == 2, what="2 workers")
        old = worker_pids(pid)
        senders = start_senders(path, 20_000, 2)
        write_handler(module, out_dir, "v2", **breakage)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "reload abandoned" in server.stderr or server.proc.poll() is not None,
            what="the failed reload to be reported",
        )
        assert server.proc.poll() is None, server.stderr[-3000:]
        wait_senders(senders)
        # Every slot still has its old worker: none was retired for a replacement that
        # could not start.
        assert worker_pids(pid) == old
        # Fixed on disk, a later SIGHUP reloads normally.
        write_handler(module, out_dir, "v3")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: not old & worker_pids(pid) and len(worker_pids(pid)) == 2,
            what="both workers replaced",
        )
        with send(path, *[f"late:{i}".encode() for i in range(100)]):
            pass
        assert server.stop() == 0, server.stderr[-3000:]
    lines = read_records(out_dir)
    versions = {line.split()[0] for line in lines}
    assert "v2" not in versions  # the broken deploy never handled a record
    assert {line.split()[0] for line in lines if " late:" in line} == {"v3"}
    handled = sorted(line.split()[1] for line in lines if " late:" not in line)
    assert handled == expected(2, 20_000)  # exactly once: nothing dropped, nothing killed
    assert server.summary()["boot_failures"] >= 1
    assert "reload abandoned" in server.stderr


def test_respawn_that_cannot_import_after_start_up_is_retried(
    sock_dir: Path, out_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    module = sock_dir / "deployed.py"
    env = deploy(module, out_dir)
    with run_server("deployed:Handler", path, "--workers", "2", env=env) as server:
        pid = server.proc.pid
        # Both have run setup() (each made its file): start-up is over.
        wait_for(lambda: len(list(out_dir.glob("*.log"))) == 2, what="2 workers set up")
        time.sleep(0.3)  # a supervisor tick sees them running
        write_handler(module, out_dir, "v2", broken_import="raise RuntimeError('half-written')")
        victim = children(pid, "workers")[0]
        victim.kill()  # its replacement imports the broken file
        wait_for(
            lambda: "failed to start" in server.stderr or server.proc.poll() is not None,
            what="the failed respawn",
        )
        assert server.proc.poll() is None, server.stderr[-3000:]  # the other worker serves on
        send_all(path, *[f"x{i}".encode() for i in range(50)])
        write_handler(module, out_dir, "v3")  # fixed: the next retry boots
        wait_for(lambda: len(read_records(out_dir)) == 50, what="every record handled")
        assert server.stop() == 0, server.stderr[-3000:]
    assert sorted(line.split()[1] for line in read_records(out_dir)) == sorted(
        f"x{i}" for i in range(50)
    )
    assert server.summary()["boot_failures"] >= 1


def life_events(out_dir: Path) -> list[tuple[float, str, int]]:
    """Every worker's lifecycle events, in time order: (time, event, pid)."""
    events = []
    for file in out_dir.glob("*.life"):
        pid = int(file.stem)
        for line in file.read_text().splitlines():
            name, when = line.split()
            events.append((float(when), name, pid))
    return sorted(events)


def test_a_hup_while_a_bad_deploy_boots_is_not_lost(sock_dir: Path, out_dir: Path) -> None:
    """A fix deployed, and SIGHUPed, while the broken deploy's replacement is still booting:
    the broken one's failure ends its reload, not the newer one (found by the chaos soak)."""
    path = sock_dir / "s.sock"
    module = sock_dir / "deployed.py"
    env = deploy(module, out_dir)
    with run_server("deployed:Handler", path, "--workers", "2", env=env) as server:
        pid = server.proc.pid
        wait_for(lambda: len(worker_pids(pid)) == 2, what="2 workers")
        old = worker_pids(pid)
        slow_failure = "import time; time.sleep(1.5); raise RuntimeError('no database')"
        write_handler(module, out_dir, "v2", broken_setup=slow_failure)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "starting the new worker" in server.stderr, what="the v2 replacement")
        time.sleep(0.5)  # it has imported v2 and is in its setup()
        write_handler(module, out_dir, "v3")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: not old & worker_pids(pid) and len(worker_pids(pid)) == 2,
            what="both workers replaced by the fixed deploy",
            timeout=30,
        )
        with send(path, *[f"late:{i}".encode() for i in range(100)]):
            pass
        assert server.stop() == 0, server.stderr[-3000:]
    versions = {line.split()[0] for line in read_records(out_dir)}
    assert "v2" not in versions
    assert "v3" in versions


def test_hup_restarts_one_worker_at_a_time(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    env = child_env(out_dir, UGTEST_TEARDOWN="0.5")
    with run_server("lifecycle:SlowTeardown", path, "--workers", "3", env=env) as server:
        pid = server.proc.pid
        wait_for(lambda: len(worker_pids(pid)) == 3, what="3 workers")
        old = worker_pids(pid)
        senders = start_senders(path, 20_000, 2)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: not old & worker_pids(pid) and len(worker_pids(pid)) == 3,
            timeout=60,
            what="all three workers replaced",
        )
        wait_for(lambda: "last worker restarted" in server.stderr, what="the reload to end")
        wait_senders(senders)
        assert server.stop() == 0, server.stderr[-3000:]
    assert sorted(read_records(out_dir)) == expected(2, 20_000)
    reload = [(name, p) for _, name, p in life_events(out_dir) if p in old or name == "setup"]
    reload = reload[3:]  # the three first setups, at start-up
    # Each replacement is up (setup() done) before the worker it replaces is retired, and
    # the next worker is retired only after that: the slots are replaced one by one.
    names = [name for name, _ in reload]
    assert names[: 3 * 3] == ["setup", "teardown-start", "teardown-end"] * 3, reload
    assert {p for name, p in reload if name == "teardown-start"} == old


def test_hup_completes_while_workers_recycle_often(sock_dir: Path, out_dir: Path) -> None:
    # Workers recycling every few records are nearly always booting somewhere; a reload
    # that waits for a moment when none boots never finishes while the traffic lasts.
    path = sock_dir / "s.sock"
    env = child_env(out_dir, UGTEST_TEARDOWN="0")
    small = ("--ring-size", "65536", "--max-datagram", "1024")  # a short drain at the end
    args = ("--workers", "2", "--max-records", "50", *small)
    with run_server("lifecycle:SlowTeardown", path, *args, env=env) as server:
        senders = start_senders(path, 10_000_000, 2)  # until killed
        try:
            wait_for(lambda: "recycling after" in server.stderr, what="a worker to recycle")
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "last worker restarted" in server.stderr, what="the reload to end")
        finally:
            for sender in senders:
                sender.kill()
                sender.wait()
        assert server.stop() == 0, server.stderr[-3000:]
    summary = server.summary()
    assert summary["received"] == summary["handled"] == len(read_records(out_dir)) > 0


# -- draining -------------------------------------------------------------------------------


def test_worker_recycled_during_drain_is_replaced_while_records_can_arrive(
    sock_dir: Path, out_dir: Path
) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        "lifecycle:gated",
        path,
        "--workers",
        "1",
        "--max-records",
        "5",  # no jitter below 10: the worker exits after exactly 5 records
        "--worker-timeout",
        "0",  # the receiver is stopped on purpose below
        out_dir=out_dir,
    ) as server:
        pid = server.proc.pid
        send_all(path, *[f"a{i}".encode() for i in range(5)])
        wait_for(lambda: (out_dir / "waiting").exists(), what="the worker at the gate")
        (worker,) = children(pid, "workers")
        (receiver,) = children(pid, "receiver")
        receiver.suspend()
        send_all(path, *[f"b{i}".encode() for i in range(3)])  # queued in the kernel
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in server.stderr, what="the drain to begin")
        # The worker handles its 5 records and exits cleanly with its ring empty, while
        # the receiver still has 3 datagrams to place in that ring.
        (out_dir / "gate").touch()
        wait_for(lambda: gone(worker), what="the recycled worker to exit")
        time.sleep(0.3)  # the supervisor reaps it
        receiver.resume()
        code = server.stop(timeout=30)
    assert code == 0, server.stderr[-3000:]
    assert sorted(read_records(out_dir)) == sorted([f"a{i}" for i in range(5)] + ["b0", "b1", "b2"])


def test_shutdown_cut_off_at_the_deadline_is_not_exit_0(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    env = child_env(out_dir, UGTEST_TEARDOWN="60")
    with run_server(
        "lifecycle:SlowTeardown", path, "--workers", "1", "--graceful-timeout", "1", env=env
    ) as server:
        send_all(path, b"one", b"two")
        wait_for(lambda: len(read_records(out_dir)) == 2, what="2 records handled")
        code = server.stop(timeout=30)
    assert code == 5, server.stderr[-3000:]
    assert "killed at the graceful timeout" in server.stderr
    assert "teardown" in server.stderr
    assert server.summary()["unhandled"] == 0  # every record was handled: teardown was cut


# -- the receiver -----------------------------------------------------------------------------


def test_sigterm_to_the_receiver_alone_causes_no_churn(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "2", out_dir=out_dir) as server:
        pid = server.proc.pid
        wait_for(lambda: len(worker_pids(pid)) == 2, what="2 workers")
        workers = worker_pids(pid)
        # Titled once it ignores SIGTERM; before that, Python's default would kill it.
        wait_for(lambda: children(pid, "receiver"), what="the receiver")
        (receiver,) = children(pid, "receiver")
        receiver.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        # The workers keep running: nothing closed their rings.
        assert worker_pids(pid) == workers
        send_all(path, *[f"r{i}".encode() for i in range(200)])
        wait_for(lambda: len(read_records(out_dir)) == 200, what="200 records handled")
        assert server.proc.poll() is None
        assert server.stop() == 0, server.stderr[-3000:]
    assert server.summary()["restarts"] == 0
    assert sorted(read_records(out_dir)) == sorted(f"r{i}" for i in range(200))


# -- embedding ------------------------------------------------------------------------------

EMBEDDING_APP = """\
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
# An application with more than 1024 files open: every fd the server creates is above it.
files = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
assert files[-1] > 1024
from ugram import Supervisor, make_config
server = Supervisor(make_config(socket=sys.argv[1], handler="seqrec:Recorder", workers=2))
code = server.run()
print("restarts", server.statistics().restarts)
sys.exit(code)
"""


def test_embedded_in_a_process_with_fds_above_1024(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    app = sock_dir / "app.py"
    app.write_text(textwrap.dedent(EMBEDDING_APP))
    err, out = sock_dir / "app.stderr", sock_dir / "app.stdout"
    with open(err, "wb") as stderr, open(out, "wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, str(app), str(path)],
            env=child_env(out_dir),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_for(lambda: path.exists() or proc.poll() is not None, what="the server")
        assert proc.poll() is None, err.read_text()
        wait_for(lambda: len(worker_pids(proc.pid)) == 2, what="2 workers")
        send_all(path, *[f"fd{i}".encode() for i in range(100)])
        wait_for(lambda: len(read_records(out_dir)) == 100, what="100 records handled")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert sorted(read_records(out_dir)) == sorted(f"fd{i}" for i in range(100))
    # Its children too wait on fds above 1024: none of them died of it.
    assert out.read_text().split() == ["restarts", "0"], err.read_text()[-3000:]

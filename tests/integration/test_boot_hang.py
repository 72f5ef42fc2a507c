"""A worker that hangs while booting (a setup() that never returns), found by the chaos
soak (issue #13): past boot_timeout it is killed and counted as a boot failure, and its
successor handles what the receiver put in its ring meanwhile."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import gone, read_records, run_server, send_all, wait_for
from tests.integration.test_lifecycle import children


def test_worker_hung_in_setup_is_replaced(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    args = ["--workers", "2", "--boot-timeout", "2", "--graceful-timeout", "2"]
    with run_server("hangboot:HangOnce", path, *args, out_dir=out_dir) as server:
        pid = server.proc.pid
        wait_for(lambda: len(list(out_dir.glob("*.log"))) == 2, what="2 workers set up")
        (out_dir / "hang").touch()
        victim = next(p for p in children(pid, "workers") if "worker 1" in " ".join(p.cmdline()))
        victim.kill()  # its replacement hangs in setup()
        wait_for(lambda: (out_dir / "hung").exists(), what="the replacement to hang")
        (hung,) = (p for p in children(pid, "workers") if "worker 1" in " ".join(p.cmdline()))
        send_all(path, *[f"h{i}".encode() for i in range(100)])  # half of them for its ring
        # Past boot_timeout the hung one is killed, and its successor boots normally.
        wait_for(lambda: gone(hung), timeout=8, what="the worker hung in setup() to be killed")
        wait_for(lambda: len(read_records(out_dir)) == 100, what="every record handled")
        assert server.stop(signal.SIGTERM) == 0, server.stderr[-3000:]
    assert "still booting after 2s" in server.stderr
    summary = server.summary()
    assert summary["handled"] == 100
    assert summary["boot_failures"] == 1

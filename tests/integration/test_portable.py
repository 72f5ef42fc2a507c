"""The portable profile (UGRAM_PORTABLE=1) is really in force: what the processes hold.

The delivery, worker-kill, receiver-kill, drain and reply tests each run once under the
profile too (their ``portable`` cases); this checks, from ``/proc/PID/fd``, that such a server
takes none of Linux's own paths, and that Linux's are what a default server takes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest

import ugram
from tests.conftest import profile_env, run_server, wait_for


def held(pid: int) -> dict[str, set[int]]:
    """What the descriptors of process ``pid`` refer to, and the inodes of each kind."""
    found: dict[str, set[int]] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            inode = os.stat(f"/proc/{pid}/fd/{name}").st_ino
        except FileNotFoundError:
            continue  # closed meanwhile
        found.setdefault(target, set()).add(inode)
    return found


def child(server_pid: int, title: str) -> int:
    """The pid of the server's child whose process title contains ``title`` (once it set it)."""
    found: list[int] = []

    def look() -> bool:
        found[:] = [
            proc.pid
            for proc in psutil.Process(server_pid).children()
            if title in " ".join(proc.cmdline())
        ]
        return bool(found)

    wait_for(look, what=f"a process titled {title}")
    return found[0]


def shared_files(fds: dict[str, set[int]]) -> dict[str, set[int]]:
    """The shared-memory files among ``fds``: memfds, or unlinked files of ugram's own."""
    return {
        f: inodes
        for f, inodes in fds.items()
        if f.startswith("/memfd:ugram") or re.search(r"/ugram-\w+/shared", f)
    }


def count(files: dict[str, set[int]]) -> int:
    return len(set().union(*files.values()))


@pytest.mark.parametrize("profile", ["linux", "portable"])
def test_the_profile_decides_which_paths_the_processes_take(
    sock_dir: Path, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:echo", path, "--workers", "1", env=profile_env(profile)) as server:
        wait_for(lambda: "listening on" in server.stderr, what="listening")
        receiver = held(child(server.proc.pid, "ugram: receiver"))
        worker = held(child(server.proc.pid, "ugram: worker"))
        # A client in the same environment takes the same paths; its request's private
        # directory proves who it is when no credentials come with the datagram.
        monkeypatch.setenv("UGRAM_PORTABLE", "1" if profile == "portable" else "0")
        with ugram.Client(path) as client:
            assert client.request(b"ping") == b"PING"
        assert server.stop() == 0, server.stderr
    rings = 2  # worker_slots: 2 x workers
    if profile == "linux":
        assert "platform Linux\n" in server.stderr
        assert all(f.startswith("/memfd:ugram") for f in shared_files(receiver))
        # rings, counters and the recvmmsg scratch area
        assert count(shared_files(receiver)) == rings + 2
        assert "anon_inode:[eventfd]" in worker
        return
    assert "platform Linux, portable profile (UGRAM_PORTABLE=1)" in server.stderr
    for fds in (receiver, worker):
        assert not [f for f in fds if f.startswith("/memfd:")]
        assert all(f.endswith("/shared (deleted)") for f in shared_files(fds))
    # rings and counters only: no recvmmsg, so no scratch area; the worker sleeps on a pipe
    assert count(shared_files(receiver)) == rings + 1
    assert "anon_inode:[eventfd]" not in worker
    assert any(f.startswith("pipe:") for f in worker)

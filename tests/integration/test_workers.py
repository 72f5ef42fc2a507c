"""Workers under conditions an embedding application or a damaged ring creates: inherited
fds past FD_SETSIZE, leaking batch handlers, corrupt rings, kills between two stores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import read_records, send_async, until
from ugram import Supervisor, make_config

FD_SETSIZE = 1024  # what select() accepts; poll() and epoll have no such limit


@contextlib.contextmanager
def fds_taken_below(limit: int) -> Iterator[None]:
    """Hold every fd number below ``limit`` (as an application with many open files does), so
    that the next fds this process opens, and its children inherit, are numbered past it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < limit + 256:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit + 256), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < limit:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def eventfds(pid: int) -> list[int]:
    """The eventfds (wake-up channels) a process holds, by number."""
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:[eventfd]":
                fds.append(int(name))
    return fds


@pytest.mark.asyncio
async def test_workers_sleep_on_inherited_fds_past_fd_setsize(
    sock_dir: Path, apps_env: Path
) -> None:
    path = sock_dir / "s.sock"
    with fds_taken_below(FD_SETSIZE + 64):
        sup = Supervisor(make_config(socket=str(path), handler="seqrec:Recorder", workers=2))
        task = asyncio.create_task(sup.serve())
        try:
            await until(lambda: sup.is_running or task.done(), what="serving")
            pids = sup.worker_pids()
            for pid in pids.values():  # the premise: each worker's wake fd is past 1024
                assert min(eventfds(pid)) > FD_SETSIZE
            sent: list[bytes] = []
            for burst in range(3):  # idle in between: every worker goes to sleep on its fd
                await asyncio.sleep(0.3)
                payloads = [f"b{burst}:{i}".encode() for i in range(100)]
                await send_async(path, *payloads)
                sent += payloads
            await until(lambda: len(read_records(apps_env)) >= len(sent), what="all handled")
            assert sup.worker_pids() == pids  # the same workers: none died and restarted
            assert sup.statistics().restarts == 0
            assert await sup.shutdown(timeout=10) == 0
        finally:
            sup.close()
            await asyncio.wait_for(task, 30)
    assert sorted(read_records(apps_env)) == sorted(p.decode() for p in sent)

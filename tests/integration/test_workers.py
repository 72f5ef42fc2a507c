"""Workers under conditions an embedding application or a damaged ring creates: inherited
fds past FD_SETSIZE, leaking batch handlers, corrupt rings, kills between two stores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    child_env,
    read_records,
    run_server,
    send,
    send_async,
    until,
    wait_for,
)
from tests.integration.test_faults import wait_workers
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


def test_a_leaking_batch_handler_is_recycled_within_a_bounded_number_of_records(
    sock_dir: Path, out_dir: Path
) -> None:
    """Batches of 1000 never land on a multiple of 1024 records until 128,000: the memory
    check must not wait for one."""
    path = sock_dir / "s.sock"
    sent = [f"r{i}".encode() for i in range(12_000)]
    with run_server(
        "batchapps:LeakyBatch",
        path,
        *("--workers", "1", "--batch-size", "1000", "--max-rss", "100"),
        out_dir=out_dir,
    ) as server:
        worker = wait_workers(server.proc.pid, 1)[0]
        worker.suspend()  # everything queues in its ring: then it takes full batches of 1000
        try:
            with send(path, *sent):
                pass
            time.sleep(0.5)  # the receiver moves the last few queued datagrams to the ring
        finally:
            worker.resume()
        wait_for(lambda: len(read_records(out_dir)) >= len(sent), timeout=60, what="handled")
        assert server.stop() == 0, server.stderr[-3000:]
    assert "recycling at" in server.stderr
    first = (out_dir / f"{worker.pid}.log").read_text().splitlines()
    # 16 MiB leaked a batch: past 100 MiB within a few batches, and checked every 2 batches.
    assert len(first) <= 8_000, f"recycled only after {len(first)} records"
    assert sorted(read_records(out_dir)) == sorted(p.decode() for p in sent)  # exactly once


@pytest.mark.parametrize("point", ["before-ack", "after-ack"])
def test_a_kill_between_two_stores_counts_each_record_once(
    sock_dir: Path, out_dir: Path, point: str
) -> None:
    """SIGKILL right before, or right after, the store that acknowledges a record: the
    handled count still equals what was sent (not one more, not one less). The last record
    is the one: no later record's counting can hide a count the successor failed to settle."""
    path = sock_dir / "s.sock"
    sent = [f"k{i}".encode() for i in range(1_000)]
    env = child_env(out_dir, UGTEST_KILL_AT=point, UGTEST_KILL_AFTER=str(len(sent)))
    with run_server(
        "killpoints:Recorder", path, "--workers", "1", "--speedups=false", env=env
    ) as server:
        with send(path, *sent):
            pass
        wait_for(
            lambda: set(read_records(out_dir)) == {p.decode() for p in sent},
            what=f"every record handled: {server.stderr[-2000:]}",
        )
        assert server.stop() == 0, server.stderr[-3000:]
    summary = server.summary()
    assert summary["restarts"] == 1  # the premise: the first worker was killed there
    assert summary["handled"] == len(sent)
    # Killed before its acknowledgement the record is handled again; after it, never.
    duplicates = len(read_records(out_dir)) - len(sent)
    assert (summary["replayed"], duplicates) == ((1, 1) if point == "before-ack" else (0, 0))

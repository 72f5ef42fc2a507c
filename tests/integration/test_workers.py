"""Workers under conditions an embedding application or a damaged ring creates: inherited
fds past FD_SETSIZE, leaking batch handlers, corrupt rings, kills between two stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from tests.integration.test_faults import children, wait_workers
from ugram import Supervisor, make_config
from ugram.ring import CONTROL_SIZE, HEAD, TAIL, Ring

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


def worker_ring(pid: int) -> Ring:
    """The ring of the worker ``pid``, mapped here through its fd (a memfd holds no name)."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("/memfd:ugram"):
                continue
            fd = os.open(f"/proc/{pid}/fd/{name}", os.O_RDWR)
            try:
                return Ring(fd, use_speedups=False)
            except ValueError:  # the counter table: not a ring
                os.close(fd)
    raise AssertionError(f"worker {pid} holds no ring")


def corrupt(ring: Ring, kind: str) -> None:
    """Write what no producer or consumer can have written."""
    if kind == "head":
        ring.ctl[HEAD] += 12  # not 8-aligned, and past every record
    elif kind == "tail":
        ring.ctl[TAIL] = ring.ctl[HEAD] + 64  # ahead of the head
    else:  # the length of the next record to read: 0, which would never advance
        at = CONTROL_SIZE + int(ring.ctl[TAIL]) % ring.capacity
        ring.mapping[at : at + 4] = bytes(4)


def payloads(tag: str, count: int) -> list[bytes]:
    return [json.dumps({"key": f"k{i % 16}", "n": f"{tag}{i}"}).encode() for i in range(count)]


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("head", ["--speedups=true"]),
        ("head", ["--speedups=false"]),
        ("tail", ["--speedups=true"]),
        ("tail", ["--speedups=false"]),
        ("length", ["--speedups=true"]),
        ("length", ["--speedups=false"]),
        ("head", ["--route-by", "key", "--codec", "json"]),
    ],
    ids=[
        "head-compiled",
        "head-python",
        "tail-compiled",
        "tail-python",
        "length-compiled",
        "length-python",
        "head-route_by",
    ],
)
def test_a_corrupt_ring_costs_that_ring_not_the_server(
    sock_dir: Path, out_dir: Path, kind: str, args: list[str]
) -> None:
    path = sock_dir / "s.sock"
    with run_server("seqrec:Recorder", path, "--workers", "2", *args, out_dir=out_dir) as server:
        pid = server.proc.pid
        originals = wait_workers(pid, 2)
        victim = originals[0]
        ring = worker_ring(victim.pid)
        lost = 0
        try:
            with send(path, *payloads("a", 100)):
                pass
            wait_for(lambda: len(read_records(out_dir)) == 100, what="the first 100")
            if kind == "length":  # records waiting in the ring: they are lost with it
                victim.suspend()
                with send(path, *payloads("w", 200)):
                    pass
                time.sleep(0.5)
                lost = ring.depth()
                assert lost > 0
            corrupt(ring, kind)
            if kind == "length":
                victim.resume()
            if kind == "length" or "--speedups=true" not in args:
                # A Python producer (or a consumer acknowledging) would overwrite a corrupt
                # head or tail before anyone saw it: let it be seen first.
                wait_for(
                    lambda: ring.marked_corrupt or "emptied it" in server.stderr,
                    what="the corruption to be found",
                )
            # Datagrams waiting in the socket (fewer than its queue holds: no send blocks): a
            # receiver that fails on the corrupt ring before reading is called back at once,
            # forever, and spins. The compiled one meets the corrupt ring here.
            waiting = payloads("c", 8)
            with send(path, *waiting):
                pass
            receiver = children(pid, "receiver")[0]
            before = receiver.cpu_times()
            time.sleep(1.0)
            after = receiver.cpu_times()
            spent = after.user + after.system - before.user - before.system
            # Spinning shows as CPU, or (when logging each failure slows it down) as a
            # traceback per call.
            assert spent < 0.5, f"the receiver spins: {spent:.2f}s of CPU in 1s"
            assert server.stderr.count("Traceback") == 0, server.stderr[-2000:]
            wait_for(lambda: "ring was corrupt: emptied it" in server.stderr, what="the reset")
            wait_for(lambda: len(children(pid, "workers")) == 2, what="a new worker")
        finally:
            ring.close()
            os.close(ring.fd)
        (successor,) = (p for p in children(pid, "workers") if p not in originals)
        later = payloads("b", 400)
        with send(path, *later):
            pass
        done = {json.loads(p)["n"] for p in waiting + later}
        wait_for(
            lambda: done <= {json.loads(r)["n"] for r in read_records(out_dir)},
            what=f"every later record handled: {server.stderr[-3000:]}",
        )
        assert server.stop() == 0, server.stderr[-3000:]
    assert (out_dir / f"{successor.pid}.log").exists(), "the new worker handled nothing"
    summary = server.summary()
    assert summary["corrupt_rings"] == 1
    assert summary["lost"] == lost
    assert summary["received"] == summary["handled"] + summary["lost"]
    assert summary["restarts"] == 0  # stopped and replaced, not crashed
    assert server.stderr.count("corrupt") <= 6, server.stderr[-3000:]  # logged once each
    assert "Traceback" not in server.stderr, server.stderr[-3000:]

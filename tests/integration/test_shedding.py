"""Shedding (what a forwarding sink's ``drop_newest`` asks of the receiver), without a
broker: a worker that sheds gets no new datagram, the others get theirs as before, and
nothing more is shed once it stops asking or is replaced."""

from __future__ import annotations

import json
import re
import urllib.request
import zlib
from pathlib import Path

import msgspec
import pytest

from tests.conftest import profile_env, read_records, run_server, send_all, wait_for
from tests.integration.test_faults import children
from tests.nats.conftest import free_port

SHED = re.compile(r'^ugram_rejected_total\{reason="shed"\} (\S+)$', re.MULTILINE)


def shed(port: int) -> int:
    """``ugram_rejected_total{reason="shed"}`` now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        match = SHED.search(reply.read().decode())
    assert match is not None
    return int(float(match.group(1)))


def by_worker(out_dir: Path) -> dict[str, list[str]]:
    """What each worker handled: ``{"0": [payload, ...], "1": [...]}``."""
    handled: dict[str, list[str]] = {"0": [], "1": []}
    for line in read_records(out_dir):
        index, payload = line.split(" ", 1)
        handled[index].append(payload)
    return handled


def stop_shedding(out_dir: Path) -> None:
    """Let worker 0 go on, and wait until it no longer sheds."""
    (out_dir / "release").touch()
    wait_for(lambda: not (out_dir / "shedding").exists(), what="worker 0 not shedding")


def start_shedding(path: Path, out_dir: Path) -> list[str]:
    """Send until worker 0 has a record and sheds; returns what was sent."""
    sent: list[str] = []
    while not (out_dir / "shedding").exists():
        sent.append(f"warm-{len(sent)}")
        send_all(path, sent[-1].encode())
        wait_for(lambda: (out_dir / "shedding").exists() or len(read_records(out_dir)) == len(sent))
    return sent


@pytest.mark.parametrize(
    ("ordering", "profile"),
    [("", "linux"), ("compiled", "linux"), ("", "portable")],
    ids=["default", "compiled-ordering", "portable"],
)
def test_round_robin_goes_around_a_shedding_worker(
    sock_dir: Path, out_dir: Path, ordering: str, profile: str
) -> None:
    """Another worker takes every datagram while one sheds: none is dropped, and the
    shedding one takes its share again once it stops; under both memory orderings (the
    flag is a shared word) and the portable profile."""
    path, port = sock_dir / "s.sock", free_port()
    args = ("--workers", "2", "--metrics", f"127.0.0.1:{port}")
    env = profile_env(profile, out_dir)
    if ordering:
        env["UGRAM_MEMORY_ORDERING"] = ordering
    with run_server("shedapps:ShedOnce", path, *args, env=env) as server:
        warm = start_shedding(path, out_dir)
        during = [f"a-{i}" for i in range(300)]
        send_all(path, *(p.encode() for p in during))
        wait_for(lambda: len(by_worker(out_dir)["1"]) == len(warm) - 1 + 300, what="worker 1")
        shed_during = shed(port)
        stop_shedding(out_dir)
        after = [f"b-{i}" for i in range(300)]
        send_all(path, *(p.encode() for p in after))
        wait_for(lambda: len(read_records(out_dir)) == len(warm) + 600, what="all handled")
        assert server.stop() == 0, server.stderr
    handled = by_worker(out_dir)
    assert set(during) <= set(handled["1"])  # all of them, none to the shedding worker
    assert any(p.startswith("b-") for p in handled["0"])  # it takes datagrams again
    assert sorted(handled["0"] + handled["1"]) == sorted(warm + during + after)
    assert shed_during == 0
    assert server.summary()["rejected"] == 0
    assert ("memory ordering C11" in server.stderr) == (ordering == "compiled")


def keys_of_workers() -> tuple[str, str]:
    """Two route_by values, the first on worker 0 of 2, the second on worker 1 (the
    receiver's hash: CRC-32 of the msgpack-encoded value)."""
    keys = [f"k{i}" for i in range(20)]
    on = {zlib.crc32(msgspec.msgpack.encode(key)) % 2: key for key in keys}
    return on[0], on[1]


def test_a_key_of_a_shedding_worker_is_shed_until_it_is_replaced(
    sock_dir: Path, out_dir: Path
) -> None:
    """--route-by: datagrams whose key is on the shedding worker are dropped and counted,
    the other keys are handled; once that worker was killed, its replacement (which does
    not shed) gets its keys again, and nothing more is shed."""
    path, port = sock_dir / "s.sock", free_port()
    args = ("--workers", "2", "--codec", "json", "--route-by", "k")
    args += ("--metrics", f"127.0.0.1:{port}")
    k0, k1 = keys_of_workers()

    def message(key: str, i: int) -> bytes:
        return json.dumps({"k": key, "i": i}).encode()

    with run_server("shedapps:ShedOnce", path, *args, out_dir=out_dir) as server:
        send_all(path, message(k0, -1))
        wait_for(lambda: (out_dir / "shedding").exists(), what="worker 0 shedding")
        send_all(path, *(message(k, i) for i in range(100) for k in (k0, k1)))
        wait_for(lambda: len(by_worker(out_dir)["1"]) == 100, what="worker 1's 100")
        wait_for(lambda: shed(port) == 100, what="100 shed")
        workers = children(server.proc.pid, "workers")
        (worker,) = [w for w in workers if "worker 0" in " ".join(w.cmdline())]
        worker.kill()
        # The replacement replays the record its predecessor held, and does not shed.
        wait_for(lambda: len(by_worker(out_dir)["0"]) == 1, what="the replay")
        send_all(path, *(message(k0, i) for i in range(100, 150)))
        wait_for(lambda: len(by_worker(out_dir)["0"]) == 51, what="worker 0's 50")
        assert shed(port) == 100
        assert server.stop() == 0, server.stderr
    handled = by_worker(out_dir)
    assert sorted(json.loads(p)["i"] for p in handled["0"]) == [-1, *range(100, 150)]
    assert sorted(json.loads(p)["i"] for p in handled["1"]) == list(range(100))
    assert server.summary()["rejected"] == 100


@pytest.mark.parametrize(
    "args",
    [(), ("--speedups", "false"), ("--receive-batch", "1"), ("--codec", "json", "--route-by", "k")],
    ids=["compiled", "pure-python", "recvfrom", "keyed"],
)
def test_when_every_worker_sheds_each_datagram_is_counted_once(
    sock_dir: Path, out_dir: Path, args: tuple[str, ...]
) -> None:
    """One worker, shedding: every datagram read is counted under one reason (oversized
    before shed), whichever loop reads it."""
    path, port = sock_dir / "s.sock", free_port()
    common = ("--workers", "1", "--max-datagram", "100", "--metrics", f"127.0.0.1:{port}")
    with run_server("shedapps:ShedOnce", path, *common, *args, out_dir=out_dir) as server:
        send_all(path, b'{"k": "first"}')
        wait_for(lambda: (out_dir / "shedding").exists(), what="worker 0 shedding")
        normal = [json.dumps({"k": "a", "i": i}).encode() for i in range(300)]
        big = json.dumps({"k": "a", "p": "x" * 200}).encode()
        send_all(path, *normal[:150], *[big] * 5, *normal[150:])
        wait_for(lambda: shed(port) == 300, what="300 shed")
        stop_shedding(out_dir)
        send_all(path, *normal[:10])
        wait_for(lambda: len(read_records(out_dir)) == 11, what="11 handled")
        assert server.stop() == 0, server.stderr
    summary = server.summary()
    assert (summary["received"], summary["oversized"], summary["rejected"]) == (316, 5, 305)
    assert summary["handled"] == 11

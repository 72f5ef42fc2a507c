"""Every batch path is correct: recvmmsg in the receiver, batched consume in the workers,
and batch handlers — exact counts, per-sender order, truncation still detected."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import (
    read_records,
    run_server,
    send,
    start_senders,
    wait_for,
    wait_senders,
)
from ugram.control import fetch


def per_sender_in_order(records: list[str]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = defaultdict(list)
    for record in records:
        sender, seq = record.split(":")
        seqs[sender].append(int(seq))
    return seqs


@pytest.mark.parametrize(
    ("handler", "speedups"),
    [
        ("seqrec:Recorder", "true"),
        ("batchapps:Collector", "true"),
        ("batchapps:Collector", "false"),
    ],
    ids=["records", "batches", "batches-pure-python"],
)
def test_recvmmsg_keeps_every_datagram_in_order(
    sock_dir: Path, out_dir: Path, handler: str, speedups: str
) -> None:
    path = sock_dir / "s.sock"
    args = ("--workers", "1", "--receive-batch", "64", f"--speedups={speedups}")
    with run_server(handler, path, *args, out_dir=out_dir) as server:
        wait_senders(start_senders(path, 50_000, 2))
        assert server.stop() == 0, server.stderr[-2000:]
    seqs = per_sender_in_order(read_records(out_dir))
    # One worker sees each sender's datagrams in the order they were sent, once each.
    assert seqs == {"s0": list(range(50_000)), "s1": list(range(50_000))}
    assert server.summary()["handled"] == 100_000


def latency_observed(path: Path) -> int:
    """Records in the server's receive-to-handled latency histogram (``ugram stats``)."""
    cmd = [sys.executable, "-m", "ugram", "stats", "--socket", str(path), "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    return sum(json.loads(result.stdout)["latency"]["counts"])


def test_batch_handler_gets_batches(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        "batchapps:Collector", path, "--workers", "2", "--batch-size", "64", out_dir=out_dir
    ) as server:
        wait_senders(start_senders(path, 20_000, 2))
        # Each record of each batch has its latency counted, as for one-record handlers.
        wait_for(lambda: latency_observed(path) == 40_000, what="40 000 latencies")
        assert server.stop() == 0
    assert len(read_records(out_dir)) == 40_000
    batches = sum(int(f.read_text()) for f in out_dir.glob("*.batches"))
    assert 40_000 / 64 <= batches < 40_000  # several records per call, none over 64


@pytest.mark.parametrize("speedups", ["true", "false"], ids=["compiled", "pure-python"])
def test_batches_are_bounded_by_payload_bytes(sock_dir: Path, out_dir: Path, speedups: str) -> None:
    path = sock_dir / "s.sock"
    # 3 of 3000 bytes fit in 10 000; the one of 20 000 is a batch of its own. The handler
    # waits after its first batch until all of them are in the ring: batch_size alone would
    # then hand them over in one batch.
    sizes = [3000] * 60 + [20_000] + [3000] * 60
    args = ("--workers", "1", "--batch-size", "256", "--batch-bytes", "10000")
    with run_server(
        "batchapps:Sizes", path, *args, f"--speedups={speedups}", out_dir=out_dir
    ) as server:
        with send(path, b"first"):
            pass
        wait_for(lambda: read_records(out_dir), what="the first batch")
        with send(path, *(bytes([ord("a") + i % 26]) * size for i, size in enumerate(sizes))):
            pass
        wait_for(lambda: fetch(str(path)).totals.received == 1 + len(sizes), what="the rest")
        (out_dir / "go").touch()
        wait_for(lambda: len(read_records(out_dir)) == 1 + len(sizes), what="every record")
        assert server.stop() == 0, server.stderr[-2000:]
    expected = ["5 f"] + [f"{size} {chr(ord('a') + i % 26)}" for i, size in enumerate(sizes)]
    assert read_records(out_dir) == expected  # each once, in order
    (sizes_file,) = out_dir.glob("*.sizes")
    batches = [tuple(map(int, line.split())) for line in sizes_file.read_text().splitlines()]
    assert all(count == 1 or total <= 10_000 for count, total in batches), batches
    assert (1, 20_000) in batches
    assert max(count for count, _ in batches) == 3  # batched still, as far as the bytes allow
    assert server.summary()["handled"] == 1 + len(sizes)


def test_recvmmsg_detects_truncation_and_keeps_sizes(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    sizes = [0, 1, 999, 1000, 1001, 5000, 70_000, 1000, 0]
    with run_server(
        "batchapps:sized",
        path,
        "--workers",
        "1",
        "--receive-batch",
        "64",
        "--max-datagram",
        "1000",
        out_dir=out_dir,
    ) as server:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        client.bind(str(sock_dir / "c.sock"))
        for size in sizes:
            client.sendto(bytes([size % 251 + 1]) * size, str(path))
        client.close()
        wait_for(lambda: len(read_records(out_dir)) == 6, what="the six small ones")
        assert server.stop() == 0
    expected = [f"{n} {bytes([n % 251 + 1]).hex() if n else '-'}" for n in sizes if n <= 1000]
    assert read_records(out_dir) == expected
    summary = server.summary()
    assert summary["oversized"] == 3  # 1001, 5000, 70 000: rejected, never cut to size
    assert summary["received"] == len(sizes)


@pytest.mark.parametrize("speedups", ["true", "false"], ids=["compiled", "pure-python"])
def test_recvmmsg_with_credentials(sock_dir: Path, out_dir: Path, speedups: str) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        "trustapps:creds",
        path,
        "--workers",
        "2",
        "--receive-batch",
        "16",
        "--credentials",
        f"--speedups={speedups}",
        "--log-level",
        "debug",
        out_dir=out_dir,
    ) as server:
        with send(path, *[str(i).encode() for i in range(40)]):
            pass
        wait_for(lambda: len(read_records(out_dir)) == 40, what="40 records")
    path_line = "recvmmsg x16, compiled, with credentials"
    assert (path_line in server.stderr) == (speedups == "true"), server.stderr[-2000:]
    me = f"{os.getpid()} {os.getuid()} {os.getgid()}"
    assert sorted(read_records(out_dir), key=lambda r: int(r.split()[0])) == [
        f"{i} {me}" for i in range(40)
    ]


@pytest.mark.parametrize(
    ("handler", "speedups", "expected"),
    [
        ("batchapps:PerDatagram", "true", ["a+b", "c"]),
        ("batchapps:PerDatagram", "false", ["a+b", "c"]),
        ("batchapps:PerLine", "true", ["a", "b", "c"]),
    ],
    ids=["per-datagram", "per-datagram-pure-python", "flat"],
)
def test_a_batch_handler_may_take_the_ring_records(
    sock_dir: Path, out_dir: Path, handler: str, speedups: str, expected: list[str]
) -> None:
    """``list[Record]`` beside the messages: the sender's address and credentials as the
    ring holds them; with ``list[list[T]]`` each datagram's lines stay together."""
    path, sender = sock_dir / "s.sock", sock_dir / "sender.sock"
    args = ("--codec", "lines", "--workers", "1", "--credentials", f"--speedups={speedups}")
    with run_server(handler, path, *args, out_dir=out_dir) as server:
        with send(path, b"a\nb", b"c", bind=str(sender)):
            wait_for(lambda: len(read_records(out_dir)) == len(expected), what="the lines")
        assert server.stop() == 0, server.stderr[-2000:]
    assert read_records(out_dir) == [
        f"{text} {sender} {os.getpid()} {os.getuid()}" for text in expected
    ]
    assert server.summary()["handled"] == 2

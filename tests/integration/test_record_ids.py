"""Datagram.id names a record: the same id when it is replayed after its worker died, a
different one for every other record (what ugram.forward's deduplication rests on)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import child_env, run_server, start_senders, wait_for, wait_senders
from tests.integration.test_faults import running_workers


def _ids(out_dir: Path) -> dict[bytes, set[str]]:
    """Each payload, with every id it was handled under."""
    seen: dict[bytes, set[str]] = defaultdict(set)
    for file in out_dir.glob("*.log"):
        for line in file.read_bytes().splitlines():
            payload, _, record_id = line.rpartition(b" ")
            seen[payload].add(record_id.decode())
    return seen


def _server_id(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "ugram", "stats", "--socket", str(path), "--json"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return str(json.loads(out)["server_id"])


@pytest.mark.parametrize("handler", ["idapps:BatchIds", "idapps:record_ids"])
def test_a_replayed_record_keeps_its_id(sock_dir: Path, out_dir: Path, handler: str) -> None:
    path = sock_dir / "s.sock"
    args = ("--workers", "2", "--batch-size", "32")
    with run_server(handler, path, *args, out_dir=out_dir) as server:
        server_id = _server_id(path)
        procs = start_senders(path, 4000, 2)
        rng = random.Random(5)
        for _ in range(3):
            time.sleep(0.3)
            wait_for(lambda: len(running_workers(server.proc.pid)) == 2, what="2 workers")
            rng.choice(running_workers(server.proc.pid)).kill()
        wait_senders(procs)
        assert server.stop() == 0, server.stderr[-3000:]
    seen = _ids(out_dir)
    assert set(seen) == {f"s{s}:{i}".encode() for s in range(2) for i in range(4000)}
    assert all(len(ids) == 1 for ids in seen.values())  # replays kept their ids
    ids = [next(iter(found)) for found in seen.values()]
    assert len(set(ids)) == len(ids)  # and no two records share one
    assert all(record_id.startswith(server_id + "-") for record_id in ids)
    assert {record_id.split("-")[1] for record_id in ids} == {"0", "1"}  # the worker slots
    if handler == "idapps:BatchIds":
        assert server.summary()["replayed"] > 0

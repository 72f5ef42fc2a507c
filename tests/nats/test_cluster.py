"""ugram.builtin:Forward against a three-node JetStream cluster (a stream with 3 replicas):
the stream's leader killed in the middle of a flood costs nothing and stores nothing twice."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import run_server, wait_for
from tests.nats.conftest import NatsServer, create_stream, read_stream, stream_leader
from tests.nats.helpers import (
    check_exactly_once,
    finish_senders,
    forward_env,
    free_port,
    metrics,
    serve_args,
    start_senders,
)


def test_the_leader_killed_mid_flood_loses_nothing_and_doubles_nothing(
    sock_dir: Path, nats_cluster: list[NatsServer]
) -> None:
    path, port = sock_dir / "s.sock", free_port()
    urls = [server.url for server in nats_cluster]
    create_stream(urls, "HA", ["t.*"], replicas=3)
    env = forward_env(urls, "HA", replicas="3")
    with run_server("ugram.builtin:Forward", path, *serve_args(port), env=env) as server:
        procs = start_senders(path, 3, 1000, rate=500)  # a flood of about two seconds
        acked = "ugram_forward_acknowledged_total"
        wait_for(lambda: metrics(port).get(acked, 0) >= 300, what="forwarding")
        leader = stream_leader(urls, "HA")
        victim = next(node for node in nats_cluster if node.name == leader)
        victim.stop(signal.SIGKILL)
        finish_senders(procs)
        survivors = [node.url for node in nats_cluster if node is not victim]
        stored = read_stream(survivors, "HA", 3000, within=40)
        new_leader = stream_leader(survivors, "HA")
        counts = metrics(port)
        assert server.stop() == 0, server.stderr[-3000:]
    check_exactly_once(stored, 3, 1000)
    assert new_leader != leader
    assert counts[acked] >= 3000
    print(f"leader {leader} killed; {counts}")

"""ugram.builtin:Forward against a real single-node JetStream: exactly once from the socket to
the stream, worker kills, a broker outage, a stream that refuses."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.conftest import run_server, send_all, wait_for
from tests.nats.conftest import NatsServer, read_stream, update_stream
from tests.nats.helpers import (
    check_exactly_once,
    finish_senders,
    forward_env,
    free_port,
    healthz,
    metrics,
    serve_args,
    start_senders,
    workers,
)

ACKED = "ugram_forward_acknowledged_total"
SHED = 'ugram_rejected_total{reason="shed"}'


def test_a_flood_is_stored_exactly_once(sock_dir: Path, nats_server: NatsServer) -> None:
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "FLOOD")
    with run_server("ugram.builtin:Forward", path, *serve_args(port), env=env) as server:
        finish_senders(start_senders(path, 3, 1000))
        send_all(path, b'{"no": "s field"}', b"not json")
        stored = read_stream(urls, "FLOOD", 3001)
        wait_for(lambda: metrics(port).get(ACKED) == 3001, what="3001 acknowledged")
        counts = metrics(port)
        stats = subprocess.run(
            [sys.executable, "-m", "ugram", "stats", "--socket", str(path), "--interval", "0.2"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        ).stdout
        assert server.stop() == 0, server.stderr[-3000:]
    routed = [m for m in stored if m.subject != "t._unrouted"]
    assert {m.subject for m in routed} == {"t.s0", "t.s1", "t.s2"}
    check_exactly_once(routed, 3, 1000)
    assert [json.loads(m.data) for m in stored if m.subject == "t._unrouted"] == [{"no": "s field"}]
    assert counts["ugram_forward_unrouted_total"] == 1
    assert counts["ugram_forward_published_total"] == 3001
    assert counts['ugram_forward_dropped_total{reason="refused"}'] == 0
    assert counts["ugram_forward_rtt_seconds_count"] == 3001
    assert "ugram_forward_acknowledged_total" in stats
    summary = server.summary()
    assert summary["invalid"] == 1
    assert summary["handled"] == 3001


def test_workers_killed_mid_batch_store_nothing_twice(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    """Kills land after the PubAck, before the ring's acknowledgement (SlowForward waits
    there): the replacement publishes the batch again, and the stream keeps one copy."""
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "KILLS")
    env["UGTEST_ACK_DELAY"] = "0.1"
    args = serve_args(port, "--batch-size", "64")
    with run_server("forwardapps:SlowForward", path, *args, env=env) as server:
        procs = start_senders(path, 3, 1500)
        rng, kills = random.Random(3), 0
        while kills < 4 and metrics(port).get("ugram_handled_total", 0) < 4000:
            time.sleep(0.3)
            # Up for a while: booted, connected and forwarding.
            alive = [w for w in workers(server.proc.pid) if time.time() - w.create_time() > 0.7]
            if alive:
                rng.choice(alive).kill()
                kills += 1
        finish_senders(procs)
        stored = read_stream(urls, "KILLS", 4500)
        counts = metrics(port)
        assert server.stop() == 0, server.stderr[-3000:]
    check_exactly_once(stored, 3, 1500)
    assert kills >= 3
    assert server.summary()["replayed"] > 0
    assert counts["ugram_forward_duplicates_total"] > 0  # replays that the stream deduplicated


def test_a_broker_outage_blocks_senders_and_loses_nothing(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "OUTAGE", unhealthy_after="1")
    # Small rings: they fill within the outage, and the senders must feel it. A worker
    # waiting for the broker longer than worker_timeout is not stuck: it must not be killed.
    args = serve_args(
        port, "--max-datagram", "1024", "--ring-size", "65536", "--worker-timeout", "2.5"
    )
    with run_server("ugram.builtin:Forward", path, *args, env=env) as server:
        wait_for(lambda: metrics(port).get("ugram_forward_connected") == 2, what="connected")
        procs = start_senders(path, 2, 1500, rate=1000, pad=250)
        wait_for(lambda: metrics(port).get(ACKED, 0) >= 200, what="forwarding")
        nats_server.stop(signal.SIGKILL)
        time.sleep(2.0)
        status, body = healthz(port)
        during = metrics(port)
        time.sleep(2.0)
        assert all(p.poll() is None for p in procs), "senders finished while the broker was down"
        nats_server.start()
        reports = finish_senders(procs)
        stored = read_stream(urls, "OUTAGE", 3000)
        wait_for(lambda: healthz(port)[0] == 200, what="healthy again")
        assert server.stop() == 0, server.stderr[-3000:]
    check_exactly_once(stored, 2, 1500)
    # Waited on purpose: no worker was killed (the log says which and why if one was).
    assert server.summary()["restarts"] == 0, server.stderr[-6000:]
    assert status == 503
    assert "forwarding to JetStream has failed" in body
    assert during["ugram_forward_failing_seconds"] >= 1
    assert during["ugram_forward_connected"] == 0
    assert max(r["longest"] for r in reports) > 2.0  # blocked while the broker was away
    # The default policy sheds nothing: full rings hold the senders back.
    assert during["ugram_forward_shedding"] == 0
    assert during[SHED] == 0


def test_a_full_stream_is_backpressure_until_it_has_room(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "FULL", max_msgs="500", retry_max="0.2")
    args = serve_args(port, "--max-datagram", "1024", "--ring-size", "65536")  # ~220 a ring
    with run_server("ugram.builtin:Forward", path, *args, env=env) as server:
        procs = start_senders(path, 1, 1500, pad=250)
        refused = 'ugram_forward_failures_total{reason="refused"}'
        wait_for(lambda: metrics(port).get(refused, 0) > 0, what="a refusal")
        time.sleep(1.0)
        assert metrics(port)[ACKED] == 500
        assert procs[0].poll() is None  # blocked: the stream refuses, the rings are full
        update_stream(urls, "FULL", max_msgs=-1)  # room again
        finish_senders(procs)
        stored = read_stream(urls, "FULL", 1500)
        counts = metrics(port)
        assert server.stop() == 0, server.stderr[-3000:]
    check_exactly_once(stored, 1, 1500)
    assert sum(v for k, v in counts.items() if k.startswith("ugram_forward_dropped_total")) == 0


def test_drop_oldest_gives_refused_messages_up_and_counts_them(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(
        urls, "DROP", max_msgs="500", policy="drop_oldest", drop_after="0.3", retry_max="0.1"
    )
    with run_server("ugram.builtin:Forward", path, *serve_args(port), env=env) as server:
        finish_senders(start_senders(path, 1, 1000))
        dropped = 'ugram_forward_dropped_total{reason="refused"}'
        wait_for(lambda: metrics(port).get(dropped) == 500, what="500 dropped")
        stored = read_stream(urls, "DROP", 500)
        counts = metrics(port)
        assert server.stop() == 0, server.stderr[-3000:]
    assert len(stored) == 500
    assert len({json.loads(m.data)["i"] for m in stored}) == 500
    assert counts[ACKED] == 500
    assert server.summary()["handled"] == 1000


def test_each_line_of_a_datagram_is_its_own_message(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    """--codec lines: one message per line, ids ``<id>``, ``<id>.1``, ``<id>.2`` (the same on a
    replay, and none taken for another's)."""
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "LINES", subject="t.lines")
    args = ["--codec", "lines", "--workers", "1", "--metrics", f"127.0.0.1:{port}"]
    with run_server("ugram.builtin:Forward", path, *args, env=env) as server:
        send_all(path, b"a\nb\nc", b"d")
        stored = read_stream(urls, "LINES", 4)
        assert server.stop() == 0, server.stderr[-3000:]
    assert [m.data for m in stored] == [b"a", b"b", b"c", b"d"]
    first = stored[0].msg_id
    assert [m.msg_id for m in stored[:3]] == [first, f"{first}.1", f"{first}.2"]
    assert "." not in stored[3].msg_id


def test_a_reload_keeps_forwarding_and_counting(sock_dir: Path, nats_server: NatsServer) -> None:
    """SIGHUP: the new workers connect while the old ones still forward, then take over
    their slots; the counters carry on from the old workers' (the same metrics declared)."""
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "RELOAD")
    with run_server("ugram.builtin:Forward", path, *serve_args(port), env=env) as server:
        procs = start_senders(path, 2, 1500, rate=1500)
        wait_for(lambda: metrics(port).get(ACKED, 0) >= 500, what="forwarding")
        server.proc.send_signal(signal.SIGHUP)
        finish_senders(procs)
        stored = read_stream(urls, "RELOAD", 3000)
        wait_for(lambda: server.stderr.count("replaced (now pid") == 2, what="both replaced")
        wait_for(lambda: metrics(port).get(ACKED) == 3000, what="3000 acknowledged")
        assert server.stop() == 0, server.stderr[-3000:]
    check_exactly_once(stored, 2, 1500)
    assert server.summary()["restarts"] == 0


def test_drop_oldest_by_backlog_keeps_senders_going_while_the_broker_is_away(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    """drop_after_bytes: while deliveries fail and the worker's ring holds more than that,
    the batch in hand is given up (counted): the senders never wait for the broker."""
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "SHED", policy="drop_oldest", drop_after_bytes="1")
    args = serve_args(port, "--max-datagram", "1024", "--ring-size", "65536")
    with run_server("ugram.builtin:Forward", path, *args, env=env) as server:
        wait_for(lambda: metrics(port).get("ugram_forward_connected") == 2, what="connected")
        nats_server.stop(signal.SIGKILL)
        wait_for(lambda: metrics(port).get("ugram_forward_connected") == 0, what="disconnected")
        reports = finish_senders(start_senders(path, 2, 1000, pad=250), timeout=30)
        wait_for(lambda: metrics(port).get("ugram_handled_total") == 2000, what="all handled")
        counts = metrics(port)
        assert server.stop() == 0, server.stderr[-3000:]
    assert counts['ugram_forward_dropped_total{reason="unreachable"}'] == 2000
    assert counts[ACKED] == 0
    assert max(r["longest"] for r in reports) < 2.0  # no waiting for the broker


def _marks(prefix: str, count: int) -> list[bytes]:
    return [json.dumps({"s": prefix, "i": i}).encode() for i in range(count)]


def test_drop_newest_sheds_new_datagrams_while_the_broker_is_away(
    sock_dir: Path, nats_server: NatsServer
) -> None:
    """drop_newest: while deliveries fail and a worker's ring holds more than
    drop_after_bytes, the receiver drops new datagrams for it (counted as shed) instead of
    making the senders wait; what the rings held is stored once when the broker is back,
    and from the first acknowledgement on nothing more is shed."""
    path, port, urls = sock_dir / "s.sock", free_port(), [nats_server.url]
    env = forward_env(urls, "NEWEST", policy="drop_newest", drop_after_bytes="16384")
    args = serve_args(port, "--max-datagram", "1024", "--ring-size", "65536")
    with run_server("ugram.builtin:Forward", path, *args, env=env) as server:
        send_all(path, *_marks("pre", 50))
        wait_for(lambda: metrics(port).get(ACKED) == 50, what="50 acknowledged")
        procs = start_senders(path, 2, 1500, rate=1000, pad=250)
        wait_for(lambda: metrics(port).get(ACKED, 0) >= 250, what="forwarding")
        nats_server.stop(signal.SIGKILL)
        # The senders finish while the broker is away: nothing makes them wait for it.
        reports = finish_senders(procs, timeout=20)
        during = metrics(port)
        nats_server.start()
        shed = int(during[SHED])
        stored = read_stream(urls, "NEWEST", 50 + 3000 - shed)
        wait_for(lambda: metrics(port).get("ugram_forward_shedding") == 0, what="not shedding")
        send_all(path, *_marks("post", 50))
        stored = read_stream(urls, "NEWEST", 50 + 3000 - shed + 50)
        wait_for(lambda: metrics(port).get("ugram_handled_total") == 3100 - shed, what="handled")
        after = metrics(port)
        assert server.stop() == 0, server.stderr[-3000:]
    assert during["ugram_forward_connected"] == 0  # the senders were done before it was back
    assert during["ugram_forward_shedding"] == 2
    assert 0 < shed < 3000
    keys = Counter((json.loads(m.data)["s"], json.loads(m.data)["i"]) for m in stored)
    assert max(keys.values()) == 1, keys.most_common(3)  # nothing stored twice
    assert len({m.msg_id for m in stored}) == len(stored)
    flood = {key for key in keys if key[0] in ("s0", "s1")}
    assert flood <= {(f"s{s}", i) for s in range(2) for i in range(1500)}
    assert len(flood) == 3000 - shed  # every datagram sent is stored, or counted as shed
    assert {("pre", i) for i in range(50)} <= set(keys)
    assert {("post", i) for i in range(50)} <= set(keys)
    assert after[SHED] == shed  # once back, nothing more is shed
    assert sum(v for k, v in after.items() if k.startswith("ugram_forward_dropped_total")) == 0
    assert server.summary()["rejected"] == shed
    assert max(r["longest"] for r in reports) < 1.0  # blocked, they would wait for the broker

"""Where the receiver places a datagram without a key: in the first worker's ring whose
worker keeps up (ugram.receiver.routing.PACK_NS), on every receive path.

What a user sees: a worker stuck in one long call is given no more datagrams while another
worker keeps up (round-robin gave it every other one), and a flow that one worker keeps up
with wakes only that one (on a machine with fewer cores than processes, waking every worker
for it made two workers slower than one)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.apps.seqrec import STALL
from tests.conftest import Server, profile_env, read_records, run_server, send, wait_for

PATHS = [("true", "linux"), ("false", "linux"), ("true", "portable")]
IDS = ["compiled", "pure-python", "portable"]


def two_workers(
    handler: str, path: Path, out_dir: Path, speedups: str, profile: str
) -> contextlib.AbstractContextManager[Server]:
    """A server of 2 workers on the receive path the parameters name."""
    args = ("--workers", "2", f"--speedups={speedups}")
    return run_server(handler, path, *args, env=profile_env(profile, out_dir))


def per_worker(out_dir: Path) -> list[list[str]]:
    """Each worker's records, in its order (a worker's file is named by its pid)."""
    return [
        [line for line in file.read_text().splitlines() if line != "#teardown"]
        for file in sorted(out_dir.glob("*.log"))
    ]


@pytest.mark.parametrize(("speedups", "profile"), PATHS, ids=IDS)
def test_a_stuck_worker_is_given_no_more_datagrams_while_another_keeps_up(
    sock_dir: Path, out_dir: Path, speedups: str, profile: str
) -> None:
    path = sock_dir / "s.sock"
    with two_workers("seqrec:StallRecorder", path, out_dir, speedups, profile) as server:
        sock = send(path, b"stall")
        time.sleep(0.3)  # taken: its worker sleeps in the handler
        quick = [b"q%d" % i for i in range(20)]
        started = time.monotonic()
        for payload in quick:
            sock.sendto(payload, str(path))
            time.sleep(0.02)
        # Round-robin would leave every other one behind the stuck call for STALL seconds.
        wait_for(
            lambda: len(read_records(out_dir)) == len(quick),
            timeout=STALL - 1.0,
            what=f"the quick records past the stuck worker: {per_worker(out_dir)}",
        )
        assert time.monotonic() - started < STALL  # the proof: the stall was still on
        wait_for(lambda: "stall" in read_records(out_dir), what="the stuck record")
        sock.close()
        assert server.stop() == 0, server.stderr[-3000:]
    assert sorted(read_records(out_dir)) == sorted(["stall", *(q.decode() for q in quick)])


@pytest.mark.parametrize(("speedups", "profile"), PATHS, ids=IDS)
def test_a_flow_one_worker_keeps_up_with_goes_to_that_worker(
    sock_dir: Path, out_dir: Path, speedups: str, profile: str
) -> None:
    path = sock_dir / "s.sock"
    with two_workers("seqrec:Recorder", path, out_dir, speedups, profile) as server:
        sent = [b"r%d" % i for i in range(200)]
        sock = send(path)
        # In bursts: one worker takes a burst of 10 in well under a millisecond, but only a
        # receiver that knows that (the cost a record each worker reports) gives it all 10.
        for at, payload in enumerate(sent):
            sock.sendto(payload, str(path))
            if at % 10 == 9:
                time.sleep(0.02)
        wait_for(lambda: len(read_records(out_dir)) == len(sent), what="every record")
        sock.close()
        assert server.stop() == 0, server.stderr[-3000:]
    shares = sorted(len(records) for records in per_worker(out_dir))
    # Round-robin gives each worker half. A record may still go to the idle worker when the
    # first one is descheduled holding one (a busy machine), so: most, not all.
    assert shares[-1] >= 0.75 * len(sent), shares

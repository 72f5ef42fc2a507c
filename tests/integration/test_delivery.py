"""The delivery promise: every datagram the kernel accepted is handled exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import (
    profile_env,
    read_records,
    run_server,
    start_senders,
    teardowns,
    wait_senders,
)
from ugram import speedups as native

SENDERS = 4
PER_SENDER = 50_000


def expected(senders: int, count: int) -> set[str]:
    return {f"s{s}:{i}" for s in range(senders) for i in range(count)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "speedups", "ordering", "profile"),
    [
        (1, "true", "", "linux"),
        (2, "true", "", "linux"),
        (4, "true", "", "linux"),
        (2, "false", "", "linux"),
        # What arm64 runs (ugram.ordering): every shared word a release store and an
        # acquire load through the compiled helper, with its loops and with Python's.
        (2, "true", "compiled", "linux"),
        (2, "false", "compiled", "linux"),
        # What macOS runs (ugram.portable): recvfrom, unlinked files, pipes.
        (2, "true", "", "portable"),
    ],
    ids=[
        "1",
        "2",
        "4",
        "2-pure-python",
        "2-compiled-ordering",
        "2-pure-python-compiled-ordering",
        "2-portable",
    ],
)
def test_concurrent_senders_exactly_once(
    sock_dir: Path, out_dir: Path, workers: int, speedups: str, ordering: str, profile: str
) -> None:
    if ordering and native.NATIVE is None:
        pytest.skip("the compiled ordering needs ugram._speedups")
    path = sock_dir / "s.sock"
    env = profile_env(profile, out_dir)
    if ordering:
        env["UGRAM_MEMORY_ORDERING"] = ordering
    with run_server(
        "seqrec:Recorder",
        path,
        "--workers",
        str(workers),
        f"--speedups={speedups}",
        env=env,
    ) as server:
        wait_senders(start_senders(path, PER_SENDER, SENDERS))
        if ordering:
            assert "memory ordering C11 acquire/release" in server.stderr
        assert server.stop() == 0, server.stderr
    records = read_records(out_dir)
    counts = Counter(records)
    duplicates = [r for r, n in counts.items() if n > 1]
    assert not duplicates, duplicates[:10]
    assert set(records) == expected(SENDERS, PER_SENDER)
    assert teardowns(out_dir) == workers
    assert server.summary()["handled"] == SENDERS * PER_SENDER
    assert not path.exists()


@pytest.mark.parametrize("profile", ["linux", "portable"])
def test_sigterm_right_after_a_flood_drains_everything(
    sock_dir: Path, out_dir: Path, profile: str
) -> None:
    path = sock_dir / "s.sock"
    env = profile_env(profile, out_dir)
    with run_server("seqrec:Recorder", path, "--workers", "2", env=env) as server:
        wait_senders(start_senders(path, 50_000, 2))
        code = server.stop()  # the rings and the socket queue still hold records here
        assert code == 0, server.stderr
    assert set(read_records(out_dir)) == expected(2, 50_000)
    assert len(read_records(out_dir)) == 100_000
    assert not path.exists()
    assert server.summary()["unhandled"] == 0

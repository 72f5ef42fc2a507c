"""Hostile datagrams against the real receiver and workers: nothing dies, nothing is lost.

For every generated batch: the receiver, the workers and the supervisor stay up (same pids),
and ``received == handled + Σ rejected by reason`` holds exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ugram import Supervisor, make_config

APPS = Path(__file__).parent.parent / "apps"
MAX = 8192
EXAMPLES = int(os.environ.get("UGTEST_FUZZ_EXAMPLES", "400"))

INT64 = st.integers(-(2**63), 2**63 - 1)  # what msgpack can carry
json_values = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
events = st.builds(lambda name, value: {"name": name, "value": value}, st.text(max_size=50), INT64)


def encodings(codec: str) -> st.SearchStrategy[bytes]:
    encode = (lambda v: json.dumps(v).encode()) if codec == "json" else msgspec.msgpack.encode
    return st.one_of(
        st.binary(max_size=64),  # garbage, invalid UTF-8, empty
        st.binary(min_size=MAX - 2, max_size=MAX + 1),  # around the size limit
        events.map(encode),  # valid
        json_values.map(encode),  # wrong schema
        st.integers(1, 10**6).map(lambda n: ("9" * min(n, MAX + 10)).encode()),  # huge number
        st.just(b"[" * 1000 + b"]" * 1000),  # deep nesting
        st.just(b'{"name": "\xff\xfe", "value": 1}'),  # invalid UTF-8 inside JSON
        st.text(max_size=MAX // 4).map(lambda t: json.dumps({"name": t, "value": 1}).encode()),
    )


@dataclass
class Running:
    supervisor: Supervisor
    path: str
    pids: tuple[int | None, dict[int, int]]


@pytest.fixture(
    scope="module",
    # The last one runs the receiver's and workers' pure-Python loops (no C helper).
    params=[("json", True), ("msgpack", True), ("json", False)],
    ids=["json", "msgpack", "json-pure-python"],
)
def running(request: pytest.FixtureRequest) -> Iterator[Running]:
    codec, use_speedups = request.param
    directory = tempfile.mkdtemp(prefix="ug", dir="/tmp")
    path = f"{directory}/f.sock"
    sys.path.insert(0, str(APPS))  # workers inherit PYTHONPATH below
    os.environ["PYTHONPATH"] = os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")])
    config = make_config(
        socket=path,
        handler="fuzzapps:strict",
        codec=codec,
        speedups=use_speedups,
        workers=2,
        max_datagram=MAX,
        ring_size=65536,
        log_level="critical",
    )
    supervisor = Supervisor(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(supervisor.serve(),))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(supervisor.worker_pids()) < 2 or supervisor.receiver_pid() is None:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield Running(supervisor, path, (supervisor.receiver_pid(), supervisor.worker_pids()))
    finally:
        loop.call_soon_threadsafe(supervisor.close)
        thread.join(30)
        loop.close()
        shutil.rmtree(directory, ignore_errors=True)


def settled(supervisor: Supervisor, expected: int) -> bool:
    snap = supervisor.statistics()
    return snap.received == expected and snap.received == snap.handled + snap.rejected


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(st.data(), min_size=1, max_size=8))
def test_hostile_datagrams_never_crash_and_always_add_up(
    running: Running, batch: list[st.DataObject]
) -> None:
    codec = running.supervisor.config.codec
    payloads = [data.draw(encodings(codec)) for data in batch]
    before = running.supervisor.statistics().received
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        for payload in payloads:
            client.sendto(payload, running.path)
    expected = before + len(payloads)
    deadline = time.monotonic() + 10
    while not settled(running.supervisor, expected):
        assert time.monotonic() < deadline, running.supervisor.statistics()
        time.sleep(0.001)
    snap = running.supervisor.statistics()
    assert snap.handler_errors == 0
    assert (running.supervisor.receiver_pid(), running.supervisor.worker_pids()) == running.pids

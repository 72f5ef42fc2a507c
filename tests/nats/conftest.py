"""Real ``nats-server`` processes with JetStream on loopback ports, and reading streams back.

Skipped with the reason when nats-server (Debian's ``nats-server`` package; ``.ci/run``
installs it) or nats-py (the ``test`` extra) is missing. Every server is stopped in the
fixture's ``finally``, its store directory removed with the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)
try:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, StreamConfig
except ImportError:  # pragma: no cover - the test extra installs it
    nats = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip every test here, with the reason, where the broker or its client is missing."""
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    if nats is None:
        pytest.skip("nats-py is not installed (pip install -e '.[test]')")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server process with JetStream; may be stopped and started again (same
    port, same store)."""

    root: Path
    name: str = "n1"
    port: int = field(default_factory=free_port)
    cluster_port: int = 0
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        assert NATS_SERVER is not None
        store = self.root / f"{self.name}-store"
        argv = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-n", self.name]
        argv += ["-js", "-sd", str(store)]
        if self.cluster_port:
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)
            argv += [
                "--cluster_name",
                "ugtest",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
            ]
            argv += ["--routes", routes]
        return argv

    def start(self) -> None:
        log = open(self.root / f"{self.name}.log", "ab")  # noqa: SIM115 (the child holds it)
        with log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"nats-server {self.name} exited: {self.log()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        pytest.fail(f"nats-server {self.name} did not listen: {self.log()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        path = self.root / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A single JetStream server on a free loopback port."""
    server = NatsServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three JetStream servers routed to each other on loopback (cluster ``ugtest``)."""
    cluster_ports = [free_port() for _ in range(3)]
    servers = [
        NatsServer(
            tmp_path, f"n{i + 1}", cluster_port=port, routes=[p for p in cluster_ports if p != port]
        )
        for i, port in enumerate(cluster_ports)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


# -- talking to JetStream from the test ------------------------------------------------------


def run(coroutine: Any) -> Any:
    """Run one coroutine to completion (each test helper opens its own connection)."""
    return asyncio.run(coroutine)


async def _connect(urls: list[str]) -> Any:
    assert nats is not None
    return await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=5)


def create_stream(
    urls: list[str],
    name: str,
    subjects: list[str],
    *,
    replicas: int = 1,
    within: float = 30.0,
    **limits: Any,
) -> None:
    """Create a stream, trying again while the cluster has no meta leader yet."""

    async def create() -> None:
        nc = await _connect(urls)
        try:
            js = nc.jetstream(timeout=5)
            deadline = time.monotonic() + within
            while True:
                try:
                    config = StreamConfig(
                        name=name,
                        subjects=subjects,
                        num_replicas=replicas,
                        duplicate_window=120.0,
                        discard=DiscardPolicy.NEW,
                        **limits,
                    )
                    await js.add_stream(config)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    run(create())


@dataclass(frozen=True)
class Stored:
    """One message read back from a stream."""

    subject: str
    data: bytes
    msg_id: str
    seq: int


def read_stream(urls: list[str], name: str, expect: int, within: float = 30.0) -> list[Stored]:
    """Every message of stream ``name``, in order, read by a pull consumer: waits until the
    stream holds ``expect`` messages (or ``within`` seconds), then reads them all."""

    async def read() -> list[Stored]:
        nc = await _connect(urls)
        try:
            js = nc.jetstream(timeout=5)
            deadline = time.monotonic() + within
            while True:
                try:
                    info = await js.stream_info(name)
                    if info.state.messages >= expect or time.monotonic() > deadline:
                        break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.2)
            while True:  # after a leader's death the cluster may need a moment
                try:
                    config = ConsumerConfig(
                        ack_policy=AckPolicy.NONE,
                        inactive_threshold=30.0,
                        mem_storage=True,
                        num_replicas=1,
                    )
                    sub = await js.pull_subscribe("", durable=None, stream=name, config=config)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            out: list[Stored] = []
            while len(out) < info.state.messages:
                try:
                    msgs = await sub.fetch(min(1000, info.state.messages - len(out)), timeout=5)
                except Exception:
                    break
                for msg in msgs:
                    headers = msg.headers or {}
                    out.append(
                        Stored(
                            msg.subject,
                            msg.data,
                            headers.get("Nats-Msg-Id", ""),
                            msg.metadata.sequence.stream,
                        )
                    )
            return out
        finally:
            await nc.close()

    result: list[Stored] = run(read())
    return result


def stream_leader(urls: list[str], name: str) -> str:
    """The server name leading stream ``name``."""

    async def leader() -> str:
        nc = await _connect(urls)
        try:
            info = await nc.jetstream(timeout=5).stream_info(name)
            assert info.cluster is not None
            return str(info.cluster.leader)
        finally:
            await nc.close()

    result: str = run(leader())
    return result


def update_stream(urls: list[str], name: str, **changes: Any) -> None:
    """Change a stream's configuration (its limits)."""

    async def update() -> None:
        nc = await _connect(urls)
        try:
            js = nc.jetstream(timeout=5)
            info = await js.stream_info(name)
            config = info.config
            for key, value in changes.items():
                setattr(config, key, value)
            await js.update_stream(config)
        finally:
            await nc.close()

    run(update())

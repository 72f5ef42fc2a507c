"""Client against plain AF_UNIX datagram sockets in this process: fast, exact, no server.

A bound socket that nobody reads is a stalled server: the kernel queues
``max_dgram_qlen + 1`` datagrams, then a sender blocks or gets EAGAIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ugram


def capacity() -> int:
    return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text()) + 1


@contextlib.contextmanager
def bound(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def drain(sock: socket.socket, size: int = 65536) -> list[bytes]:
    """Everything queued on ``sock`` now."""
    out: list[bytes] = []
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(size))
    return out


class Reader(threading.Thread):
    """Reads ``count`` datagrams from ``sock`` (after ``delay``) in the background."""

    def __init__(self, sock: socket.socket, count: int, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.sock, self.count, self.delay = sock, count, delay
        self.received: list[bytes] = []

    def run(self) -> None:
        time.sleep(self.delay)
        self.sock.settimeout(10)
        while len(self.received) < self.count:
            self.received.append(self.sock.recv(65536))


def test_drop_policy_sends_what_fits_and_counts_the_rest(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with bound(path) as server, ugram.Client(path, policy="drop") as client:
        results = [client.send(f"{i}".encode()) for i in range(100)]
        assert results == [True] * capacity() + [False] * (100 - capacity())
        assert drain(server) == [f"{i}".encode() for i in range(capacity())]
        assert client.send_many(f"m{i}".encode() for i in range(50)) == capacity()
        stats = client.statistics()
    assert (stats.sent, stats.dropped.full, stats.dropped.total) == (
        2 * capacity(),
        150 - 2 * capacity(),
        150 - 2 * capacity(),
    )
    assert stats.retries == 0


@pytest.mark.parametrize("policy", ["block", "drop", "block_with_timeout"])
def test_send_many_keeps_every_datagram_intact_and_in_order(
    sock_dir: Path, policy: ugram.client.Policy
) -> None:
    path = sock_dir / "s.sock"
    sent: list[bytes | bytearray | memoryview] = [
        os.urandom(i % 300)
        for i in range(3000)  # including empty datagrams
    ]
    sent[7], sent[8] = bytearray(b"bytearray"), memoryview(b"a memoryview")
    with bound(path) as server:
        client = ugram.Client(path, policy=policy, timeout=10)
        reader = Reader(server, len(sent) if policy != "drop" else capacity())
        reader.start()
        with client:
            done = client.send_many(sent)
        reader.join(20)
        leftover = drain(server)
    if policy == "drop":  # a racing reader: whatever was not dropped arrived, in order
        received = reader.received + leftover
        assert done == len(received) == client.statistics().sent
        assert client.statistics().dropped.full == len(sent) - done
        expected = iter(bytes(p) for p in sent)
        assert all(any(r == e for e in expected) for r in received)  # a subsequence
    else:
        assert done == len(sent) == client.statistics().sent
        assert reader.received == [bytes(p) for p in sent]


def test_kernel_emsgsize_is_a_payload_error(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with bound(path), ugram.Client(path, max_datagram=16 << 20) as client:
        with pytest.raises(ugram.PayloadTooLargeError, match="EMSGSIZE") as info:
            client.send(bytes(8 << 20))
        assert info.value.limit is None
        assert client.statistics().errors == 1
        assert client.send(b"small")  # the client is still usable


def test_block_waits_for_a_missing_server_then_sends(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    holder: list[socket.socket] = []
    threading.Timer(0.3, lambda: holder.append(bind_now(path))).start()
    with ugram.Client(path, backoff=0.005, backoff_max=0.05) as client:
        started = time.monotonic()
        assert client.send(b"late")
        waited = time.monotonic() - started
        stats = client.statistics()
    with holder[0] as server:
        assert server.recv(10) == b"late"
    assert waited >= 0.25
    assert stats.outages == 1
    assert 0.25 <= stats.unavailable_seconds <= waited + 0.01
    assert stats.retries > 0


def bind_now(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def test_wait_for_server_bounds_the_wait(sock_dir: Path) -> None:
    client = ugram.Client(sock_dir / "none.sock", wait_for_server=0.2)
    started = time.monotonic()
    with pytest.raises(ugram.ServerUnavailableError, match=r"none\.sock"):
        client.send(b"x")
    assert 0.2 <= time.monotonic() - started < 2
    assert isinstance(ugram.ServerUnavailableError("x"), ConnectionError)


def test_a_blocked_sender_moves_to_the_successor(sock_dir: Path) -> None:
    """The old server closes while the client is blocked on its full queue."""
    path = sock_dir / "s.sock"
    old = bind_now(path)
    client = ugram.Client(path, backoff=0.005)
    for i in range(capacity()):
        assert client.send(f"old {i}".encode())
    sender = threading.Thread(target=client.send, args=(b"next",))
    sender.start()
    time.sleep(0.2)
    assert sender.is_alive()  # blocked on the full queue
    path.unlink()
    old.close()  # what was queued on it is the old server's loss to count
    with bound(path) as new, client:
        sender.join(10)
        assert not sender.is_alive()
        assert new.recv(10) == b"next"
    assert client.statistics().sent == capacity() + 1


def test_buffer_close_counts_what_is_left(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with bound(path):
        client = ugram.Client(path, policy="buffer", buffer_size=100)
        assert client.send_many(b"x" for _ in range(50)) == 50
        assert not client.flush(timeout=0.1)
        started = time.monotonic()
        client.close(timeout=0.1)
        assert time.monotonic() - started < 2
    stats = client.statistics()
    assert (stats.sent, stats.buffered, stats.dropped.closed) == (capacity(), 0, 50 - capacity())
    assert client._flusher is not None
    assert not client._flusher.is_alive()


def test_request_binds_a_private_socket_file_only_the_server_can_reach(sock_dir: Path) -> None:
    """Not an abstract name (anyone may bind one once it is free, so servers refuse to reply
    to those): a socket file in a fresh directory, which takes datagrams from the server
    only, and is gone after the request."""
    path = sock_dir / "s.sock"
    seen: list[tuple[str, int, int, int, bool]] = []

    def answer(sock: socket.socket) -> None:
        data, address = sock.recvfrom(100)
        home = os.path.dirname(address)
        forged = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as intruder:
            try:
                intruder.sendto(b"forged reply", address)
            except PermissionError:  # connected to the server: datagrams from it only
                forged = False
        info = os.lstat(address)
        seen.append((address, info.st_uid, info.st_mode, os.lstat(home).st_mode, forged))
        sock.sendto(data[::-1], address)

    with bound(path) as server, ugram.Client(path) as client:
        threading.Thread(target=answer, args=(server,), daemon=True).start()
        assert client.request(b"abc", timeout=5) == b"cba"
        with pytest.raises(ugram.RequestTimeoutError):
            client.request(b"nobody answers", timeout=0.1)
        stats = client.statistics()
    ((address, uid, mode, home_mode, forged),) = seen
    assert os.path.isabs(address)
    assert os.path.realpath(address) == address
    assert stat.S_ISSOCK(mode)
    assert uid == os.geteuid()
    assert (stat.S_IMODE(home_mode), stat.S_IMODE(mode)) == (0o711, 0o622)
    assert not forged
    assert not os.path.exists(os.path.dirname(address))
    assert (stats.sent, stats.replies, stats.request_timeouts) == (2, 1, 1)


# -- AsyncClient ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_drop_and_timeout(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with bound(path) as server:
        async with ugram.AsyncClient(path, policy="drop") as client:
            assert await client.send_many(b"d" for _ in range(30)) == capacity()
            assert not await client.send(b"one more")
        assert client.statistics().dropped.full == 31 - capacity()
        drain(server)
        timed = ugram.AsyncClient(path, policy="block_with_timeout", timeout=0.05)
        async with timed:
            started = time.monotonic()
            assert await timed.send_many(b"t" for _ in range(40)) == capacity()
            assert 0.05 <= time.monotonic() - started < 1.5
        assert timed.statistics().dropped.timeout == 40 - capacity()


def numbered(prefix: int, count: int) -> list[bytes]:
    return [f"{prefix}:{i}".encode() for i in range(count)]


@pytest.mark.asyncio
async def test_async_tasks_share_the_wait_for_room(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with bound(path) as server:
        async with ugram.AsyncClient(path) as client:
            tasks = [asyncio.create_task(client.send_many(numbered(t, 40))) for t in range(5)]
            await asyncio.sleep(0.1)
            assert not any(task.done() for task in tasks)  # all waiting on one full socket
            reader = Reader(server, 200)
            reader.start()
            assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == [40] * 5
            await asyncio.to_thread(reader.join, 10)
    assert sorted(reader.received) == sorted(p for t in range(5) for p in numbered(t, 40))
    for t in range(5):  # each task's own datagrams stay in order
        assert [r for r in reader.received if r.startswith(f"{t}:".encode())] == numbered(t, 40)


@pytest.mark.asyncio
async def test_async_buffer_and_request(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with bound(path) as server:
        client = ugram.AsyncClient(path, policy="buffer", buffer_size=5, overflow="drop_newest")
        results = [await client.send(f"{i}".encode()) for i in range(30)]
        assert results == [True] * (capacity() + 5) + [False] * (25 - capacity())
        assert not await client.flush(timeout=0.05)
        reader = Reader(server, capacity() + 5)
        reader.start()
        assert await client.flush(timeout=10)
        await asyncio.to_thread(reader.join, 10)
        assert reader.received == [f"{i}".encode() for i in range(capacity() + 5)]

        def answer() -> None:
            data, address = server.recvfrom(100)
            server.sendto(data.upper(), address)

        threading.Thread(target=answer, daemon=True).start()
        assert await client.request(b"hi", timeout=5) == b"HI"
        with pytest.raises(ugram.RequestTimeoutError):
            await client.request(b"hi", timeout=0.05)
        await client.close()
    with pytest.raises(ugram.ClientClosedError):
        await client.send(b"x")
    with pytest.raises(ugram.ServerUnavailableError):
        await ugram.AsyncClient(sock_dir / "none.sock").request(b"x", timeout=0.1)

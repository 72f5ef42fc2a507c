"""ugram.Client and AsyncClient against real servers: policies, stalls, restarts, requests.

A stalled server is a SIGSTOPped receiver: the kernel queue (max_dgram_qlen + 1 datagrams)
fills and stays full, which is exactly what a sender sees when a server falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import uvloop

import ugram
import ugram.testing
from tests.apps import clientapps
from tests.conftest import Server, child_env, read_records, run_server, wait_for

SMALL = ("--ring-size", "65536", "--max-datagram", "1024")  # rings fill after ~300 records


def queue_capacity() -> int:
    """How many datagrams the kernel queues for one receiving socket."""
    return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text()) + 1


def receiver_of(server: Server) -> psutil.Process:
    """The server's receiver process, found by its title."""
    found: list[psutil.Process] = []

    def look() -> bool:
        for child in psutil.Process(server.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if " ".join(child.cmdline()).startswith("ugram: receiver"):
                    found.append(child)
                    return True
        return False

    wait_for(look, what="the receiver process")
    return found[0]


@contextlib.contextmanager
def stalled(server: Server) -> Iterator[psutil.Process]:
    """SIGSTOP the receiver for the block; always SIGCONT it."""
    receiver = receiver_of(server)
    receiver.send_signal(signal.SIGSTOP)
    wait_for(lambda: receiver.status() == psutil.STATUS_STOPPED, what="receiver stopped")
    try:
        yield receiver
    finally:
        with contextlib.suppress(psutil.Error):
            receiver.send_signal(signal.SIGCONT)


def payloads(prefix: str, count: int, start: int = 0) -> list[bytes]:
    return [f"{prefix}:{i}".encode() for i in range(start, start + count)]


def assert_exactly_once(out_dir: Path, expected: list[bytes]) -> None:
    records = read_records(out_dir)
    duplicates = [r for r, n in Counter(records).items() if n > 1]
    assert not duplicates, duplicates[:10]
    assert set(records) == {p.decode() for p in expected}


# -- block ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_block_policy_200k_into_slow_handler_loses_nothing(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    sent = payloads("b", 200_000)
    args = ("--workers", "2", *SMALL)
    with run_server("clientapps:SlowRecord", path, *args, out_dir=out_dir) as server:
        with ugram.Client(path) as client:
            for payload in sent[:100_000]:
                assert client.send(payload)
            assert client.send_many(sent[100_000:]) == 100_000
            stats = client.statistics()
        assert server.stop() == 0, server.stderr

    assert stats.sent == 200_000
    assert stats.dropped.total == 0
    assert stats.errors == 0
    summary = server.summary()
    assert summary["received"] == summary["handled"] == 200_000
    assert summary["unhandled"] == 0
    assert_exactly_once(out_dir, sent)


def test_block_policy_waits_for_a_stalled_server(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    sent = payloads("w", 2000)
    with (
        run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as server,
        ugram.Client(path) as client,
    ):
        with stalled(server):
            sender = threading.Thread(target=client.send_many, args=(sent,))
            sender.start()
            time.sleep(0.5)
            assert sender.is_alive()  # blocked: neither dropped nor raised
            assert client.statistics().sent < len(sent)
        sender.join(30)
        assert not sender.is_alive()
        assert server.stop() == 0, server.stderr
    assert client.statistics().sent == len(sent)
    assert server.summary()["handled"] == len(sent)
    assert_exactly_once(out_dir, sent)


# -- drop, block_with_timeout, buffer under a stalled server ---------------------------------


def test_drop_policy_counts_every_drop_exactly(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    sent = payloads("d", 1000)
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as server:
        with stalled(server), ugram.Client(path, policy="drop") as client:
            started = time.monotonic()
            results = [client.send(payload) for payload in sent]
            elapsed = time.monotonic() - started
        assert server.stop() == 0, server.stderr

    stats = client.statistics()
    capacity = queue_capacity()
    assert results == [True] * capacity + [False] * (len(sent) - capacity)
    assert (stats.sent, stats.dropped.full, stats.dropped.total) == (
        capacity,
        len(sent) - capacity,
        len(sent) - capacity,
    )
    assert elapsed < 2.0  # never waited
    assert server.summary()["handled"] == capacity
    assert_exactly_once(out_dir, sent[:capacity])


def test_block_with_timeout_bounds_each_call(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    capacity = queue_capacity()
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as server:
        client = ugram.Client(path, policy="block_with_timeout", timeout=0.05)
        with stalled(server), client:
            started = time.monotonic()
            one_by_one = [client.send(p) for p in payloads("t", capacity + 4)]
            each = time.monotonic() - started
            started = time.monotonic()
            assert client.send_many(payloads("m", 500)) == 0  # one timeout for the whole call
            batch = time.monotonic() - started
        assert server.stop() == 0, server.stderr

    assert one_by_one == [True] * capacity + [False] * 4
    assert 4 * 0.05 <= each < 3.0
    assert 0.05 <= batch < 1.5
    stats = client.statistics()
    assert (stats.sent, stats.dropped.timeout, stats.dropped.total) == (capacity, 504, 504)
    assert server.summary()["handled"] == capacity


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_buffer_policy_holds_then_delivers_after_sigcont(
    sock_dir: Path, out_dir: Path, overflow: ugram.client.Overflow
) -> None:
    path = sock_dir / "s.sock"
    sent = payloads("f", 2000)
    capacity, size = queue_capacity(), 500
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as server:
        client = ugram.Client(path, policy="buffer", buffer_size=size, overflow=overflow)
        with client:
            with stalled(server):
                started = time.monotonic()
                results = [client.send(payload) for payload in sent]
                assert time.monotonic() - started < 2.0  # never blocked the caller
                during = client.statistics()
                time.sleep(0.2)  # the background thread retries, nothing gets through
                assert client.statistics().sent == capacity
            assert client.flush(timeout=20)
            after = client.statistics()
        assert server.stop() == 0, server.stderr

    assert during.sent == capacity
    assert during.buffered == during.peak_buffered == size
    assert during.dropped.overflow == len(sent) - capacity - size
    assert during.dropped.total == during.dropped.overflow
    assert (after.sent, after.buffered, after.dropped.total) == (
        capacity + size,
        0,
        len(sent) - capacity - size,
    )
    assert after.retries > 0
    if overflow == "drop_oldest":
        assert results == [True] * len(sent)
        delivered = sent[:capacity] + sent[-size:]
    else:
        assert results == [True] * (capacity + size) + [False] * (len(sent) - capacity - size)
        delivered = sent[: capacity + size]
    assert server.summary()["handled"] == capacity + size
    assert_exactly_once(out_dir, delivered)


# -- server restarts --------------------------------------------------------------------------


def test_block_policy_survives_a_restart_mid_stream(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    total = 40_000
    sent = payloads("r", total)
    client = ugram.Client(path)
    sender = threading.Thread(target=lambda: [client.send(p) for p in sent])
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as first:
        sender.start()
        wait_for(lambda: client.statistics().sent >= 3000, what="3000 sent to the first")
        # The first server drains and goes. Datagrams the client sent on its connected
        # socket after the receiver's last read are stranded in the closing socket: the server
        # counts them as unhandled (exit 5). Nothing else may go missing.
        assert first.stop() in (0, 5), first.stderr
        summary_first = first.summary()
        assert (first.exit_code == 5) == (summary_first["unhandled"] > 0)
    assert sender.is_alive()  # waiting for a server, not failing
    gap_started = time.monotonic()
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir, wait=False) as second:
        # The client reconnects once the socket is bound (its workers may still be booting).
        wait_for(lambda: path.exists(), what="the second server's socket")
        gap = time.monotonic() - gap_started
        sender.join(60)
        assert not sender.is_alive()
        assert second.stop() == 0, second.stderr
        summary_second = second.summary()
    client.close()

    stats = client.statistics()
    assert stats.sent == total
    assert stats.dropped.total == 0
    assert stats.outages == 1
    assert gap <= stats.unavailable_seconds < gap + 10
    assert summary_second["handled"] > 0  # it kept sending after the new server bound
    handled = summary_first["handled"] + summary_second["handled"]
    records = read_records(out_dir)
    assert len(records) == len(set(records)) == handled
    assert set(records) <= {p.decode() for p in sent}
    # What the first server still had queued when it closed its socket is its to account.
    silent = total - handled - summary_first["unhandled"]
    assert silent >= 0
    if silent:
        pytest.xfail(
            f"server bug: {silent} datagram(s) the kernel accepted on the old server's socket "
            "after its final count were neither handled nor counted (shutdown(SHUT_RD) before "
            "the last drain would make connected senders get EPIPE instead)"
        )


@pytest.mark.parametrize("policy", ["buffer", "drop"])
def test_outage_is_buffered_or_dropped_and_accounted(
    sock_dir: Path, out_dir: Path, policy: ugram.client.Policy
) -> None:
    path = sock_dir / "s.sock"
    before, during = payloads("a", 10), payloads("b", 300)  # the 10 fit in the kernel queue
    client = ugram.Client(path, policy=policy, buffer_size=1000)
    with run_server("clientapps:Record", path, out_dir=out_dir) as first:
        assert client.send_many(before) == 10
        assert first.stop() == 0, first.stderr
        assert first.summary()["handled"] == 10
    assert [client.send(p) for p in during] == [policy == "buffer"] * 300  # nothing raised
    down = client.statistics()
    with run_server("clientapps:Record", path, out_dir=out_dir) as second:
        assert client.flush(timeout=20)
        assert client.send(b"c:0")
        client.close()
        assert second.stop() == 0, second.stderr
        handled_second = second.summary()["handled"]

    after = client.statistics()
    assert down.outages == after.outages == 1
    assert after.unavailable_seconds > down.unavailable_seconds > 0
    if policy == "buffer":
        assert (down.sent, down.buffered, down.dropped.total) == (10, 300, 0)
        assert (after.sent, after.buffered, after.dropped.total) == (311, 0, 0)
        assert handled_second == 301
        assert_exactly_once(out_dir, [*before, *during, b"c:0"])
    else:
        assert (down.sent, down.dropped.unavailable) == (10, 300)
        assert (after.sent, after.dropped.total) == (11, 300)
        assert handled_second == 1
        assert_exactly_once(out_dir, [*before, b"c:0"])


# -- requests ---------------------------------------------------------------------------------


def test_request_round_trip_and_timeout(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("clientapps:echo", path, "--workers", "2") as server, ugram.Client(path) as c:
        assert [c.request(f"ping {i}".encode()) for i in range(50)] == [
            f"PING {i}".encode() for i in range(50)
        ]
        assert c.statistics().replies == 50
        server.stop()
    silent = sock_dir / "q.sock"
    with run_server("clientapps:silent", silent) as server, ugram.Client(silent) as client:
        started = time.monotonic()
        with pytest.raises(ugram.RequestTimeoutError, match="no reply"):
            client.request(b"anyone?", timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2.0
        assert client.statistics().request_timeouts == 1
        assert isinstance(ugram.RequestTimeoutError("x"), TimeoutError)
    with pytest.raises(ugram.ServerUnavailableError):
        ugram.Client(sock_dir / "nobody.sock").request(b"x", timeout=0.2)


def test_request_with_json_codec_and_a_handler_error(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with (
        run_server("clientapps:total", path, "--codec", "json"),
        ugram.Client(path, codec="json") as client,
    ):
        assert client.request({"name": "cpu", "value": 21}) == b"cpu=42"
        with pytest.raises(ugram.RequestTimeoutError):  # the handler raised: no reply
            client.request({"name": "cpu", "value": -1}, timeout=0.3)


# -- AsyncClient ------------------------------------------------------------------------------


async def ticks_while(awaitable: object, period: float = 0.01) -> tuple[object, int]:
    """Await ``awaitable`` while counting how often another task got to run."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(period)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await awaitable  # type: ignore[misc]
    finally:
        task.cancel()
    return result, ticks


@pytest.mark.asyncio
async def test_async_client_never_blocks_the_loop(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    sent = payloads("x", 100)
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as server:
        async with ugram.AsyncClient(path) as client:
            with stalled(server):
                task = asyncio.create_task(client.send_many(sent))
                _, ticks = await ticks_while(asyncio.sleep(0.5))
                assert not task.done()  # waiting for room...
                assert ticks >= 20  # ...without blocking the event loop
                assert client.statistics().sent == queue_capacity()
            assert await asyncio.wait_for(task, 20) == len(sent)
        assert server.stop() == 0, server.stderr
    assert server.summary()["handled"] == len(sent)
    assert_exactly_once(out_dir, sent)


@pytest.mark.asyncio
async def test_async_drop_and_buffer_under_a_stall(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    capacity = queue_capacity()
    with run_server("clientapps:Record", path, *SMALL, out_dir=out_dir) as server:
        drop = ugram.AsyncClient(path, policy="drop")
        buffer = ugram.AsyncClient(path, policy="buffer", buffer_size=100)
        with stalled(server):
            assert await drop.send_many(payloads("d", 50)) == capacity
            assert await buffer.send_many(payloads("b", 50)) == 50
            assert buffer.statistics().buffered == 50
            assert not await buffer.flush(timeout=0.2)
        assert await buffer.flush(timeout=20)
        await drop.close()
        await buffer.close()
        assert server.stop() == 0, server.stderr
    assert drop.statistics().dropped.full == 50 - capacity
    assert buffer.statistics().sent == 50
    assert server.summary()["handled"] == capacity + 50
    assert_exactly_once(out_dir, payloads("d", capacity) + payloads("b", 50))


def test_async_client_on_uvloop_with_a_restart(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"

    async def scenario() -> tuple[ugram.ClientStatistics, bytes]:
        async with ugram.AsyncClient(path, policy="buffer") as client:
            assert await client.send_many(payloads("u", 100)) == 100
            assert await client.flush(timeout=10)
            await asyncio.to_thread(first.stop)
            assert await client.send_many(payloads("u", 100, start=100)) == 100
            second = await asyncio.to_thread(start_second)
            assert await client.flush(timeout=20)
            reply = await client.request(b"hello", timeout=5)
            await asyncio.to_thread(second.stop)
            return client.statistics(), reply

    with contextlib.ExitStack() as stack:
        first = stack.enter_context(run_server("clientapps:echo", path, out_dir=out_dir))

        def start_second() -> Server:
            return stack.enter_context(run_server("clientapps:echo", path, out_dir=out_dir))

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            stats, reply = runner.run(scenario())
    assert reply == b"HELLO"
    assert (stats.sent, stats.dropped.total, stats.outages) == (201, 0, 1)


# -- ugram.testing, used as a handler author would ---------------------------------------------


def test_testing_run_server_with_a_json_handler() -> None:
    with ugram.testing.run_server(clientapps.total, codec="json", workers=2) as server:
        assert server.client.request({"name": "load", "value": 1.5}) == b"load=3"
        server.client.send_many({"name": "m", "value": i} for i in range(99))
        server.client.send(b"not json")
        snap = server.wait_handled(101)
        path = Path(server.path)
        assert path.exists()
    assert (snap.handled, snap.invalid, snap.handler_errors) == (100, 1, 0)
    assert server.exit_code == 0
    assert not path.exists()
    assert not path.parent.exists()


def test_testing_run_server_reports_a_broken_handler() -> None:
    with ugram.testing.run_server("tests.apps.clientapps:no_such_handler") as server:
        server.client.send(b"x")
        with pytest.raises(RuntimeError, match="server stopped"):
            server.wait_handled(1, timeout=20)
    assert server.exit_code == 4
    with (
        pytest.raises(TypeError, match="cannot be imported"),
        ugram.testing.run_server(lambda data: None),
    ):
        pass


# -- ugram send -------------------------------------------------------------------------------


def ugram_send(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ugram", "send", *args],
        input=stdin,
        capture_output=True,
        env=child_env(),
        timeout=60,
        check=False,
    )


def test_cli_send_json_count_rate_and_stdin(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server("clientapps:Record", path, "--workers", "1", out_dir=out_dir) as server:
        json_args = ["hello", "42", '{"a": [1, 2]}', "[1,"]
        assert ugram_send("--codec", "json", str(path), *json_args).returncode == 0
        started = time.monotonic()
        load = ugram_send("--count", "1000", "--rate", "5000", str(path))
        assert load.returncode == 0, load.stderr
        assert time.monotonic() - started >= 0.2  # 1000 at 5000/s
        assert b"sent 1000 in" in load.stderr
        assert b"dropped 0" in load.stderr
        cycled = ugram_send("--count", "4", "--policy", "drop", str(path), "x", "y")
        assert cycled.returncode == 0, cycled.stderr
        assert ugram_send(str(path), stdin=b"line one\nline two\n").returncode == 0
        assert server.stop() == 0, server.stderr

    records = read_records(out_dir)
    assert records[:4] == ['"hello"', "42", '{"a":[1,2]}', '"[1,"']
    assert sorted(records[4:1004], key=int) == [str(i) for i in range(1000)]
    assert records[1004:] == ["x", "y", "x", "y", "line one", "line two"]
    assert server.summary()["handled"] == 1010


def test_cli_send_without_a_server_or_too_large(sock_dir: Path) -> None:
    missing = ugram_send(str(sock_dir / "none.sock"), "hello")
    assert missing.returncode == 1
    assert b"no ugram server is listening" in missing.stderr
    path = sock_dir / "s.sock"
    with run_server("clientapps:silent", path):
        big = ugram_send("--max-datagram", "10", str(path), "x" * 11)
    assert big.returncode == 1
    assert b"larger than max_datagram=10" in big.stderr


def test_cli_send_waits_for_a_server_with_wait(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "s.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ugram", "send", "--wait", "30", str(path), "late"],
        env=child_env(),
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.3)
        assert proc.poll() is None
        with run_server("clientapps:Record", path, out_dir=out_dir) as server:
            assert proc.wait(30) == 0
            server.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert read_records(out_dir) == ["late"]

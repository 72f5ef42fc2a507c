"""The examples in examples/, each run as a real server with real clients."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import ugram
from examples.fanout import subscribe
from tests.conftest import run_server, send, wait_for

# -- use case 3: event fan-out ------------------------------------------------------------------


def recv_json(sock: socket.socket, timeout: float = 10.0) -> object:
    sock.settimeout(timeout)
    return json.loads(sock.recv(65536))


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    """Sockets the test opened, closed at the end whatever happened."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_fanout_delivers_each_topic_to_its_subscribers_in_order(
    sock_dir: Path, closing: list[socket.socket]
) -> None:
    path = sock_dir / "events.sock"
    args = ("--codec", "json", "--route-by", "topic", "--workers", "2")
    with run_server("examples.fanout:FanOut", path, *args) as srv:
        orders = subscribe(str(path), "orders")
        both = subscribe(str(path), "orders", "alerts")
        closing += [orders, both]
        with ugram.Client(path, codec="json") as publisher:
            publisher.send_many({"topic": "orders", "id": i} for i in range(5))
            publisher.send({"topic": "alerts", "level": "high"})

            assert [recv_json(orders) for _ in range(5)] == [
                {"topic": "orders", "id": i} for i in range(5)
            ]
            got = [recv_json(both) for _ in range(6)]
            assert [e for e in got if e["topic"] == "orders"] == [
                {"topic": "orders", "id": i} for i in range(5)
            ]
            assert {"topic": "alerts", "level": "high"} in got

            orders.sendto(b'{"topic": "orders", "op": "unsubscribe"}', str(path))
            assert recv_json(orders) == {"unsubscribed": "orders"}
            publisher.send({"topic": "orders", "id": 5})
            assert recv_json(both) == {"topic": "orders", "id": 5}
            orders.setblocking(False)
            with pytest.raises(BlockingIOError):  # sent to both in one call: none came
                orders.recv(65536)

            both.close()  # a subscriber that is gone is forgotten, nothing breaks
            publisher.send({"topic": "orders", "id": 6})
            publisher.send({"topic": "orders", "id": 7})
        assert srv.stop() == 0

    summary = srv.summary()
    assert (summary["handled"], summary["handler_errors"], summary["invalid"]) == (13, 0, 0)


# -- use case 4: service registry ---------------------------------------------------------------


def ask(client: ugram.Client, **request: object) -> object:
    return json.loads(client.request(request, timeout=10))


def test_registry_answers_lookups_with_live_registrations(sock_dir: Path) -> None:
    path = sock_dir / "reg.sock"
    args = ("--codec", "json", "--route-by", "name", "--workers", "2")
    with run_server("examples.registry:Registry", path, *args) as srv:
        with ugram.Client(path, codec="json") as client:
            ask(client, op="register", name="db", address="/run/db-1.sock")
            ask(client, op="register", name="db", address="/run/db-2.sock")
            ask(client, op="register", name="cache", address="@cache", ttl=0.05)
            assert ask(client, op="lookup", name="db") == {
                "name": "db",
                "addresses": ["/run/db-1.sock", "/run/db-2.sock"],
            }
            after = ask(client, op="deregister", name="db", address="/run/db-1.sock")
            assert after == {"name": "db", "addresses": ["/run/db-2.sock"]}
            assert ask(client, op="lookup", name="none") == {"name": "none", "addresses": []}
            client.send({"op": "register", "name": "log", "address": "/l.sock"})  # no reply
            client.send({"op": "drop-table", "name": "db"})  # invalid: no reply
            assert ask(client, op="lookup", name="log") == {"name": "log", "addresses": ["/l.sock"]}
            wait_for(
                lambda: ask(client, op="lookup", name="cache")["addresses"] == [],  # type: ignore[index]
                what="the cache registration to expire",
            )
        assert srv.stop() == 0

    assert srv.summary()["invalid"] == 1


# -- use case 5: command & control --------------------------------------------------------------


def test_control_runs_commands_and_replies(sock_dir: Path) -> None:
    path = sock_dir / "ctl.sock"
    args = ("--codec", "json", "--credentials", "--allow-uid", str(os.getuid()), "--mode", "0600")
    with run_server("examples.control:Control", path, *args) as srv:
        with ugram.Client(path, codec="json") as client:

            def run(cmd: str, **args: object) -> object:
                return json.loads(client.request({"cmd": cmd, "args": args}, timeout=10))

            assert run("ping") == {"ok": True, "result": "pong"}
            assert run("echo", a=1, b=[2]) == {"ok": True, "result": {"a": 1, "b": [2]}}
            assert run("sum", values=[1, 2.5, 3]) == {"ok": True, "result": 6.5}
            assert run("whoami")["result"] == {  # type: ignore[index]
                "pid": os.getpid(),
                "uid": os.getuid(),
                "gid": os.getgid(),
            }
            assert run("sum", values=["x"]) == {
                "ok": False,
                "error": "Expected `float`, got `str` - at `$[0]`",
            }
            assert run("reboot") == {"ok": False, "error": "unknown command 'reboot'"}
            assert "ping" in run("help")["result"]  # type: ignore[index]
            with pytest.raises(ugram.RequestTimeoutError):
                client.request(b"not json", timeout=0.5)
        send(path, b'{"cmd": "ping"}').close()  # unbound: runs, no reply, no error
        assert srv.stop() == 0

    summary = srv.summary()
    assert (summary["invalid"], summary["handler_errors"]) == (1, 0)
    assert (sock_dir / "ctl.sock").exists() is False

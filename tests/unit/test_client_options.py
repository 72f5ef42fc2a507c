"""Client options, encoding and statistics records: no server, no sockets."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import ugram
from ugram.client import Drops, server_address


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"policy": "sometimes"}, "policy"),
        ({"codec": "xml"}, "codec"),
        ({"overflow": "drop_middle"}, "overflow"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"max_datagram": 0}, "max_datagram"),
        ({"backoff": 0}, "backoff"),
        ({"policy": "block_with_timeout"}, "timeout"),  # the timeout is required
        ({"policy": "block_with_timeout", "timeout": -1}, "timeout"),
    ],
)
def test_invalid_options_name_the_option(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ugram.ConfigError, match=f"client option {name}=.*expected"):
        ugram.Client("/tmp/x.sock", **options)
    with pytest.raises(ugram.ConfigError, match=f"client option {name}="):
        ugram.AsyncClient("/tmp/x.sock", **options)


def test_bytes_like_payloads_are_sent_as_they_are_whatever_the_codec() -> None:
    for codec in ("raw", "json", "msgpack"):
        client = ugram.Client("/tmp/x.sock", codec=codec)
        assert client.encode(b"\x00raw") == b"\x00raw"
        assert client.encode(bytearray(b"ba")) == bytearray(b"ba")
        assert bytes(client.encode(memoryview(b"mv"))) == b"mv"


def test_objects_are_encoded_with_the_codec() -> None:
    point = {"x": 1, "y": [2, 3]}
    assert ugram.Client("/s", codec="json").encode(point) == b'{"x":1,"y":[2,3]}'
    assert ugram.Client("/s", codec="json").encode("text") == b'"text"'
    assert ugram.Client("/s", codec="msgpack").encode(point) == msgspec.msgpack.encode(point)
    assert ugram.Client("/s").encode("héllo") == "héllo".encode()


def test_raw_codec_refuses_objects() -> None:
    with pytest.raises(TypeError, match="use codec='json' or 'msgpack'"):
        ugram.Client("/s").encode({"x": 1})


def test_oversized_payloads_raise_before_sending() -> None:
    client = ugram.Client("/nonexistent/x.sock", max_datagram=100)
    assert len(client.encode(b"x" * 100)) == 100
    with pytest.raises(ugram.PayloadTooLargeError, match=r"101 bytes .* max_datagram=100") as info:
        client.send(b"x" * 101)
    assert isinstance(info.value, ValueError)
    assert (info.value.size, info.value.limit) == (101, 100)
    with pytest.raises(ugram.PayloadTooLargeError):
        client.send_many([b"ok", b"x" * 101])
    wide = memoryview(bytes(800)).cast("Q")  # 100 items, 800 bytes: the bytes count
    with pytest.raises(ugram.PayloadTooLargeError, match="800 bytes"):
        client.encode(wide)
    with pytest.raises(ugram.PayloadTooLargeError):
        ugram.Client("/s", codec="json", max_datagram=10).send({"long": "x" * 20})
    assert client.statistics().sent == 0  # never connected: the path does not even exist


def test_statistics_are_frozen_records() -> None:
    stats = ugram.Client("/s").statistics()
    assert stats == ugram.ClientStatistics(
        sent=0,
        dropped=Drops(),
        buffered=0,
        peak_buffered=0,
        retries=0,
        errors=0,
        outages=0,
        unavailable_seconds=0.0,
        replies=0,
        request_timeouts=0,
    )
    with pytest.raises(AttributeError):
        stats.sent = 1  # type: ignore[misc]
    assert Drops(full=1, timeout=2, unavailable=3, overflow=4, closed=5, error=6).total == 21
    assert msgspec.json.decode(msgspec.json.encode(stats))["dropped"]["full"] == 0


def test_addresses() -> None:
    assert server_address("/run/app.sock") == "/run/app.sock"
    assert server_address("@app") == b"\0app"


def test_closed_client_refuses_to_send() -> None:
    client = ugram.Client("/s")
    client.close()
    client.close()  # idempotent
    assert client.closed
    with pytest.raises(ugram.ClientClosedError):
        client.send(b"x")
    with pytest.raises(ugram.ClientClosedError):
        client.request(b"x")
    assert repr(client) == "Client('/s', policy='block', closed)"

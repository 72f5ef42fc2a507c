"""ugram.testing.Harness, used as a handler author would in a unit test."""

from __future__ import annotations

import os

import msgspec
import pytest

import ugram
from tests.apps import clientapps
from ugram.ring import Record
from ugram.testing import Harness, handler_spec


def test_a_typed_handler_gets_decoded_messages_and_replies_are_recorded() -> None:
    with Harness(clientapps.total, codec="json") as h:
        assert h.send({"name": "cpu", "value": 2}) == [b"cpu=4"]
        assert h.send(b'{"name": "mem", "value": 0.5}') == [b"mem=1"]
        assert h.send({"name": "quiet", "value": 1}, sender=None) == []  # cannot reply
        assert h.replies == [b"cpu=4", b"mem=1"]
        assert h.handled == 3


def test_what_a_worker_would_count_raises_here() -> None:
    with Harness(clientapps.total, codec="json") as h:
        with pytest.raises(msgspec.ValidationError, match="Expected `float`"):
            h.send({"name": "cpu", "value": "high"})  # the server counts it as invalid
        with pytest.raises(msgspec.DecodeError):
            h.send(b"not json")
        with pytest.raises(ValueError, match="negative"):
            h.send({"name": "cpu", "value": -1})  # the server counts a handler error
        assert h.handled == 0


def test_raw_handler_and_unbound_sender() -> None:
    with Harness("tests.apps.clientapps:echo") as h:
        assert h.send(b"abc") == [b"ABC"]
        assert h.send("text") == [b"TEXT"]
        with pytest.raises(ugram.ReplyError, match="bound no address"):
            h.send(b"x", sender=None)


def test_an_abstract_sender_gets_no_reply_unless_the_server_would_allow_it() -> None:
    with (
        Harness("tests.apps.clientapps:echo") as h,
        pytest.raises(ugram.ReplyError, match="refusing to reply to @app"),
    ):
        h.send(b"x", sender="@app")
    with Harness("tests.apps.clientapps:echo", allow_abstract_replies=True) as h:
        assert h.send(b"x", sender="@app") == [b"X"]


def test_lifecycle_hooks_and_object_handlers() -> None:
    counter = clientapps.Counter()
    with Harness(counter, codec="msgpack") as h:
        assert counter.events == ["setup"]
        assert h.send({"name": "a", "value": 1}) == [b"1"]
        assert h.send({"name": "a", "value": 1}) == [b"2"]
    assert counter.events == ["setup", "teardown 2"]


def test_any_callable_works_in_process() -> None:
    seen: list[object] = []
    with Harness(lambda msg: seen.append(msg), codec="json") as h:
        h.send([1, 2, 3])
    assert seen == [[1, 2, 3]]

    def by_datagram(dgram: ugram.Datagram) -> None:
        seen.append((dgram.data, dgram.sender, dgram.pid is not None))

    Harness(by_datagram).send(b"d", sender="/tmp/sender.sock")
    assert seen[-1] == (b"d", "/tmp/sender.sock", True)


def test_bad_handlers_fail_as_at_server_start() -> None:
    with pytest.raises(ugram.HandlerImportError, match="takes 3"):
        Harness(lambda a, b, c: None)
    with pytest.raises(ugram.HandlerImportError):
        Harness("tests.apps.clientapps:missing")


def test_handler_spec_names_importable_handlers_only() -> None:
    assert handler_spec("app:handle") == "app:handle"
    assert handler_spec(clientapps.total) == "tests.apps.clientapps:total"
    assert handler_spec(clientapps.Counter) == "tests.apps.clientapps:Counter"
    with pytest.raises(TypeError, match="cannot be imported"):
        handler_spec(lambda data: None)


def test_a_handler_taking_the_ring_record_gets_one() -> None:
    seen: list[Record] = []

    def keep(data: bytes, record: Record) -> None:
        seen.append(record)

    with Harness(keep) as h:
        h.send(b"hi", sender="/run/app.sock")
    (record,) = seen
    assert (record.payload, record.address) == (b"hi", b"/run/app.sock")
    assert (record.pid, record.uid, record.gid) == (os.getpid(), os.getuid(), os.getgid())

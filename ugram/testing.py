"""What handler authors need in their own test suites.

* :func:`run_server` starts a real ugram server (supervisor, receiver, workers) on a temporary
  socket with your handler, and gives back a :class:`~ugram.Client` and a way to wait until
  N datagrams were handled::

      def test_sum(tmp_path):
          with ugram.testing.run_server("app:handle", codec="json") as server:
              server.client.send_many({"name": "x", "value": i} for i in range(100))
              snap = server.wait_handled(100)
          assert snap.handled == 100 and snap.handler_errors == 0

* :class:`Harness` calls a handler in-process, exactly as a worker would (decoded against the
  type the handler declares, with a :class:`~ugram.Datagram` whose replies are recorded), for
  fast unit tests without processes or sockets.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from typing import Any, Self

import setproctitle

from .client import Client, ClientCodec, make_encoder
from .config import ServerCodec, make_config
from .datagram import Datagram, abstract_reply_refused
from .errors import ReplyError
from .ring import Record
from .stats import Snapshot
from .supervisor import Supervisor
from .workers.handler import Handler, load_handler

TICK = 0.02
TEST_SENDER = "/run/ugram-testing/client.sock"

__all__ = ["Harness", "TestServer", "handler_spec", "run_server"]


def handler_spec(handler: object) -> str:
    """``module:attr`` for a handler given as that string or as the function/class itself.

    Raises:
        TypeError: the handler cannot be imported by name in another process (defined in
            ``__main__`` or inside a function): pass ``"module:attr"`` of an importable one.
    """
    if isinstance(handler, str):
        return handler
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        raise TypeError(
            f"{handler!r} cannot be imported by the worker processes; define it at the top "
            "level of an importable module, or pass 'module:attr'"
        )
    return f"{module}:{qualname}"


class TestServer:
    """A ugram server running in this process for a test; made by :func:`run_server`.

    Attributes:
        path: the socket path.
        client: a :class:`~ugram.Client` for it (``block`` policy, the server's codec;
            it waits at most 10 s for a server that is gone).
        supervisor: the :class:`~ugram.Supervisor`, for anything else.
        exit_code: the server's exit code once the ``with`` block has ended.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, supervisor: Supervisor, client: Client) -> None:
        self.supervisor = supervisor
        self.path = supervisor.socket_path
        self.client = client
        self.exit_code: int | None = None
        self._lock = threading.Lock()  # the ticking thread and statistics() readers
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ugram-testing", daemon=True)

    def statistics(self) -> Snapshot:
        """The server's counters now (the final ones once stopped)."""
        with self._lock:
            return self.supervisor.statistics()

    def wait_handled(self, count: int, timeout: float = 30.0) -> Snapshot:
        """Wait until ``count`` datagrams were handled or rejected (e.g. as invalid).

        Returns:
            The counters at that moment: assert on ``handled``, ``invalid``, ...

        Raises:
            TimeoutError: fewer within ``timeout`` seconds (the message gives the counters).
            RuntimeError: the server stopped (e.g. the handler could not be imported).
        """
        deadline = time.monotonic() + timeout
        while True:
            snap = self.statistics()
            if snap.handled + snap.rejected >= count:
                return snap
            if self.supervisor.is_gone:
                raise RuntimeError(
                    f"the server stopped (exit code {self.supervisor.exit_code}) after "
                    f"{snap.handled} handled; see its log above"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout:g}s for {count} datagrams: {snap.handled} handled, "
                    f"{snap.rejected} rejected, {snap.handler_errors} handler errors"
                )
            time.sleep(0.005)

    def _run(self) -> None:
        sup = self.supervisor
        while not self._stopping.wait(TICK):
            with self._lock:
                sup.tick()
                if sup.is_gone:
                    break
        with self._lock:
            sup.request_stop()  # drain within graceful_timeout, then stop
        while sup.exit_code is None:
            with self._lock:
                sup.tick()
            time.sleep(TICK)

    def _stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self.exit_code = self.supervisor.exit_code


@contextlib.contextmanager
def run_server(
    handler: object,
    *,
    codec: ServerCodec = "raw",
    workers: int = 1,
    **options: Any,
) -> Iterator[TestServer]:
    """Run a real ugram server with ``handler`` on a temporary socket for a ``with`` block.

    The workers are separate processes: they import the handler by name (``"module:attr"``
    or a top-level function/class), with this process's ``sys.path`` (set as ``PYTHONPATH``
    in this process's environment for the block's duration). On leaving the block the server
    drains and stops, the socket and its directory are removed.

    Args:
        handler: ``"module:attr"``, or an importable top-level handler function or class.
        codec: how workers decode payloads (any ``--codec``), and how ``server.client``
            encodes objects (json and msgpack encode them; every other codec sends bytes or
            str as they are).
        workers: worker processes.
        options: any other :class:`~ugram.Config` field (``max_datagram``, ``route_by``, ...).

    Raises:
        TypeError: the handler cannot be imported by name.
        ConfigError: an invalid option.
        SocketError: the socket could not be bound.
    """
    spec = handler_spec(handler)
    directory = tempfile.mkdtemp(prefix="ugram-", dir="/tmp")  # AF_UNIX paths are short
    try:
        with _serving(spec, codec, workers, directory, options) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _serving(
    spec: str, codec: ServerCodec, workers: int, directory: str, options: dict[str, Any]
) -> Iterator[TestServer]:
    options.setdefault("socket", os.path.join(directory, "test.sock"))
    config = make_config(handler=spec, codec=codec, workers=workers, **options)
    title = setproctitle.getproctitle()
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    supervisor = Supervisor(config)
    # A stopped server makes the client raise ServerUnavailableError instead of waiting forever.
    client = Client(
        config.socket,
        codec=client_codec(codec),
        max_datagram=config.max_datagram,
        wait_for_server=10.0,
    )
    try:
        supervisor.start()
        server = TestServer(supervisor, client)
        server._thread.start()
        try:
            yield server
        finally:
            client.close()
            server._stop()
    finally:
        supervisor.close()
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path
        setproctitle.setproctitle(title)


def client_codec(codec: ServerCodec) -> ClientCodec:
    """The client codec that feeds a server of ``codec``: text codecs take raw bytes."""
    return codec if codec in ("json", "msgpack") else "raw"


class _RecordingDatagram(Datagram):
    """A Datagram whose replies are recorded instead of sent."""

    __slots__ = ("allow_abstract", "replies")

    def __init__(self, data: bytes, sender: str | None, allow_abstract: bool) -> None:
        address = b"" if sender is None else os.fsencode(sender)
        if address.startswith(b"@"):
            address = b"\0" + address[1:]
        super().__init__(data, time.time_ns(), address, None, (os.getpid(), os.getuid(), 0))
        self.gid = os.getgid()
        self.allow_abstract = allow_abstract
        self.replies: list[bytes] = []

    def as_record(self) -> Record:
        """This datagram as the ring holds it, for a handler that takes the record."""
        me = os.getpid(), os.getuid(), os.getgid()  # the credentials this datagram carries
        return Record(self.data, self._address, self.received_ns, *me)

    def reply(self, payload: bytes) -> None:
        """Record ``payload``.

        Raises:
            ReplyError: the (simulated) sender bound no address, or an abstract ``@name``
                while abstract replies are not allowed (as a server would refuse it).
        """
        sender = self.sender
        if sender is None:
            raise ReplyError("the sender bound no address: it cannot receive a reply")
        if sender.startswith("@") and not self.allow_abstract:
            raise abstract_reply_refused(sender)
        self.replies.append(bytes(payload))


_registry = types.ModuleType("_ugram_testing_handlers")
_names = itertools.count()


class Harness:
    """Calls a handler in-process as a worker would, for unit tests.

    The payload is decoded against the type the handler declares (with the same msgspec
    decoder a worker builds), the handler gets a :class:`~ugram.Datagram` when it asks for
    one, and its ``reply()`` calls are recorded. ``setup()``/``teardown()`` run on entering
    and leaving the ``with`` block. Unlike in a worker, what the handler raises propagates,
    so the test sees it::

        with ugram.testing.Harness(app.handle, codec="json") as h:
            assert h.send({"x": 1, "y": 2}) == [b"3"]   # the replies to this datagram

    Attributes:
        handled: how many datagrams the handler was called with.
        replies: every reply so far, in order.
    """

    __test__ = False

    def __init__(
        self,
        handler: object,
        *,
        codec: ServerCodec = "raw",
        allow_abstract_replies: bool = False,
    ) -> None:
        """Load ``handler`` (``"module:attr"``, a function, a class or an object).

        Args:
            handler: what ``ugram serve`` would be given, or the object itself.
            codec: as the server's ``--codec`` (raw, json, msgpack, lines, syslog, statsd).
            allow_abstract_replies: as the server's option: replies to an ``@name`` sender
                are recorded instead of raising ReplyError.

        Raises:
            HandlerImportError: the handler's signature cannot be served (as at start-up).
        """
        if isinstance(handler, str):
            spec = handler
        else:
            name = f"handler_{next(_names)}"
            setattr(_registry, name, handler)
            sys.modules.setdefault(_registry.__name__, _registry)
            spec = f"{_registry.__name__}:{name}"
        self.handler: Handler = load_handler(make_config(handler=spec, codec=codec, workers=1))
        self.codec = codec
        self.handled = 0
        self.replies: list[bytes] = []
        self.allow_abstract_replies = allow_abstract_replies
        self._encode = make_encoder(client_codec(codec))

    def __enter__(self) -> Self:
        if self.handler.setup is not None:
            self.handler.setup()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.handler.teardown is not None:
            self.handler.teardown()

    def send(self, obj: object, *, sender: str | None = TEST_SENDER) -> list[bytes]:
        """Call the handler with one datagram: bytes as they are, objects encoded with the
        codec (then decoded the way a worker does).

        Args:
            obj: the payload, or an object to encode.
            sender: the address the datagram appears to come from, a path or ``@name``
                (None: an unbound sender, to which ``reply`` raises ReplyError).

        Returns:
            The replies the handler made to this datagram.

        Raises:
            msgspec.DecodeError, msgspec.ValidationError: the payload does not decode into
                the handler's type (a worker would count it as ``invalid``).
            Exception: whatever the handler raised.
        """
        data = self._payload(obj)
        handler = self.handler
        message: Any = data if handler.decode is None else handler.decode(data)
        dgram = _RecordingDatagram(data, sender, self.allow_abstract_replies)
        if handler.mode == "data":
            handler.call(message)
        elif handler.mode == "dgram":
            handler.call(dgram)
        elif handler.mode == "record":  # the ring's record: no reply through it
            handler.call(message, dgram.as_record())
        else:
            handler.call(message, dgram)
        self.handled += 1
        self.replies.extend(dgram.replies)
        return dgram.replies

    def _payload(self, obj: object) -> bytes:
        if isinstance(obj, bytes | bytearray | memoryview):
            return bytes(obj)
        if self._encode is not None:
            return self._encode(obj)
        if isinstance(obj, str):
            return obj.encode()
        raise TypeError(f"the raw codec takes bytes or str, not {type(obj).__name__}")

"""The connection to NATS, kept by an event loop in a background thread of the worker.

Why a thread: the handler runs in the worker's main thread and blocks in ``flush()`` while
JetStream acknowledges a batch; between batches (an idle worker sleeps on its ring) the
client must still answer the server's pings, reconnect and resubscribe. One loop serves
every sink of the process, so the counters it writes have one writer.

Replies. Each publish carries a reply subject under one inbox subscription of the
connection (``_INBOX.<id>.<token>``); the acknowledgement (a JSON PubAck, or a 503 status
when no stream answers) comes back there and completes the publish waiting on the token.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import uvloop

from ..logs import RateLimited
from .options import ForwardOptions, server_list

log = logging.getLogger("ugram.forward")
_warn = RateLimited(log)
T = TypeVar("T")

STATUS = "Status"
NO_RESPONDERS = "503"
PING_INTERVAL = 5  # seconds: a silent server is noticed within about three of these


class LoopThread:
    """An event loop (uvloop) running in a daemon thread, shared by the process's sinks."""

    _shared: LoopThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        """Start the thread and its loop."""
        self.loop = uvloop.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="ugram-forward", daemon=True
        )
        self.thread.start()
        ready.wait()

    @classmethod
    def shared(cls) -> LoopThread:
        """The process's loop thread, started on first use."""
        with cls._lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coroutine`` on the loop; its result comes back through the future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)


class Reply:
    """What came back for one publish: an acknowledgement, an error, or nothing yet."""

    __slots__ = ("data", "status")

    def __init__(self, data: bytes, status: str) -> None:
        self.data, self.status = data, status


class Link:
    """One NATS connection: connects (forever) in the background, routes replies.

    Runs on the loop of a :class:`LoopThread`; every method but :meth:`start` is called
    there.
    """

    def __init__(
        self,
        options: ForwardOptions,
        name: str,
        on_reply: Callable[[str, Reply], None],
        on_state: Callable[[bool], None],
    ) -> None:
        """Prepare a connection to ``options.servers`` named ``name`` (``ugram <id> worker
        <n>``, shown by the server's monitoring); ``on_reply(token, reply)`` gets each reply,
        ``on_state(connected)`` each connection change.

        Raises:
            ConfigError: a TLS file does not load.
        """
        self.options = options
        self.name = name
        self._connect_kwargs = options.connect_options()
        self._on_reply, self._on_state = on_reply, on_state
        self.nc: Any = None  # nats.aio.client.Client once connecting
        self.prefix = ""
        self._tokens = itertools.count()
        self.connected = asyncio.Event()
        self.stream_ready = False
        self.closing = False

    def new_token(self) -> str:
        """A reply token unique on this connection."""
        return str(next(self._tokens))

    async def run(self) -> None:
        """Connect (retrying forever: nats-py reconnects by itself once connected), subscribe
        to the reply inbox and make sure the stream exists."""
        while True:
            try:
                await self._connect()
                return
            except Exception as exc:  # nats-py retries by itself; this is for what it raises
                log.error("forward: cannot connect to %s: %r; retrying", self.options.servers, exc)
                await self.close(1.0)
                self.closing = False
                await asyncio.sleep(2.0)

    async def _connect(self) -> None:
        from nats.aio.client import Client

        nc = Client()
        self.nc = nc
        await nc.connect(
            servers=server_list(self.options.servers),
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works
            connect_timeout=2,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=2,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            closed_cb=self._disconnected,
            **self._connect_kwargs,
        )
        self.prefix = nc.new_inbox() + "."
        await nc.subscribe(self.prefix + "*", cb=self._reply)
        await self._reconnected()
        log.info("forward: connected to %s", nc.connected_url.netloc if nc.connected_url else "")

    async def _reply(self, msg: Any) -> None:
        token = msg.subject[len(self.prefix) :]
        status = msg.headers.get(STATUS, "") if msg.headers else ""
        self._on_reply(token, Reply(msg.data, status))

    async def _error(self, exc: Exception) -> None:
        _warn.warning("forward: NATS connection: %s", exc or type(exc).__name__)

    async def _disconnected(self) -> None:
        if self.connected.is_set():
            self.connected.clear()
            if not self.closing:
                log.warning("forward: disconnected from NATS; reconnecting")
            self._on_state(False)

    async def _reconnected(self) -> None:
        if not self.stream_ready:
            await self._ensure_stream()
        self.connected.set()
        self._on_state(True)

    async def _ensure_stream(self) -> None:
        """Create the stream if it is missing (``create_stream``); a refusal is logged and
        tried again at the next connection or publish round."""
        o = self.options
        if not o.create_stream:
            self.stream_ready = True
            return
        from nats.js.api import DiscardPolicy, StreamConfig
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream(timeout=o.ack_timeout)
        try:
            try:
                info = await js.stream_info(o.stream)
                self._check_window(info.config.duplicate_window)
            except NotFoundError:
                config = StreamConfig(
                    name=o.stream,
                    subjects=o.subjects_of_stream,
                    num_replicas=o.replicas,
                    duplicate_window=o.duplicate_window,
                    max_msgs=o.max_msgs or None,
                    max_bytes=o.max_bytes or None,
                    discard=DiscardPolicy.NEW,
                )
                await js.add_stream(config)
                log.info("forward: created stream %s (%d replica(s))", o.stream, o.replicas)
            self.stream_ready = True
        except Exception as exc:  # no JetStream, no quorum, not allowed: publishes say more
            _warn.warning("forward: cannot look up or create stream %s: %r", o.stream, exc)

    def _check_window(self, window: float | None) -> None:
        if window is not None and window < self.options.duplicate_window:
            log.warning(
                "forward: stream %s keeps message ids for %gs only (duplicate_window), less "
                "than the %gs asked: a replay after that may be stored twice",
                self.options.stream,
                window,
                self.options.duplicate_window,
            )

    async def ensure_stream(self) -> None:
        """Try again to create the stream, if an earlier try failed (a publish round found
        no stream)."""
        if not self.stream_ready and self.connected.is_set():
            await self._ensure_stream()

    async def close(self, within: float) -> None:
        """Flush what is buffered and close (at most ``within`` seconds)."""
        nc, self.closing = self.nc, True
        if nc is None or nc.is_closed:
            return
        try:
            await asyncio.wait_for(nc.close(), within)
        except (TimeoutError, Exception) as exc:  # closing: nothing left to tell
            log.debug("forward: closing the NATS connection: %r", exc)

""":class:`JetStreamSink`: what a handler calls to forward with ugram's guarantee."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from .. import context
from ..config.fields import literal_choices
from ..datagram import Datagram
from ..errors import ConfigError
from .counters import ForwardCounters
from .link import LoopThread
from .options import ForwardOptions
from .pipeline import Delivery, Outgoing, Pipeline
from .subjects import valid_subject

log = logging.getLogger("ugram.forward")

KEEP_ALIVE = 0.5  # seconds between two liveness notes while flush() waits
STALLED = 10.0  # seconds without a sign of life from the loop: stop vouching for it

_counters: ForwardCounters | None = None
_counters_lock = threading.Lock()


def _process_counters(unhealthy_after: float) -> ForwardCounters:
    """The process's one set of forwarding counters (every sink of a worker adds to it)."""
    global _counters
    with _counters_lock:
        if _counters is None:
            _counters = ForwardCounters(unhealthy_after)
        return _counters


def make_options(options: ForwardOptions | None, overrides: Mapping[str, Any]) -> ForwardOptions:
    """``options`` with ``overrides`` applied, validated.

    Raises:
        ConfigError: an unknown option or an invalid value.
    """
    values = msgspec.structs.asdict(options) if options is not None else {}
    values.update(overrides)
    try:
        return msgspec.convert(values, ForwardOptions)
    except msgspec.ValidationError as exc:
        at = str(exc).rpartition("$.")[2].rstrip("`")
        choices = literal_choices(ForwardOptions, at)
        hint = f" (use {choices})" if choices else ""
        raise ConfigError(f"invalid forwarding option: {exc}{hint}") from None


class JetStreamSink:
    """Publishes to a JetStream stream; :meth:`flush` returns once the stream has every
    message, so a batch handler that flushes before it returns acknowledges its records
    in the ring only after the broker acknowledged them.

    ::

        class App:
            def setup(self) -> None:
                self.sink = JetStreamSink(servers="nats://10.0.0.5:4222", stream="EVENTS",
                                          subject="events.app")
                self.sink.start()

            def handle_batch(self, messages: list[Event], dgrams: list[ugram.Datagram]) -> None:
                for event, dgram in zip(messages, dgrams):
                    self.sink.publish(f"events.{event.kind}", transform(event), dgram)
                self.sink.flush()

            def teardown(self) -> None:
                self.sink.close()

    Every message carries ``Nats-Msg-Id``: its datagram's :attr:`~ugram.Datagram.id`, and
    ``.N`` for the N-th further message published for the same datagram in one flush (or
    ``part=N``). A batch replayed after its worker died publishes the same ids, and the
    stream stores each one once (within its ``duplicate_window``).
    """

    def __init__(self, options: ForwardOptions | None = None, **overrides: Any) -> None:
        """Take the options (see :class:`ForwardOptions`); nothing connects until
        :meth:`start`.

        Raises:
            ConfigError: an unknown option or an invalid value.
        """
        self.options = make_options(options, overrides)
        self._queue: list[Outgoing] = []
        self._parts: dict[str, int] = {}
        self._number = 0
        self._loop: LoopThread | None = None
        self._pipeline: Pipeline | None = None

    @property
    def counters(self) -> ForwardCounters:
        """This process's forwarding counters (``ugram_forward_*``)."""
        return _process_counters(self.options.unhealthy_after)

    def start(self) -> None:
        """Start connecting in the background (call it in ``setup()``); publishes wait for
        the connection, which is retried for as long as it takes.

        Raises:
            ConfigError: a TLS file does not load.
        """
        if self._pipeline is not None:
            return
        counters = _process_counters(self.options.unhealthy_after)
        name = f"ugram {context.server_id() or 'standalone'} worker {context.worker_index()}"
        self._pipeline = Pipeline(self.options, counters, name)
        self._loop = LoopThread.shared()
        self._loop.submit(self._pipeline.start()).result()

    def publish(
        self,
        subject: str,
        data: bytes,
        dgram: Datagram | None = None,
        *,
        part: int | None = None,
        msg_id: str | None = None,
    ) -> None:
        """Queue one message for the next :meth:`flush`.

        Args:
            subject: where to publish (the stream must capture it).
            data: the payload.
            dgram: the datagram it comes from: its id names the message.
            part: which message of that datagram this is (default: counted per datagram
                in this flush: 0, 1, 2, ...). The same datagram must give the same parts
                in the same order on a replay.
            msg_id: the message id instead of one from ``dgram``.

        Raises:
            ValueError: an invalid subject, or no id (neither ``dgram`` from a worker's
                ring nor ``msg_id``).
        """
        if not valid_subject(subject):
            raise ValueError(f"not a subject one can publish to: {subject!r}")
        received = time.time_ns()
        if msg_id is None:
            if dgram is None or dgram.id is None:
                raise ValueError("publish() needs dgram= (a Datagram a worker gave) or msg_id=")
            msg_id, received = self._part_id(dgram.id, part), dgram.received_ns
        self._number += 1
        self._queue.append(Outgoing(subject, bytes(data), msg_id, self._number, received))

    def _part_id(self, base: str, part: int | None) -> str:
        if part is None:
            part = self._parts.get(base, 0)
        self._parts[base] = part + 1
        return f"{base}.{part}" if part else base

    def flush(self) -> Delivery:
        """Block until every queued message is acknowledged by the stream, or given up by
        the policy (counted). While it waits, it tells the worker's liveness check that it
        is waiting on purpose.

        Returns:
            What became of the messages (acknowledged, duplicates among them, dropped).

        Raises:
            SystemExit: only in a worker whose supervisor has died (the process exits).
        """
        batch, self._queue, self._parts = self._queue, [], {}
        if not batch:
            return Delivery()
        if self._pipeline is None or self._loop is None:
            self.start()
        assert self._pipeline is not None
        assert self._loop is not None
        while True:
            future = self._loop.submit(self._pipeline.deliver(batch))
            try:
                return self._wait(future)
            except Exception:  # the loop thread is gone: start another, deliver again
                log.exception("forward: delivery failed; trying again")
                time.sleep(KEEP_ALIVE)
                context.shed_new(self._pipeline, False)  # its loop cannot say so any more
                self._pipeline, self._loop = None, None
                self.start()
                assert self._pipeline is not None
                assert self._loop is not None

    def _wait(self, future: concurrent.futures.Future[Delivery]) -> Delivery:
        assert self._pipeline is not None
        while True:
            try:
                return future.result(KEEP_ALIVE)
            except concurrent.futures.TimeoutError:
                if context.orphaned():  # the rings died with the supervisor: nothing to wait for
                    log.error("forward: the supervisor is gone; worker exiting")
                    raise SystemExit(0) from None
                idle = (time.monotonic_ns() - self._pipeline.activity_ns) / 1e9
                if idle < STALLED:  # else let the worker be judged stuck (and replaced)
                    context.keep_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection (call it in ``teardown()``); what was queued and not
        flushed is not sent."""
        if self._pipeline is None or self._loop is None:
            return
        try:
            self._loop.submit(self._pipeline.link.close(timeout)).result(timeout + 1)
        except Exception as exc:  # closing: nothing is lost by a failure here
            log.debug("forward: close: %r", exc)
        self._pipeline = None

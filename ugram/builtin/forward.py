"""``ugram.builtin:Forward``: every datagram into a NATS JetStream stream, acknowledged in the
ring only once the stream acknowledged it (see :mod:`ugram.forward`)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ..datagram import Datagram
from ..errors import ConfigError
from ..forward import ForwardOptions, JetStreamSink
from ..logs import RateLimited
from .options import load_options
from .record import encode

log = logging.getLogger("ugram.builtin.forward")
_warn = RateLimited(log)


class Forward:
    """Publish each message to JetStream: the datagram's bytes as they came (``raw``,
    ``json``, ``msgpack``; a line of ``lines``), or the decoded message as JSON (``syslog``,
    ``statsd``).

    The subject is ``UGFORWARD_SUBJECT``: fixed, or a template such as ``logs.{service}``
    filled from a top-level field of a json or msgpack payload; a message whose field is
    missing, or not one valid subject token, goes to ``UGFORWARD_FALLBACK_SUBJECT`` and is
    counted (``ugram_forward_unrouted_total``). Undecodable payloads never reach it: the
    worker counts them as invalid.

        UGFORWARD_SERVERS=nats://10.0.0.5:4222 UGFORWARD_SUBJECT='logs.{service}' \\
            ugram serve ugram.builtin:Forward --codec json --socket /run/app/logs.sock
    """

    def __init__(self, **options: Any) -> None:
        """Read the options: keyword arguments > ``UGFORWARD_*`` variables > the file named
        by ``UGFORWARD_CONFIG`` > defaults (see :class:`ugram.forward.ForwardOptions`).

        Raises:
            ConfigError: an invalid or unknown option, a TLS file that does not load, or
                nats-py is not installed.
        """
        try:
            import nats  # noqa: F401
        except ImportError:
            raise ConfigError(
                "ugram.builtin:Forward needs nats-py: pip install 'ugram[nats]'"
            ) from None
        self.options = load_options("UGFORWARD_", ForwardOptions, options)
        self.options.connect_options()  # the TLS files load, or the server stops now (exit 4)
        self.batch_size = self.options.batch  # records per batch (0: the server's)
        self._template = self.options.template
        self._fallback = self.options.fallback
        self.sink = JetStreamSink(self.options)

    def setup(self) -> None:
        """Start connecting (in the background: an unreachable broker is waited for)."""
        self.sink.start()

    def handle_batch(self, messages, dgrams: list[Datagram]) -> None:  # type: ignore[no-untyped-def]
        """Publish the batch and return once the stream has all of it (``messages`` is
        untyped on purpose: it takes whatever the codec gives)."""
        template = self._template
        for message, dgram in zip(messages, dgrams, strict=True):
            subject = template.text if template.fixed else template.render(message)
            if subject is None:
                subject = self._unrouted(message)
            self.sink.publish(subject, _payload(message, dgram), dgram)
        self.sink.flush()

    def _unrouted(self, message: object) -> str:
        self.sink.counters.unrouted.inc()
        if isinstance(message, bytes):
            _warn.warning(
                "Forward: subject %r takes fields from the payload: serve with --codec json "
                "or msgpack; sending to %s",
                self._template.text,
                self._fallback,
            )
        else:
            _warn.warning(
                "Forward: a message has no valid %s for subject %r; sending it to %s",
                " / ".join(self._template.fields),
                self._template.text,
                self._fallback,
            )
        return self._fallback

    def teardown(self) -> None:
        """Close the connection (every batch was flushed before it was acknowledged)."""
        self.sink.close()


def _payload(message: object, dgram: Datagram) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, msgspec.Struct):  # parsed by a ugram codec: syslog, statsd
        try:
            return encode(message)
        except (TypeError, ValueError, OverflowError):
            return dgram.data
    return dgram.data  # decoded json or msgpack: forward the bytes as they came

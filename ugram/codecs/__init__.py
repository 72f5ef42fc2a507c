"""The codecs beyond msgspec's raw/json/msgpack: ``lines``, ``syslog`` and ``statsd``.

Each module has a ``make_decoder(message_type, speedups)`` building, once per worker, the
function that turns a payload into the handler's argument (compiled where :mod:`.native` has
it and ``speedups`` is on); the worker calls it (and counts what it raises as
``invalid``) exactly as it does for json and msgpack. ``lines`` and ``statsd`` carry several
messages per datagram: their decoders return a list, and :func:`fan_out` wraps the handler so
that it is called once per message while the worker still counts one ``handled`` datagram.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import HandlerImportError
from . import lines, statsd, syslog
from .base import CodecError as CodecError
from .base import Decode
from .base import take_invalid_lines as take_invalid_lines
from .statsd import Event as Event
from .statsd import Line as Line
from .statsd import Metric as Metric
from .statsd import ServiceCheck as ServiceCheck
from .syslog import SyslogMessage as SyslogMessage

__all__ = [
    "CODECS",
    "MULTI_MESSAGE",
    "CodecError",
    "Event",
    "Line",
    "Metric",
    "ServiceCheck",
    "SyslogMessage",
    "fan_out",
    "handles",
    "make_decoder",
    "take_invalid_lines",
]

# name -> (decoder factory, the message type its handlers take)
CODECS: dict[str, tuple[Callable[[Any, bool], Decode | None], Any]] = {
    lines.NAME: (lines.make_decoder, bytes),
    syslog.NAME: (syslog.make_decoder, SyslogMessage),
    statsd.NAME: (statsd.make_decoder, Line),
}
MULTI_MESSAGE = frozenset({lines.NAME, statsd.NAME})


def handles(message_type: Any, codec: str) -> bool:
    """True when this package builds the decoder: one of its codecs, or one of its message
    types asked for with ``--codec raw`` (then :func:`make_decoder` says which codec to use)."""
    return codec in CODECS or (codec == "raw" and _owner(message_type) is not None)


def make_decoder(message_type: Any, codec: str, speedups: bool = True) -> Decode | None:
    """Build the decoder of ``codec`` for a handler taking ``message_type`` (with the
    compiled parsers where ``speedups`` and built: :mod:`ugram.codecs.native`).

    Returns:
        ``decode(payload)``, giving one message, or a list of messages for the
        :data:`MULTI_MESSAGE` codecs; None when the handler takes the raw bytes.

    Raises:
        HandlerImportError: the handler's type does not fit the codec (the message names the
            codec to use).
    """
    if codec not in CODECS:
        owner = _owner(message_type)
        raise HandlerImportError(
            f"the handler takes {message_type!r}, which needs --codec {owner} (codec is {codec!r})"
        )
    factory, _ = CODECS[codec]
    return factory(message_type, speedups)


def _owner(message_type: Any) -> str | None:
    for name, (_, owned) in CODECS.items():
        if owned is not bytes and message_type == owned:
            return name
    return None


def fan_out(call: Callable[..., Any], mode: str, batch: bool) -> Callable[..., Any]:
    """Wrap a handler so that a decoded list of messages reaches it one message at a time.

    Every message is delivered even when the handler raises for one of them; the first
    exception is then raised again, once, so the worker counts one handler error for the
    datagram. A batch handler gets the messages of all its datagrams as one flat list (and
    each message's Datagram, repeated for messages of the same datagram).
    """
    if batch:
        return _batch_fan_out(call, mode)

    def each(messages: list[Any], *dgram: Any) -> None:
        first: Exception | None = None
        for message in messages:
            try:
                call(message, *dgram)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    return each


def _batch_fan_out(call: Callable[..., Any], mode: str) -> Callable[..., Any]:
    def flat(batches: list[list[Any]], *dgrams: list[Any]) -> None:
        messages = [message for messages in batches for message in messages]
        if mode != "both":
            call(messages)
            return
        repeated = [d for ms, d in zip(batches, dgrams[0], strict=True) for _ in ms]
        call(messages, repeated)

    return flat

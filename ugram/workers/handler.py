"""Loading the user's handler and adapting it to one call per record.

Accepted forms, found by looking at the handler's signature once at start-up:

* ``def handle(data: bytes)`` — the raw payload;
* ``def handle(msg: T)`` — ``T`` any type msgspec decodes (a Struct, dict, list, ...),
  decoded with the configured codec by one decoder built at start-up;
* an optional second parameter receives the :class:`~ugram.Datagram` (sender, time, reply);
  ``def handle(dgram: Datagram)`` alone receives only it;
* a class (instantiated with no arguments) or an object with a ``handle`` method, with
  optional ``setup()`` and ``teardown()`` methods, and ``tick()`` called about every
  ``tick_interval`` seconds (default 1.0) between records — the place to flush;
* batches: a ``handle_batch(msgs: list[T])`` method, or a function marked with
  :func:`batch`, receives every record available at once (up to the worker's batch size);
  an optional second parameter receives the list of :class:`~ugram.Datagram`;
* a second parameter annotated :class:`ugram.ring.Record` (``list[Record]`` for a batch)
  receives the ring's record itself instead of a Datagram: the payload, the sender's raw
  address, the receive time in ns and the credentials (``uid == gid == -1`` when none were
  collected), and no ``reply``. It costs the worker no object a record; the built-in
  ``LogSink`` and ``StatsdAggregator`` take it. Such a batch handler of a codec with several
  messages a datagram (``lines``, ``statsd``) that takes ``list[list[T]]`` gets each
  datagram's list of messages beside its record, not one flat list.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..config import Config
from ..datagram import Datagram
from ..errors import ConfigError, HandlerImportError
from ..ring import Record

Decode = Callable[[bytes], Any]
MSGSPEC_CODECS = frozenset({"raw", "json", "msgpack"})  # the others are in ugram.codecs


@dataclass(frozen=True)
class Handler:
    """A loaded handler, ready to call once per record.

    Attributes:
        call: the function or bound method to call.
        decode: turns the payload into the handler's first argument; None passes bytes.
        mode: ``"data"`` (message only), ``"both"`` (message, Datagram), ``"dgram"``
            (Datagram only), ``"record"`` (message, the ring's :class:`Record`).
        setup, teardown: lifecycle hooks, or None.
        batch: the handler takes lists of messages (and of Datagrams).
        tick, tick_interval: periodic hook and its period in seconds.
        batch_size: records per batch the handler asks for (``batch_size`` attribute of a
            handler object; 0: the server's ``batch_size``).
    """

    call: Callable[..., Any]
    decode: Decode | None
    mode: str
    setup: Callable[[], Any] | None
    teardown: Callable[[], Any] | None
    batch: bool = False
    tick: Callable[[], Any] | None = None
    tick_interval: float = 1.0
    batch_size: int = 0

    @property
    def wants_datagram(self) -> bool:
        """True when the handler takes a :class:`Datagram` (and so may reply)."""
        return self.mode in ("both", "dgram")


def import_target(spec: str) -> Any:
    """Import ``module:attr`` (attr may be dotted).

    Raises:
        HandlerImportError: the module or attribute cannot be found, or importing it failed.
    """
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like gunicorn: handlers live beside where ugram is started
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerImportError(f"cannot import handler module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise HandlerImportError(
            f"importing handler module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return target


def load_handler(config: Config) -> Handler:
    """Import and adapt the configured handler.

    Raises:
        HandlerImportError: import failed, or the handler's signature cannot be served.
    """
    target = import_target(config.handler)
    if inspect.isclass(target):
        try:
            target = target()
        except ConfigError as exc:  # a built-in's bad option: name it, not an import failure
            raise HandlerImportError(f"bad option for {config.handler}: {exc}") from exc
        except Exception as exc:
            raise HandlerImportError(
                f"handler class {config.handler} could not be instantiated: {exc!r}"
            ) from exc
    call, is_batch = _entry_point(target, config.handler)
    mode, message_type = _signature(call, config.handler)
    if is_batch:
        message_type = _element_type(message_type, config.handler)
    per_datagram = _per_datagram(mode, is_batch, message_type, config.codec)
    if per_datagram:
        message_type = _element_type(message_type, config.handler)
    decode = None if mode == "dgram" else make_decoder(message_type, config.codec, config.speedups)
    if decode is not None and _uses_codecs(config.codec) and not per_datagram:
        from .. import codecs

        if config.codec in codecs.MULTI_MESSAGE:  # one call per message of a datagram
            # fan_out passes the second argument (a Datagram or a Record) along as it is
            call = codecs.fan_out(call, "both" if mode == "record" else mode, is_batch)
    return Handler(
        call=call,
        decode=decode,
        mode=mode,
        setup=_hook(target, "setup"),
        teardown=_hook(target, "teardown"),
        batch=is_batch,
        tick=_hook(target, "tick"),
        tick_interval=float(getattr(target, "tick_interval", 1.0)),
        batch_size=_batch_size(target, config.handler),
    )


def _batch_size(target: Any, spec: str) -> int:
    if inspect.isroutine(target):
        return 0
    size = getattr(target, "batch_size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HandlerImportError(f"{spec}.batch_size must be a whole number >= 0, not {size!r}")
    return size


BATCH_MARK = "__ugram_batch__"


def batch(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a handler function as taking a list of messages (and optionally of Datagrams)."""
    setattr(function, BATCH_MARK, True)
    return function


def _entry_point(target: Any, spec: str) -> tuple[Callable[..., Any], bool]:
    if inspect.isroutine(target):
        return target, bool(getattr(target, BATCH_MARK, False))
    for name, is_batch in (("handle_batch", True), ("handle", False)):
        call = getattr(target, name, None)
        if callable(call):
            return call, is_batch
    raise HandlerImportError(
        f"{spec} is neither a function nor an object with a handle() or handle_batch() method"
    )


def _per_datagram(mode: str, is_batch: bool, message_type: Any, codec: str) -> bool:
    """True for a ``"record"`` batch handler of a several-messages-a-datagram codec that
    takes ``list[list[T]]``: it gets each datagram's list as decoded, none flattened."""
    if mode != "record" or not is_batch or typing.get_origin(message_type) is not list:
        return False
    if not _uses_codecs(codec):
        return False
    from .. import codecs

    return codec in codecs.MULTI_MESSAGE


def _element_type(list_type: Any, spec: str) -> Any:
    if list_type is inspect.Parameter.empty:
        return list_type
    if typing.get_origin(list_type) is list:
        args = typing.get_args(list_type)
        return args[0] if args else Any
    raise HandlerImportError(f"batch handler {spec} must take list[T]; it takes {list_type!r}")


def _hook(target: Any, name: str) -> Callable[[], Any] | None:
    if inspect.isroutine(target):
        return None
    hook = getattr(target, name, None)
    return hook if callable(hook) else None


def _signature(call: Callable[..., Any], name: str) -> tuple[str, Any]:
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return "data", inspect.Parameter.empty
    if not params or len(params) > 2:
        raise HandlerImportError(
            f"handler {name} must take (message) or (message, dgram); it takes {len(params)}"
        )
    try:
        hints = typing.get_type_hints(call)
    except Exception as exc:
        raise HandlerImportError(f"cannot resolve the type hints of {name}: {exc}") from exc
    first = hints.get(params[0].name, inspect.Parameter.empty)
    if len(params) == 1:
        return ("dgram" if first is Datagram else "data"), first
    second = hints.get(params[1].name)
    return ("record" if second in _RECORD_HINTS else "both"), first


_RECORD_HINTS = (Record, list[Record])  # the second parameter's, for mode "record"


def make_decoder(message_type: Any, codec: str, speedups: bool = True) -> Decode | None:
    """Build the payload decoder for a handler's declared message type (``speedups``: with
    the compiled parsers of :mod:`ugram.codecs.native` where built).

    Raises:
        HandlerImportError: the type cannot be decoded with this codec.
    """
    if _uses_codecs(codec):
        from .. import codecs

        if codecs.handles(message_type, codec):  # lines, syslog, statsd: see ugram/codecs
            return codecs.make_decoder(message_type, codec, speedups)
    if message_type in (bytes, inspect.Parameter.empty) and codec == "raw":
        return None
    if message_type is bytes:
        return None
    if message_type is inspect.Parameter.empty:
        message_type = Any
    if codec == "raw":
        if message_type is str:
            return _utf8
        raise HandlerImportError(
            f"the handler takes {message_type!r} but codec is 'raw'; "
            "use --codec json or msgpack, or take bytes"
        )
    try:
        decoder: Any = (
            msgspec.json.Decoder(message_type)
            if codec == "json"
            else msgspec.msgpack.Decoder(message_type)
        )
    except TypeError as exc:
        raise HandlerImportError(f"msgspec cannot decode {message_type!r}: {exc}") from exc
    decode: Decode = decoder.decode
    return decode


def _uses_codecs(codec: str) -> bool:
    """True where :mod:`ugram.codecs` may build the decoder: one of its codecs, or one of its
    message types (a handler that declares one has imported it). A worker decoding with
    msgspec alone then imports none of the codecs."""
    return codec not in MSGSPEC_CODECS or "ugram.codecs" in sys.modules


def _utf8(payload: bytes) -> str:
    return payload.decode("utf-8")


DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError)

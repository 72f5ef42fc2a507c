"""The client's options: their types, their checks, and how objects become datagrams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, get_args

import msgspec

from ..errors import ConfigError

Policy = Literal["block", "block_with_timeout", "buffer", "drop"]
Overflow = Literal["drop_oldest", "drop_newest"]
ClientCodec = Literal["raw", "json", "msgpack"]
Payload = bytes | bytearray | memoryview

DEFAULT_MAX_DATAGRAM: Final = 65536  # the server's default max_datagram


def check_options(
    codec: str,
    policy: str,
    timeout: float | None,
    buffer_size: int,
    overflow: str,
    max_datagram: int,
    backoff: float,
) -> None:
    """Check a client's options.

    Raises:
        ConfigError: naming the first invalid option, its value and what is allowed.
    """
    checks = [
        (codec in get_args(ClientCodec), "codec", codec, "raw, json or msgpack"),
        (
            policy in get_args(Policy),
            "policy",
            policy,
            "block, block_with_timeout, buffer or drop",
        ),
        (overflow in get_args(Overflow), "overflow", overflow, "drop_oldest or drop_newest"),
        (buffer_size >= 1, "buffer_size", buffer_size, "an integer >= 1"),
        (max_datagram >= 1, "max_datagram", max_datagram, "an integer >= 1"),
        (backoff > 0, "backoff", backoff, "a number of seconds > 0"),
        (
            policy != "block_with_timeout" or (timeout is not None and timeout >= 0),
            "timeout",
            timeout,
            "a number of seconds >= 0 with policy block_with_timeout",
        ),
    ]
    for ok, name, value, allowed in checks:
        if not ok:
            raise ConfigError(f"client option {name}={value!r} is invalid: expected {allowed}")


def make_encoder(codec: ClientCodec) -> Callable[[Any], bytes] | None:
    """The encoder for objects that are not already bytes; None for ``raw``."""
    if codec == "json":
        return msgspec.json.Encoder().encode
    if codec == "msgpack":
        return msgspec.msgpack.Encoder().encode
    return None


def nbytes(data: Payload) -> int:
    """The size of a payload in bytes (a memoryview's items may be wider than one byte)."""
    return data.nbytes if isinstance(data, memoryview) else len(data)

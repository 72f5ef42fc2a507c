"""Picking a worker for each datagram: round-robin, or by the hash of one field's value."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import msgspec

from ..config import Config

Router = Callable[[memoryview, int], int | None]


def make_router(config: Config) -> Router | None:
    """Return ``route(payload, workers)`` giving a worker index, or None for round-robin.

    The router decodes only the ``route_by`` field (a Struct holding just it; every other
    field is skipped) and hashes its encoded value with CRC-32, a hash that is stable across
    processes and restarts, unlike ``hash()``. It returns None when the payload is not
    decodable or lacks the field: the receiver counts that datagram as invalid.
    """
    if config.route_by is None:
        return None
    key_type = msgspec.defstruct("RouteKey", [("key", Any)], rename={"key": config.route_by})
    decode = (
        msgspec.json.Decoder(key_type).decode
        if config.codec == "json"
        else msgspec.msgpack.Decoder(key_type).decode
    )
    encode = msgspec.msgpack.encode

    def route(payload: memoryview, workers: int) -> int | None:
        try:
            value = decode(payload).key  # type: ignore[attr-defined]
        except (msgspec.DecodeError, RecursionError):
            return None
        return zlib.crc32(encode(value)) % workers

    return route

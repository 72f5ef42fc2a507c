"""A strictly typed handler for the fuzz tests: anything that is not an Event is invalid."""

from __future__ import annotations

import msgspec


class Event(msgspec.Struct):
    name: str
    value: int


def strict(msg: Event) -> None:
    """Accepts only well-formed events; never raises."""
    assert isinstance(msg.value, int)

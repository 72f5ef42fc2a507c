"""Subjects: a fixed one, or a template filled from a message's top-level fields."""

from __future__ import annotations

import re
from typing import Any

# A subject token ugram accepts from a payload: printable ASCII, none of what NATS gives a
# meaning to (".", "*", ">", whitespace). Strict on purpose: a sender chooses these bytes.
TOKEN = re.compile(r"[A-Za-z0-9_\-:=@+%~!#$&^|,;()\[\]'`]{1,128}", re.ASCII)
# What a subject given in code may hold: any token without whitespace, control characters
# or a wildcard character.
_CODE_TOKEN = re.compile(r"[^\s.*>\x00-\x1f\x7f]+")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WILDCARD = frozenset({"*", ">"})


class Template:
    """``logs.{service}.{level}``: fixed tokens, and tokens that name a payload field.

    A field's value must be a string (or an integer) that is one valid token; anything else
    makes :meth:`render` return None (the caller sends the message to its fallback subject
    and counts it).
    """

    def __init__(self, text: str, *, wildcards: bool = False, fields_allowed: bool = True) -> None:
        """Parse ``text``; ``wildcards``: ``*`` and ``>`` tokens allowed (a stream's subjects).

        Raises:
            ValueError: an empty token, a token that is neither valid nor one whole
                ``{field}``, a wildcard where none is allowed, or a field where none is.
        """
        self.text = text
        self.parts: list[str | None] = []  # a fixed token, or None for a field
        self.fields: list[str] = []
        for token in text.split("."):
            field = _FIELD.fullmatch(token)
            if field is not None and fields_allowed:
                self.parts.append(None)
                self.fields.append(field.group(1))
            elif TOKEN.fullmatch(token) or (wildcards and token in _WILDCARD):
                self.parts.append(token)
            else:
                raise ValueError(f"subject {text!r}: {token!r} is not a valid subject token")
        if wildcards and ">" in self.parts[:-1]:
            raise ValueError(f"subject {text!r}: '>' may only be the last token")

    @property
    def fixed(self) -> bool:
        """True when no token comes from the payload."""
        return not self.fields

    def render(self, message: Any) -> str | None:
        """The subject for ``message`` (a decoded json or msgpack value), or None when a
        field is missing or its value is not one valid token."""
        if self.fixed:
            return self.text
        if not isinstance(message, dict):
            return None
        values = iter(self.fields)
        out: list[str] = []
        for part in self.parts:
            if part is not None:
                out.append(part)
                continue
            value = message.get(next(values))
            if isinstance(value, bool) or not isinstance(value, str | int):
                return None
            token = str(value)
            if not TOKEN.fullmatch(token):
                return None
            out.append(token)
        return ".".join(out)

    def fill_all(self, token: str) -> str:
        """The template with every field replaced by ``token`` (``*``: what it can match)."""
        return ".".join(token if part is None else part for part in self.parts)


def valid_subject(subject: str) -> bool:
    """True for a subject a message may be published to: no empty token, no whitespace,
    control character or wildcard."""
    return all(_CODE_TOKEN.fullmatch(token) for token in subject.split("."))

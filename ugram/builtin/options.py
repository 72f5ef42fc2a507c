"""Options of the built-in handlers: keyword arguments, ``<PREFIX><OPTION>`` environment
variables, and a TOML or JSON file named by ``<PREFIX>CONFIG``."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from ..config.fields import literal_choices
from ..errors import ConfigError

O = TypeVar("O", bound=msgspec.Struct)  # noqa: E741


def load_options(
    prefix: str, kind: type[O], overrides: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> O:
    """Build a handler's options: ``overrides`` > ``<prefix><OPTION>`` variables > the file
    named by ``<prefix>CONFIG`` (TOML, or JSON if it ends in ``.json``) > defaults.

    Raises:
        ConfigError: an unreadable file, an unknown option, or an invalid value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if env.get(prefix + "CONFIG"):
        values.update(_read_options(env[prefix + "CONFIG"]))
    names = set(kind.__struct_fields__)
    lists = _list_fields(kind)
    for key, value in env.items():
        if key.startswith(prefix) and key != prefix + "CONFIG":
            name = key[len(prefix) :].lower()
            if name not in names:
                raise ConfigError(f"unknown option {key} (options: {', '.join(sorted(names))})")
            # a list in a variable: comma-separated (UGSTATSD_BUCKETS=0.1,0.5,1)
            values[name] = [v.strip() for v in value.split(",")] if name in lists else value
    values.update(overrides)
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(prefix, str(exc), values, kind)) from None


def _list_fields(kind: type[msgspec.Struct]) -> set[str]:
    """The options whose value is a list or tuple."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    return {
        f.name
        for f in info.fields
        if isinstance(_unwrap(f.type), msgspec.inspect.ListType | msgspec.inspect.VarTupleType)
    }


def _unwrap(t: msgspec.inspect.Type) -> msgspec.inspect.Type:
    # Annotated[...] with constraints, and "X | None", around the list
    if isinstance(t, msgspec.inspect.UnionType):
        inner = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
        return inner[0] if len(inner) == 1 else t
    return t


_AT_FIELD = re.compile(r" - at `\$\.(\w+)")


def _explain(
    prefix: str, message: str, values: Mapping[str, Any], kind: type[msgspec.Struct]
) -> str:
    """One line naming the option as the user set it (``UGSINK_MAX_BYTES``) and its value
    (and, for one of a few words, which they are)."""
    at = _AT_FIELD.search(message)
    if at is None:
        return f"invalid {prefix}* option: {message}"
    name = at.group(1)
    choices = literal_choices(kind, name)
    return (
        f"invalid value for {prefix}{name.upper()} (option {name}): "
        f"{values.get(name)!r}: {message[: at.start()]}" + (f" (use {choices})" if choices else "")
    )


def _read_options(path: str) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
        parsed = (
            msgspec.json.decode(data) if path.endswith(".json") else tomllib.loads(data.decode())
        )
    except OSError as exc:
        raise ConfigError(f"cannot read options file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError, msgspec.DecodeError
        raise ConfigError(f"options file {path} does not parse: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"options file {path} must hold a table of options")
    return parsed

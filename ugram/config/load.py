"""Loading: CLI values, ``UGRAM_*`` variables and a TOML file merged into one :class:`Config`.

Values are merged with the precedence CLI > environment > file > default, each value's source
kept for ``ugram config``, and validated by ``msgspec.convert`` (``Struct.__init__`` alone does
not validate); a validation error becomes one line naming the option, the value and what is
allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .. import portable
from ..errors import ConfigError
from .schema import Config, field_allowed, field_names, list_fields
from .values import invalid_value

ENV_PREFIX = "UGRAM_"
# UGRAM_ variables that are not options: the config file, and the platform profile
# (ugram.portable), which every process reads, clients included.
_NOT_OPTIONS = frozenset((ENV_PREFIX + "CONFIG", portable.ENV))


@dataclass(frozen=True)
class Resolved:
    """A validated config and, for each field, where its value came from."""

    config: Config
    sources: Mapping[str, str]


def make_config(**values: Any) -> Config:
    """Validate ``values`` (field name → value, strings allowed) into a :class:`Config`.

    Raises:
        ConfigError: one line naming the field, the value and what is allowed.
    """
    return _convert(values)


def load_config(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> Resolved:
    """Merge CLI values, ``UGRAM_*`` variables and a TOML file (in that precedence).

    ``env`` defaults to ``os.environ``; ``UGRAM_CONFIG`` names a file when ``file`` is None.

    Raises:
        ConfigError: an unreadable file, an unknown key, or an invalid value.
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    file = file if file is not None else env.get(ENV_PREFIX + "CONFIG") or None
    if file is not None:
        for key, value in _read_toml(Path(file)).items():
            merged[key], sources[key] = value, f"file {file}"
    for key, value in env_values(env).items():
        merged[key], sources[key] = value, f"env {ENV_PREFIX}{key.upper()}"
    for key, value in (cli or {}).items():
        if value is not None:
            merged[key], sources[key] = value, "cli"
    config = _convert(merged)
    for name in field_names():
        sources.setdefault(name, "default")
    return Resolved(config, sources)


def env_values(env: Mapping[str, str]) -> dict[str, str]:
    """Return the config values set by ``UGRAM_<FIELD>`` variables in ``env``.

    Raises:
        ConfigError: a ``UGRAM_`` variable is a near miss of an option (``UGRAM_WOKERS``).
            Variables that resemble no option are left alone: they may be the
            application's own.
    """
    names = set(field_names())
    found: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key not in _NOT_OPTIONS:
            name = key[len(ENV_PREFIX) :].lower()
            if name in names:
                found[name] = _split_list(name, value)
            elif _suggest(name):
                raise ConfigError(f"unknown environment variable {key}{_suggest(name)}")
    return found


def _split_list(name: str, value: str) -> Any:
    # List options come from one environment variable as comma-separated items.
    if name in list_fields():
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # here: a worker imports this package and never reads a file

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("ugram", data) if isinstance(data.get("ugram"), dict) else data
    return {key.replace("-", "_"): value for key, value in section.items()}


def _suggest(name: str) -> str:
    import difflib  # only for a misspelt option

    close = difflib.get_close_matches(name, field_names(), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_AT_FIELD = re.compile(r"at `\$\.(\w+)(?:\[\d+\])?`")
# greedy and DOTALL: the key may be empty or hold a backtick or a newline
_UNKNOWN = re.compile(r"unknown field `(.*)`", re.DOTALL)


def _convert(values: Mapping[str, Any]) -> Config:
    try:
        return msgspec.convert(dict(values), Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), values)) from None


def _explain(message: str, values: Mapping[str, Any]) -> str:
    unknown = _UNKNOWN.search(message)
    if unknown:
        return f"unknown option {unknown.group(1)!r}{_suggest(unknown.group(1))}"
    at = _AT_FIELD.search(message)
    if at is None:
        return message
    name = at.group(1)
    detail = message[: at.start()].rstrip(" -")
    if detail.startswith("invalid value for "):
        return detail
    line = invalid_value(name, values.get(name), field_allowed(name))
    # "Expected `str` matching regex '^...$'" says nothing the allowed forms do not.
    return line if "matching regex" in detail else f"{line}: {detail}"

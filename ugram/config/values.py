"""Parsers and checks of single option values: modes, groups, ids, rates, addresses.

Each says what was wrong in the one-line form every configuration error takes:
``invalid value for NAME: VALUE (allowed: ...)``.
"""

from __future__ import annotations

import grp
import pwd
import re
import stat

from ..errors import ConfigError
from .fields import GroupValue, MetricsAddress, ModeValue, RateLimit, allowed_of


def invalid_value(name: str, value: object, allowed: str) -> str:
    """Return the one-line message for a value an option does not allow."""
    return f"invalid value for {name}: {value!r} (allowed: {allowed})"


_OCTAL = re.compile(r"^(?:0o|0O)?([0-7]{1,4})$")
_SYMBOLIC = re.compile(r"^[-s]?([r-][w-][x-]){3}$")


def parse_mode(value: object) -> int:
    """Parse a socket file mode given as octal text, an int or symbolic text.

    Raises:
        ConfigError: the value is none of the accepted forms or exceeds 0o777.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_mode(value)
    if isinstance(value, str):
        text = value.strip()
        octal = _OCTAL.match(text)
        if octal and int(octal.group(1), 8) <= 0o777:
            return int(octal.group(1), 8)
        if _SYMBOLIC.match(text):
            return sum(1 << (8 - i) for i, ch in enumerate(text[-9:]) if ch != "-")
    raise ConfigError(invalid_value("mode", value, allowed_of(ModeValue)))


def _int_mode(value: int) -> int:
    if 0 <= value <= 0o777:
        return value
    # 660 from TOML or Python is decimal 660, not 0o660: say how to write what was meant.
    hint = f"; write it as the string '0{value}'" if _OCTAL.match(str(value)) else ""
    raise ConfigError(invalid_value("mode", value, allowed_of(ModeValue) + hint))


def parse_group(value: object) -> int:
    """Parse a group given as a gid, a group name, or -1 (the process group).

    Raises:
        ConfigError: the value is not -1, not a valid gid, or names no known group.
    """
    allowed = allowed_of(GroupValue)
    if isinstance(value, bool):
        raise ConfigError(invalid_value("group", value, allowed))
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value.strip())
    if isinstance(value, int):
        if value == -1 or 0 <= value < 2**32 - 1:
            return value
        raise ConfigError(invalid_value("group", value, allowed))
    if isinstance(value, str) and value.strip():
        try:
            return grp.getgrnam(value.strip()).gr_gid
        except (KeyError, ValueError):  # ValueError: a NUL byte in the name
            allowed = "the name of an existing group, " + allowed
            raise ConfigError(invalid_value("group", value, allowed)) from None
    raise ConfigError(invalid_value("group", value, allowed))


def resolve_id(field: str, value: str | int) -> int:
    """Turn a user/group name or a numeric id into an id.

    Raises:
        ConfigError: an unknown name or a negative id.
    """
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        if field == "allow_uid":
            return pwd.getpwnam(text).pw_uid
        return grp.getgrnam(text).gr_gid
    except (KeyError, ValueError):
        kind = "user" if field == "allow_uid" else "group"
        allowed = f"an existing {kind} name or a numeric id"
        raise ConfigError(invalid_value(field, value, allowed)) from None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")


def parse_rate(text: str) -> float:
    """Parse ``N/s``, ``N/m``, ``N/h`` or ``N`` (per second) into datagrams per second.

    Raises:
        ConfigError: not a positive rate.
    """
    if not text:
        return 0.0
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(invalid_value("rate_limit", text, allowed_of(RateLimit)))
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) / per


_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|\d{1,4})"
_METRICS = re.compile(rf"^(|@.+|.*/.*|(\[[0-9A-Fa-f:.]+\]|[\w.-]*):{_PORT})$")


def check_metrics(value: str) -> None:
    """Check a metrics address: ``HOST:PORT``, a unix socket path, ``@name`` or empty.

    Raises:
        ConfigError: none of those forms.
    """
    if not _METRICS.match(value):
        raise ConfigError(invalid_value("metrics", value, allowed_of(MetricsAddress)))


def check_socket(value: str) -> None:
    """Check a socket path for what the OS would reject later with a bare ``ValueError``.

    Raises:
        ConfigError: the path holds a NUL character.
    """
    if "\0" in value:
        raise ConfigError(invalid_value("socket", value, "a path without NUL characters"))


def mode_string(mode: int) -> str:
    """Render permission bits the way ``ls -l`` does for a socket (``srw-rw----``)."""
    return stat.filemode(stat.S_IFSOCK | mode)

"""The one frozen, validated configuration and its loading from CLI, environment and TOML.

Every option is declared once, as a field of :class:`Config`; the CLI flags, the ``UGRAM_*``
environment variables and the TOML keys are all derived from the fields, so they cannot drift.
Values are merged with the precedence CLI > environment > file > default and validated by
``msgspec.convert`` (``Struct.__init__`` alone does not validate).
"""

from __future__ import annotations

import difflib
import grp
import os
import re
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

from .errors import ConfigError
from .safefs import default_data_path

ENV_PREFIX = "UGRAM_"
DEFAULT_SOCKET = "/tmp/ugram.sock"
DEFAULT_HANDLER = "ugram.builtin:print_json"

# The kernel accepts AF_UNIX datagrams up to the sender's SO_SNDBUF (at most wmem_max, a few
# MiB); 16 MiB is a generous ceiling that still catches typos such as an extra zero.
MAX_DATAGRAM_LIMIT = 16 * 1024 * 1024
RECORD_OVERHEAD = 32 + 112  # ring record header + the longest sender address


def _meta(description: str, allowed: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, extra={"allowed": allowed}, **constraints)


Workers = Annotated[int, _meta("worker processes", "an integer from 1 to 1024", ge=1, le=1024)]
MaxDatagram = Annotated[
    int,
    _meta(
        "largest datagram accepted, in bytes; larger ones are rejected and counted",
        f"an integer from 1 to {MAX_DATAGRAM_LIMIT}",
        ge=1,
        le=MAX_DATAGRAM_LIMIT,
    ),
]
RingSize = Annotated[
    int,
    _meta(
        "bytes of shared memory per worker ring",
        "an integer from 65536 to 1073741824, at least 2 x (max_datagram + 144)",
        ge=65536,
        le=1 << 30,
    ),
]
Seconds = Annotated[
    float,
    _meta("seconds to drain at shutdown before killing", "a number of seconds >= 0", ge=0),
]
SocketPath = Annotated[
    str,
    _meta(
        "socket path",
        "a non-empty filesystem path, or @name for a Linux abstract socket",
        min_length=1,
    ),
]
HandlerSpec = Annotated[
    str,
    _meta(
        "the handler to run in each worker",
        "module:attribute, e.g. app.handlers:handle",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
    ),
]
ModeValue = Annotated[
    str | int,
    _meta(
        "permission bits of the socket file",
        "octal (0660, 660, 0o660) or symbolic (rw-rw----, -rw-rw----)",
    ),
]
GroupValue = Annotated[
    str | int,
    _meta("group of the socket file", "a gid, a group name, or -1 for the process group"),
]
ServerCodec = Literal["raw", "json", "msgpack", "lines", "syslog", "statsd"]
Codec = Annotated[
    ServerCodec,
    _meta(
        "how workers decode each datagram for the handler",
        "raw, json, msgpack, lines (one message per line), syslog (RFC 5424/3164) or "
        "statsd (DogStatsD lines)",
    ),
]
RouteBy = Annotated[
    str | None,
    _meta(
        "top-level field whose value picks the worker (same value, same worker)",
        "a field name of the JSON/msgpack payload, or empty for round-robin",
    ),
]
MaxWorkers = Annotated[
    int,
    _meta(
        "most workers SIGTTIN can grow to (rings are reserved up front; 0 = 2 x workers)",
        "0 or an integer from 1 to 1024, at least workers",
        ge=0,
        le=1024,
    ),
]
WorkerTimeout = Annotated[
    float,
    _meta(
        "seconds a worker may spend on one record (or be unresponsive) before it is killed",
        "a number of seconds >= 0; 0 disables the check",
        ge=0,
    ),
]
MaxRecords = Annotated[
    int,
    _meta(
        "recycle a worker after about this many records (+ up to 10% jitter)",
        "an integer >= 0; 0 never recycles",
        ge=0,
    ),
]
MaxRss = Annotated[
    int,
    _meta(
        "recycle a worker whose resident memory exceeds this many MiB",
        "an integer >= 0; 0 never recycles",
        ge=0,
    ),
]
PoisonAttempts = Annotated[
    int,
    _meta(
        "attempts (worker deaths) after which a record is moved to the dead-letter file",
        "an integer from 1 to 100",
        ge=1,
        le=100,
    ),
]
DeadLetter = Annotated[
    str,
    _meta(
        "dead-letter file (JSON lines) for poison records; empty = <socket>.dead-letter.jsonl "
        "in a private socket directory, else in ugram's state directory (docs/security.md)",
        "a file path, or empty",
    ),
]
DeadLetterMax = Annotated[
    int,
    _meta(
        "size cap of the dead-letter file in bytes (rotated once to .1 when exceeded)",
        "an integer >= 4096",
        ge=4096,
    ),
]
BootRetries = Annotated[
    int,
    _meta(
        "consecutive worker boot failures (with backoff) at start-up before the server "
        "stops; once started, a worker that cannot boot is retried while the others serve",
        "an integer from 1 to 100",
        ge=1,
        le=100,
    ),
]
Credentials = Annotated[
    bool,
    _meta(
        "collect each sender's kernel-verified pid/uid/gid (SO_PASSCRED, Linux); "
        "implied by allow_uid, allow_gid and rate_limit",
        "true or false",
    ),
]
IdList = Annotated[
    list[str | int],
    _meta(
        "only these senders are admitted; others are rejected as unauthorized",
        "user/group names or numeric ids (repeat the flag, or comma-separate)",
    ),
]
RateLimit = Annotated[
    str,
    _meta(
        "per-sender rate limit; excess datagrams are rejected as rate_limited",
        "N/s, N/m or N/h (N > 0; a bare N means N/s), or empty for none",
    ),
]
Burst = Annotated[
    int,
    _meta(
        "datagrams a sender may send at once above its rate (token bucket size)",
        "an integer >= 0; 0 = one second's worth of rate_limit",
        ge=0,
    ),
]
RateLimitBy = Annotated[
    Literal["uid", "pid"],
    _meta(
        "what identifies a sender for rate_limit: uid (a user cannot escape by forking) or "
        "pid (one noisy process does not starve the others of its user)",
        "uid or pid",
    ),
]
BatchSize = Annotated[
    int,
    _meta(
        "most records a worker takes from its ring at once (and passes to handle_batch)",
        "an integer from 1 to 65536",
        ge=1,
        le=65536,
    ),
]
BatchBytes = Annotated[
    int,
    _meta(
        "most payload bytes a worker takes from its ring at once (and passes to "
        "handle_batch): bounds what one batch decodes into; a batch holds at least one record",
        "an integer from 1 to 1073741824",
        ge=1,
        le=1 << 30,
    ),
]
ReceiveBatch = Annotated[
    int,
    _meta(
        "datagrams the receiver reads per system call: more than 1 = recvmmsg (Linux) into a "
        "shared area from which a killed receiver's successor recovers what it held (nothing "
        "lost); 1 = one recvfrom each (a killed receiver may lose the one it held)",
        "an integer from 1 to 1024",
        ge=1,
        le=1024,
    ),
]
AllowAbstractReplies = Annotated[
    bool,
    _meta(
        "let dgram.reply() answer senders bound to an abstract @name; off: a ReplyError, as "
        "such a name proves no ownership and, once its sender exits, whoever binds it next "
        "gets the reply (see docs/security.md)",
        "true or false",
    ),
]
Mkdir = Annotated[
    bool,
    _meta(
        "create a missing socket directory (mode 0750, or 0755 when mode lets others write; "
        "group: the socket's group)",
        "true or false",
    ),
]
AllowUnsafeDir = Annotated[
    bool,
    _meta(
        "accept socket and data directories that other users may write (without the sticky "
        "bit) or that another user owns; they could then replace the files ugram creates "
        "there (see docs/security.md)",
        "true or false",
    ),
]
Speedups = Annotated[
    bool,
    _meta(
        "use the compiled helper (ugram._speedups) for the receiver's and workers' "
        "per-datagram loops when it was built; false forces the pure-Python paths",
        "true or false",
    ),
]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error", "critical"],
    _meta("log level", "debug, info, warning, error or critical"),
]
_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|\d{1,4})"
MetricsAddress = Annotated[
    str,
    _meta(
        "serve Prometheus /metrics and /healthz here (empty: off)",
        "HOST:PORT (127.0.0.1:9100, [::1]:9100, :9100 for all IPv4), a unix socket path "
        "(containing a /) or @name, or empty",
    ),
]
_METRICS = re.compile(rf"^(|@.+|.*/.*|(\[[0-9A-Fa-f:.]+\]|[\w.-]*):{_PORT})$")
ControlSocket = Annotated[
    bool,
    _meta(
        "serve the control socket <socket>.ctl that `ugram stats` reads (socket's mode/group)",
        "true or false",
    ),
]
LogFormat = Annotated[
    Literal["text", "json"],
    _meta("log line format on stderr, in every process", "text or json (one object a line)"),
]
LogConfig = Annotated[
    str,
    _meta(
        "logging.dictConfig file applied in every process after log_level and log_format",
        "a .json or .toml file, or empty",
    ),
]


# Built-in handlers that never call dgram.reply(): no credentials are collected for them.
NEVER_REPLY = frozenset(
    ("ugram.builtin:print_json", "ugram.builtin:LogSink", "ugram.builtin:StatsdAggregator")
)


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every ugram option. Build it with :func:`load_config` or :func:`make_config`."""

    socket: SocketPath = DEFAULT_SOCKET
    handler: HandlerSpec = DEFAULT_HANDLER
    workers: Workers = msgspec.field(default_factory=lambda: os.cpu_count() or 1)
    mode: ModeValue = "0660"
    group: GroupValue = -1
    codec: Codec = "raw"
    max_datagram: MaxDatagram = 65536
    ring_size: RingSize = 8 * 1024 * 1024
    graceful_timeout: Seconds = 10.0
    route_by: RouteBy = None
    max_workers: MaxWorkers = 0
    worker_timeout: WorkerTimeout = 30.0
    max_records: MaxRecords = 0
    max_rss: MaxRss = 0
    poison_attempts: PoisonAttempts = 3
    dead_letter: DeadLetter = ""
    dead_letter_max_bytes: DeadLetterMax = 64 * 1024 * 1024
    boot_retries: BootRetries = 5
    credentials: Credentials = False
    allow_uid: IdList = msgspec.field(default_factory=list)
    allow_gid: IdList = msgspec.field(default_factory=list)
    rate_limit: RateLimit = ""
    burst: Burst = 0
    rate_limit_by: RateLimitBy = "uid"
    allow_abstract_replies: AllowAbstractReplies = False
    mkdir: Mkdir = False
    allow_unsafe_dir: AllowUnsafeDir = False
    batch_size: BatchSize = 256
    batch_bytes: BatchBytes = 1024 * 1024
    receive_batch: ReceiveBatch = 64
    speedups: Speedups = True
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    log_config: LogConfig = ""
    metrics: MetricsAddress = ""
    control: ControlSocket = True

    def __post_init__(self) -> None:
        # Raising ValueError here makes msgspec.convert report it as a ValidationError at the
        # field, so every check below yields the same one-line message as a type error does.
        parse_mode(self.mode)
        parse_group(self.group)
        if "\0" in self.socket:  # the OS rejects it later with a bare ValueError
            raise ConfigError(_line("socket", self.socket, "a path without NUL characters"))
        if self.route_by == "":
            msgspec.structs.force_setattr(self, "route_by", None)
        if self.route_by is not None and not re.fullmatch(r"[^\s]+", self.route_by):
            raise ConfigError(_line("route_by", self.route_by, _allowed("route_by")))
        if self.route_by is not None and self.codec not in ("json", "msgpack"):
            raise ConfigError(
                f"invalid value for route_by: {self.route_by!r} (allowed: only with codec "
                f"json or msgpack; a {self.codec} payload has no top-level fields)"
            )
        if self.dead_letter and not os.path.isdir(os.path.dirname(self.dead_letter_path)):
            raise ConfigError(
                f"invalid value for dead_letter: {self.dead_letter!r} (allowed: a file in an "
                "existing directory)"
            )
        for name in ("allow_uid", "allow_gid"):
            for value in getattr(self, name):
                resolve_id(name, value)
        parse_rate(self.rate_limit)
        if not _METRICS.match(self.metrics):
            raise ConfigError(_line("metrics", self.metrics, _allowed("metrics")))
        if self.max_workers and self.max_workers < self.workers:
            raise ConfigError(
                f"invalid value for max_workers: {self.max_workers} "
                f"(allowed: 0 or at least workers={self.workers})"
            )
        if self.ring_size < 2 * (self.max_datagram + RECORD_OVERHEAD):
            raise ConfigError(
                f"invalid value for ring_size: {self.ring_size} "
                f"(allowed: at least 2 x (max_datagram + {RECORD_OVERHEAD}) = "
                f"{2 * (self.max_datagram + RECORD_OVERHEAD)} with max_datagram="
                f"{self.max_datagram})"
            )

    @property
    def file_mode(self) -> int:
        """The socket file's permission bits as an int (e.g. ``0o660``)."""
        return parse_mode(self.mode)

    @property
    def allowed_uids(self) -> frozenset[int]:
        """The numeric uids of ``allow_uid`` (empty: everyone)."""
        return frozenset(resolve_id("allow_uid", value) for value in self.allow_uid)

    @property
    def allowed_gids(self) -> frozenset[int]:
        """The numeric gids of ``allow_gid`` (empty: every group)."""
        return frozenset(resolve_id("allow_gid", value) for value in self.allow_gid)

    @property
    def rate_per_second(self) -> float:
        """``rate_limit`` in datagrams per second (0.0: no limit)."""
        return parse_rate(self.rate_limit)

    @property
    def wants_credentials(self) -> bool:
        """True when the receiver must collect sender credentials.

        Also whenever the handler may reply (every handler but the built-ins that never
        do): a reply goes to a socket path only if the sender's uid owns it.
        """
        if self.credentials or self.allow_uid or self.allow_gid or self.rate_limit:
            return True
        return self.handler not in NEVER_REPLY and hasattr(socket, "SO_PASSCRED")

    @property
    def worker_slots(self) -> int:
        """How many worker slots (rings, counter blocks) are reserved: max_workers or 2 x."""
        return self.max_workers or min(1024, 2 * self.workers)

    @property
    def dead_letter_path(self) -> str:
        """Where poison records go: ``dead_letter``, else beside a socket file in a private
        directory, else in ugram's state directory (never a world-writable one such as /tmp:
        see :func:`ugram.safefs.default_data_path`)."""
        if self.dead_letter:
            return os.path.abspath(self.dead_letter)
        return default_data_path(self.socket, ".dead-letter.jsonl")

    @property
    def gid(self) -> int:
        """The socket file's group id, or -1 to keep the process group."""
        return parse_group(self.group)


def field_names() -> tuple[str, ...]:
    """Return the names of every configuration field, in declaration order."""
    return tuple(f.name for f in msgspec.structs.fields(Config))


def field_meta(name: str) -> msgspec.Meta | None:
    """Return the ``msgspec.Meta`` attached to a field's type, if any."""
    for field in msgspec.structs.fields(Config):
        if field.name == name and get_origin(field.type) is Annotated:
            for arg in get_args(field.type)[1:]:
                if isinstance(arg, msgspec.Meta):
                    return arg
    return None


def _allowed(name: str) -> str:
    meta = field_meta(name)
    return str(meta.extra.get("allowed", "")) if meta and meta.extra else ""


def field_help(name: str) -> str:
    """Return a short help text for a field: its description and what it allows."""
    meta = field_meta(name)
    if meta is None:
        return ""
    return f"{meta.description} ({_allowed(name)})"


def _line(name: str, value: object, allowed: str) -> str:
    return f"invalid value for {name}: {value!r} (allowed: {allowed})"


_OCTAL = re.compile(r"^(?:0o|0O)?([0-7]{1,4})$")
_SYMBOLIC = re.compile(r"^[-s]?([r-][w-][x-]){3}$")


def parse_mode(value: object) -> int:
    """Parse a socket file mode given as octal text, an int or symbolic text.

    Raises:
        ConfigError: the value is none of the accepted forms or exceeds 0o777.
    """
    allowed = _allowed("mode")
    if isinstance(value, bool):
        raise ConfigError(_line("mode", value, allowed))
    if isinstance(value, int):
        if 0 <= value <= 0o777:
            return value
        hint = f"; write it as the string '0{value}'" if _OCTAL.match(str(value)) else ""
        raise ConfigError(_line("mode", value, allowed + hint))
    if not isinstance(value, str):
        raise ConfigError(_line("mode", value, allowed))
    text = value.strip()
    octal = _OCTAL.match(text)
    if octal and int(octal.group(1), 8) <= 0o777:
        return int(octal.group(1), 8)
    if _SYMBOLIC.match(text):
        bits = text[-9:]
        return sum(1 << (8 - i) for i, ch in enumerate(bits) if ch != "-")
    raise ConfigError(_line("mode", value, allowed))


def parse_group(value: object) -> int:
    """Parse a group given as a gid, a group name, or -1 (the process group).

    Raises:
        ConfigError: the value is not -1, not a valid gid, or names no known group.
    """
    allowed = _allowed("group")
    if isinstance(value, bool):
        raise ConfigError(_line("group", value, allowed))
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value.strip())
    if isinstance(value, int):
        if value == -1 or 0 <= value < 2**32 - 1:
            return value
        raise ConfigError(_line("group", value, allowed))
    if isinstance(value, str) and value.strip():
        try:
            return grp.getgrnam(value.strip()).gr_gid
        except (KeyError, ValueError):  # ValueError: a NUL byte in the name
            allowed = "the name of an existing group, " + allowed
            raise ConfigError(_line("group", value, allowed)) from None
    raise ConfigError(_line("group", value, allowed))


def resolve_id(field: str, value: str | int) -> int:
    """Turn a user/group name or a numeric id into an id.

    Raises:
        ConfigError: an unknown name or a negative id.
    """
    import pwd

    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        if field == "allow_uid":
            return pwd.getpwnam(text).pw_uid
        return grp.getgrnam(text).gr_gid
    except (KeyError, ValueError):
        kind = "user" if field == "allow_uid" else "group"
        raise ConfigError(_line(field, value, f"an existing {kind} name or a numeric id")) from None


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
        raise ConfigError(_line("rate_limit", text, _allowed("rate_limit")))
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
    return float(match.group(1)) / per


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
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            name = key[len(ENV_PREFIX) :].lower()
            if name in names:
                found[name] = _split_list(name, value)
            elif _suggest(name):
                raise ConfigError(f"unknown environment variable {key}{_suggest(name)}")
    return found


def _split_list(name: str, value: str) -> Any:
    # List options come from one environment variable as comma-separated items.
    if name in _list_fields():
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _list_fields() -> frozenset[str]:
    return frozenset(
        f.name
        for f in msgspec.structs.fields(Config)
        if get_origin(get_args(f.type)[0] if get_origin(f.type) is Annotated else f.type) is list
    )


def field_kind(name: str) -> str:
    """``"list"``, ``"bool"`` or ``"scalar"``: how a CLI flag for the field takes values."""
    if name in _list_fields():
        return "list"
    for field in msgspec.structs.fields(Config):
        if field.name == name:
            base = get_args(field.type)[0] if get_origin(field.type) is Annotated else field.type
            return "bool" if base is bool else "scalar"
    raise KeyError(name)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = data.get("ugram", data) if isinstance(data.get("ugram"), dict) else data
    return {key.replace("-", "_"): value for key, value in section.items()}


def _suggest(name: str) -> str:
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
    line = _line(name, values.get(name), _allowed(name))
    # "Expected `str` matching regex '^...$'" says nothing the allowed forms do not.
    return line if "matching regex" in detail else f"{line}: {detail}"


def mode_string(mode: int) -> str:
    """Render permission bits the way ``ls -l`` does for a socket (``srw-rw----``)."""
    return stat.filemode(stat.S_IFSOCK | mode)

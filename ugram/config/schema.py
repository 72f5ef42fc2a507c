"""The schema: the one frozen :class:`Config`, the checks across its fields, and its fields.

Every option is declared once, as a field of :class:`Config` typed by :mod:`.fields`; the
CLI flags, the ``UGRAM_*`` variables and the TOML keys (:mod:`.load`) are derived from it.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, get_args, get_origin

import msgspec

from .. import portable
from ..errors import ConfigError
from ..safefs import default_data_path
from .fields import (
    RECORD_OVERHEAD,
    AllowAbstractReplies,
    AllowUnsafeDir,
    BatchBytes,
    BatchSize,
    BootRetries,
    BootTimeout,
    Burst,
    Codec,
    ControlSocket,
    Credentials,
    DeadLetter,
    DeadLetterMax,
    GroupValue,
    HandlerSpec,
    IdList,
    LogConfig,
    LogFormat,
    LogLevel,
    MaxDatagram,
    MaxRecords,
    MaxRss,
    MaxWorkers,
    MetricsAddress,
    Mkdir,
    ModeValue,
    PoisonAttempts,
    RateLimit,
    RateLimitBy,
    ReceiveBatch,
    RingSize,
    RouteBy,
    Seconds,
    SocketPath,
    Speedups,
    Workers,
    WorkerTimeout,
    allowed_of,
    meta_of,
)
from .values import (
    check_metrics,
    check_socket,
    invalid_value,
    parse_group,
    parse_mode,
    parse_rate,
    resolve_id,
)

DEFAULT_SOCKET = "/tmp/ugram.sock"
DEFAULT_HANDLER = "ugram.builtin:print_json"

# Built-in handlers that never call dgram.reply(): no credentials are collected for them.
NEVER_REPLY = frozenset(
    (
        "ugram.builtin:print_json",
        "ugram.builtin:LogSink",
        "ugram.builtin:StatsdAggregator",
        "ugram.builtin:Forward",
    )
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
    boot_timeout: BootTimeout = 60.0
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
        # The order of the checks decides which of several bad values is named: keep it.
        parse_mode(self.mode)
        parse_group(self.group)
        check_socket(self.socket)
        self._check_route_by()
        self._check_dead_letter()
        for name in ("allow_uid", "allow_gid"):
            for value in getattr(self, name):
                resolve_id(name, value)
        parse_rate(self.rate_limit)
        check_metrics(self.metrics)
        self._check_max_workers()
        self._check_ring_size()
        self._check_platform()

    def _check_route_by(self) -> None:
        if self.route_by == "":
            msgspec.structs.force_setattr(self, "route_by", None)
        if self.route_by is not None and not re.fullmatch(r"[^\s]+", self.route_by):
            raise ConfigError(invalid_value("route_by", self.route_by, allowed_of(RouteBy)))
        if self.route_by is not None and self.codec not in ("json", "msgpack"):
            raise ConfigError(
                f"invalid value for route_by: {self.route_by!r} (allowed: only with codec "
                f"json or msgpack; a {self.codec} payload has no top-level fields)"
            )

    def _check_dead_letter(self) -> None:
        if self.dead_letter and not os.path.isdir(os.path.dirname(self.dead_letter_path)):
            raise ConfigError(
                f"invalid value for dead_letter: {self.dead_letter!r} (allowed: a file in an "
                "existing directory)"
            )

    def _check_max_workers(self) -> None:
        if self.max_workers and self.max_workers < self.workers:
            raise ConfigError(
                f"invalid value for max_workers: {self.max_workers} "
                f"(allowed: 0 or at least workers={self.workers})"
            )

    def _check_ring_size(self) -> None:
        if self.ring_size < 2 * (self.max_datagram + RECORD_OVERHEAD):
            raise ConfigError(
                f"invalid value for ring_size: {self.ring_size} "
                f"(allowed: at least 2 x (max_datagram + {RECORD_OVERHEAD}) = "
                f"{2 * (self.max_datagram + RECORD_OVERHEAD)} with max_datagram="
                f"{self.max_datagram})"
            )

    def _check_platform(self) -> None:
        """Refuse, now, what this platform cannot do (macOS, the portable profile)."""
        here = portable.current()
        if not here.has_credentials:
            for name, value in self._credential_options():
                why = here.unavailable(portable.NO_CREDENTIALS)
                raise ConfigError(f"invalid value for {name}: {value!r} ({why})")
        if not here.has_abstract:
            for name in ("socket", "metrics"):
                if getattr(self, name).startswith("@"):
                    why = here.unavailable(portable.NO_ABSTRACT)
                    raise ConfigError(f"invalid value for {name}: {getattr(self, name)!r} ({why})")

    def _credential_options(self) -> list[tuple[str, object]]:
        """The options set that need each sender's credentials, in the order they are named."""
        wanted = [("credentials", self.credentials), ("allow_uid", self.allow_uid)]
        wanted += [("allow_gid", self.allow_gid)]
        wanted += [("rate_limit_by", self.rate_limit_by == "pid" and "pid")]
        wanted += [("rate_limit", self.rate_limit)]
        return [(name, value) for name, value in wanted if value]

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
        return self.handler not in NEVER_REPLY and portable.current().has_credentials

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
        if field.name == name:
            return meta_of(field.type)
    return None


def field_allowed(name: str) -> str:
    """Return what a field allows, as the errors and the help say it ("" for no such field)."""
    meta = field_meta(name)
    return str(meta.extra.get("allowed", "")) if meta and meta.extra else ""


def field_help(name: str) -> str:
    """Return a short help text for a field: its description and what it allows."""
    meta = field_meta(name)
    if meta is None:
        return ""
    return f"{meta.description} ({field_allowed(name)})"


def _base(annotated: object) -> object:
    return get_args(annotated)[0] if get_origin(annotated) is Annotated else annotated


def list_fields() -> frozenset[str]:
    """Return the names of the fields that hold lists (repeatable flags, comma-separated env)."""
    fields = msgspec.structs.fields(Config)
    return frozenset(f.name for f in fields if get_origin(_base(f.type)) is list)


def field_kind(name: str) -> str:
    """``"list"``, ``"bool"`` or ``"scalar"``: how a CLI flag for the field takes values.

    Raises:
        KeyError: no field has that name.
    """
    if name in list_fields():
        return "list"
    for field in msgspec.structs.fields(Config):
        if field.name == name:
            return "bool" if _base(field.type) is bool else "scalar"
    raise KeyError(name)

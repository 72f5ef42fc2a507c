"""What each option means and allows: the annotated types of the :class:`Config` fields.

Each type carries a ``msgspec.Meta`` with the constraints that ``msgspec.convert`` checks, a
``description`` and, in ``extra["allowed"]``, the accepted forms; the CLI help, the one-line
errors and docs/reference.md are all rendered from these.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec

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
        "a field name of the JSON/msgpack payload, or empty: the first worker that keeps up",
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
BootTimeout = Annotated[
    float,
    _meta(
        "seconds a worker may take to boot (import the handler, run setup()) before it is "
        "killed and counted as a boot failure",
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
        "collect each sender's kernel-verified pid/uid/gid (SO_PASSCRED, Linux; refused on "
        "macOS, which gives datagrams no credentials); implied by allow_uid, allow_gid and "
        "rate_limit",
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
        "lost); 1 = one recvfrom each (a killed receiver may lose the one it held), as on "
        "macOS and under the portable profile whatever this says",
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
        "use the compiled helpers when they were built: ugram._speedups for the receiver's "
        "and workers' per-datagram loops, ugram._parsers for the syslog, statsd and lines "
        "codecs; false forces the pure-Python paths",
        "true or false",
    ),
]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error", "critical"],
    _meta("log level", "debug, info, warning, error or critical"),
]
MetricsAddress = Annotated[
    str,
    _meta(
        "serve Prometheus /metrics and /healthz here (empty: off)",
        "HOST:PORT (127.0.0.1:9100, [::1]:9100, :9100 for all IPv4), a unix socket path "
        "(containing a /) or @name, or empty",
    ),
]
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


def meta_of(annotated: Any) -> msgspec.Meta | None:
    """Return the ``msgspec.Meta`` attached to an ``Annotated`` type, if any."""
    if get_origin(annotated) is Annotated:
        for arg in get_args(annotated)[1:]:
            if isinstance(arg, msgspec.Meta):
                return arg
    return None


def literal_choices(kind: type[msgspec.Struct], name: str) -> str:
    """The values field ``name`` of ``kind`` may take, when it is a ``Literal`` ("a, b or
    c"); "" for any other field."""
    info = msgspec.inspect.type_info(kind)
    for field in getattr(info, "fields", ()):
        if field.name == name and isinstance(field.type, msgspec.inspect.LiteralType):
            values = [str(value) for value in field.type.values]
            return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]
    return ""


def allowed_of(annotated: Any) -> str:
    """Return what an annotated type allows, as the errors and the help say it ("" if unsaid)."""
    meta = meta_of(annotated)
    return str(meta.extra.get("allowed", "")) if meta and meta.extra else ""

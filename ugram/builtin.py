"""Built-in handlers usable from the CLI without writing any code.

* :func:`print_json` (the default): each datagram as one JSON line on stdout.
* :class:`LogSink`: JSON lines appended to a file shared by every worker, rotated by size,
  with an fsync policy (a local logging daemon).
* :class:`StatsdAggregator`: DogStatsD counters, gauges, sets, histograms, timers and
  distributions aggregated per flush interval, merged across workers, written as JSON.

Options. In Python, pass them as keyword arguments (``sink = LogSink(path="/var/log/a.jsonl")``
in your module, then ``ugram serve app:sink``). From the CLI, where the class is instantiated
with no arguments, they come from environment variables ``UGSINK_<OPTION>`` and
``UGSTATSD_<OPTION>`` (``UGSINK_PATH=/var/log/a.jsonl``), and from a TOML or JSON file named
by ``UGSINK_CONFIG`` / ``UGSTATSD_CONFIG`` (keyword > variable > file > default). The prefixes
are not ``UGRAM_``: those variables are ugram's own options. A bad or unknown option stops the
server at start-up (exit code 4) with a message naming it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import logging
import os
import secrets
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from .codecs import take_invalid_lines
from .codecs.statsd import Event, Line, Metric, ServiceCheck
from .datagram import Datagram
from .errors import ConfigError

log = logging.getLogger("ugram.builtin")

_encode = msgspec.json.Encoder().encode


def _record(message: object, dgram: Datagram) -> dict[str, object]:
    """One datagram (or one decoded message of it) as a JSON-ready record."""
    record: dict[str, object] = {
        "time": datetime.fromtimestamp(dgram.received_at, UTC).isoformat(),
        "sender": dgram.sender,
    }
    if isinstance(message, bytes):
        record["size"] = len(message)
    if dgram.pid is not None:
        record.update(pid=dgram.pid, uid=dgram.uid, gid=dgram.gid)
    if isinstance(message, bytes):
        try:
            record["text"] = message.decode("utf-8")
        except UnicodeDecodeError:
            record["base64"] = base64.b64encode(message).decode("ascii")
    elif isinstance(message, str):
        record["text"] = message
    else:
        record["data"] = message
    return record


def print_json(dgram: Datagram) -> None:
    """Print each datagram as one JSON line on stdout: time, sender, size, and the payload.

    The payload is under ``text`` when it is valid UTF-8, else under ``base64``.
    """
    # One write per line: lines from several workers never interleave mid-line.
    sys.stdout.buffer.write(_encode(_record(dgram.data, dgram)) + b"\n")
    sys.stdout.buffer.flush()


# -- options ----------------------------------------------------------------------------------

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
    for key, value in env.items():
        if key.startswith(prefix) and key != prefix + "CONFIG":
            name = key[len(prefix) :].lower()
            if name not in names:
                raise ConfigError(f"unknown option {key} (options: {', '.join(sorted(names))})")
            values[name] = value
    values.update(overrides)
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid {prefix}* option: {exc}") from None


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


# -- the log sink -----------------------------------------------------------------------------


class SinkOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """:class:`LogSink` options (``UGSINK_<NAME>``).

    Attributes:
        path: the JSON lines file (relative to the server's working directory).
        max_bytes: rotate before a write would make the file larger (0: never rotate).
        backups: rotated files kept, ``path.1`` (newest) to ``path.<backups>``.
        fsync: ``always`` (before each batch is acknowledged), ``interval`` (every
            ``fsync_interval`` seconds) or ``never`` (leave it to the kernel).
        fsync_interval: seconds between two fsyncs with ``fsync = "interval"``.
    """

    path: Annotated[str, msgspec.Meta(min_length=1)] = "ugram-sink.jsonl"
    max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 100 * 1024 * 1024
    backups: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 5
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class RotatingFile:
    """A file appended to by several processes at once and rotated by size.

    Each write is one ``write(2)`` on an ``O_APPEND`` descriptor, so lines from different
    workers never interleave. Rotation happens under an exclusive ``flock`` on ``<path>.lock``;
    every writer checks, under the same lock, that its descriptor is still the file at
    ``path`` and reopens it when another process rotated it away.
    """

    def __init__(self, path: str, max_bytes: int, backups: int, sync_on_rotate: bool) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.sync_on_rotate = sync_on_rotate
        self._lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, lines: list[bytes]) -> None:
        """Append ``lines``, rotating before a line that would make the file pass
        ``max_bytes`` (a line is never split; one longer than ``max_bytes`` gets a file).

        Raises:
            OSError: the file cannot be written (disk full, permissions, ...).
        """
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            size = self._follow()
            pending: list[bytes] = []
            for line in lines:
                if self.max_bytes and size and size + len(line) > self.max_bytes:
                    self._write_all(b"".join(pending))
                    pending, size = [], 0
                    self._rotate()
                pending.append(line)
                size += len(line)
            self._write_all(b"".join(pending))
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _follow(self) -> int:
        """Reopen ``path`` if another writer rotated it; return its size."""
        mine = os.fstat(self._fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(self._fd)
            self._fd = self._open()
            mine = os.fstat(self._fd)
        return mine.st_size

    def _rotate(self) -> None:
        if self.sync_on_rotate:
            os.fsync(self._fd)
        for index in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{index}", f"{self.path}.{index + 1}")
        if self.backups:
            os.replace(self.path, self.path + ".1")
        else:
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = self._open()

    def fsync(self) -> None:
        """Flush what was written to the disk."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file and the lock file's descriptor."""
        os.close(self._fd)
        os.close(self._lock)


class LogSink:
    """Append each message as one JSON line to a file (``--codec`` decides what a message is).

    A line holds ``time`` (when received), ``sender``, ``pid``/``uid``/``gid`` when
    credentials are collected, and the message: ``text`` (or ``base64``) and ``size`` for raw
    bytes, ``data`` for anything decoded (a JSON value, a syslog message, a statsd line).
    Every worker appends to the same file; a batch of records is written with one system call
    before it is acknowledged, so a worker crash loses nothing that was acknowledged.

        UGSINK_PATH=/var/log/app.jsonl UGSINK_FSYNC=always \\
            ugram serve ugram.builtin:LogSink --codec syslog --socket /run/app/log.sock
    """

    def __init__(self, **options: Any) -> None:
        """Raises:
        ConfigError: an invalid or unknown option (see :class:`SinkOptions`)."""
        self.options = load_options("UGSINK_", SinkOptions, options)
        self.tick_interval = self.options.fsync_interval
        self._file: RotatingFile | None = None
        self._unsynced = False

    def setup(self) -> None:
        """Open (create) the file."""
        o = self.options
        self._file = RotatingFile(o.path, o.max_bytes, o.backups, o.fsync != "never")

    def handle_batch(self, messages, dgrams: list[Datagram]) -> None:  # type: ignore[no-untyped-def]
        """Write one JSON line per message; ``messages`` is untyped on purpose: it takes
        whatever the codec gives (bytes with raw, JSON values, SyslogMessage, ...)."""
        assert self._file is not None, "setup() was not called"
        pairs = zip(messages, dgrams, strict=True)
        self._file.write([_encode(_record(m, d)) + b"\n" for m, d in pairs])
        if self.options.fsync == "always":
            self._file.fsync()
        else:
            self._unsynced = True

    def tick(self) -> None:
        """fsync what was written since the last tick (``fsync = "interval"``)."""
        if self._file is not None and self._unsynced and self.options.fsync == "interval":
            self._file.fsync()
            self._unsynced = False

    def teardown(self) -> None:
        """fsync (unless ``fsync = "never"``) and close."""
        if self._file is None:
            return
        if self._unsynced and self.options.fsync != "never":
            self._file.fsync()
        self._file.close()
        self._file = None


# -- the statsd aggregator: one flush interval's aggregate ------------------------------------

Key = tuple[str, tuple[str, ...]]  # metric name, sorted distinct tags
SUMMARY_KINDS = {"h": "histograms", "ms": "timers", "d": "distributions"}


class Bucket:
    """What one process (or, merged, every process) received in one flush interval.

    Counters add ``value / sample_rate``; a gauge keeps the value received last (by the
    receiver's clock, comparable across workers); a set keeps its distinct members; histogram,
    timer and distribution samples are kept with the weight ``1 / sample_rate``.
    """

    def __init__(self, start: float) -> None:
        self.start = start
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, tuple[float, float]] = {}  # (received_at, value)
        self.sets: dict[Key, set[str]] = {}
        self.samples: dict[tuple[str, Key], tuple[list[float], list[float]]] = {}
        self.events: list[tuple[float, Event]] = []
        self.checks: list[tuple[float, ServiceCheck]] = []
        self.lines = 0
        self.invalid_lines = 0

    def add(self, line: Line, at: float) -> None:
        """Aggregate one parsed line received at ``at``."""
        self.lines += 1
        if isinstance(line, Metric):
            self.add_metric(line, at)
        elif isinstance(line, Event):
            self.events.append((at, line))
        else:
            self.checks.append((at, line))

    def add_metric(self, m: Metric, at: float) -> None:
        """Aggregate one metric line."""
        key = (m.name, tuple(sorted(set(m.tags))))
        if m.type == "c":
            self.counters[key] = self.counters.get(key, 0.0) + sum(m.values) / m.sample_rate
        elif m.type == "g":
            self.set_gauge(key, at, m.values[-1])
        elif m.type == "s":
            self.sets.setdefault(key, set()).update(m.members)
        else:
            values, weights = self.samples.setdefault((m.type, key), ([], []))
            values.extend(m.values)
            weights.extend([1.0 / m.sample_rate] * len(m.values))

    def set_gauge(self, key: Key, at: float, value: float) -> None:
        """Keep ``value`` unless a later one is already there."""
        current = self.gauges.get(key)
        if current is None or at >= current[0]:
            self.gauges[key] = (at, value)

    def merge(self, other: Bucket) -> None:
        """Add another process's aggregate of the same interval."""
        for key, value in other.counters.items():
            self.counters[key] = self.counters.get(key, 0.0) + value
        for key, (at, gauge) in other.gauges.items():
            self.set_gauge(key, at, gauge)
        for key, members in other.sets.items():
            self.sets.setdefault(key, set()).update(members)
        for skey, (values, weights) in other.samples.items():
            mine = self.samples.setdefault(skey, ([], []))
            mine[0].extend(values)
            mine[1].extend(weights)
        self.events += other.events
        self.checks += other.checks
        self.lines += other.lines
        self.invalid_lines += other.invalid_lines

    def __bool__(self) -> bool:
        return bool(self.lines or self.invalid_lines)


class _Partial(msgspec.Struct, array_like=True):
    """A :class:`Bucket` as written to a partial file (msgpack)."""

    start: float
    counters: list[tuple[str, tuple[str, ...], float]]
    gauges: list[tuple[str, tuple[str, ...], float, float]]
    sets: list[tuple[str, tuple[str, ...], list[str]]]
    samples: list[tuple[str, str, tuple[str, ...], list[float], list[float]]]
    events: list[tuple[float, Event]]
    checks: list[tuple[float, ServiceCheck]]
    lines: int
    invalid_lines: int


def dump_bucket(b: Bucket) -> bytes:
    """Serialize a bucket for another process to merge."""
    return msgspec.msgpack.encode(
        _Partial(
            b.start,
            [(n, t, v) for (n, t), v in b.counters.items()],
            [(n, t, at, v) for (n, t), (at, v) in b.gauges.items()],
            [(n, t, sorted(m)) for (n, t), m in b.sets.items()],
            [(k, n, t, vs, ws) for (k, (n, t)), (vs, ws) in b.samples.items()],
            b.events,
            b.checks,
            b.lines,
            b.invalid_lines,
        )
    )


def load_bucket(data: bytes) -> Bucket:
    """The inverse of :func:`dump_bucket`.

    Raises:
        msgspec.DecodeError: not a bucket.
    """
    p = msgspec.msgpack.decode(data, type=_Partial)
    b = Bucket(p.start)
    b.counters = {(n, t): v for n, t, v in p.counters}
    b.gauges = {(n, t): (at, v) for n, t, at, v in p.gauges}
    b.sets = {(n, t): set(m) for n, t, m in p.sets}
    b.samples = {(k, (n, t)): (vs, ws) for k, n, t, vs, ws in p.samples}
    b.events, b.checks = p.events, p.checks
    b.lines, b.invalid_lines = p.lines, p.invalid_lines
    return b


# -- the statsd aggregator: what it writes ----------------------------------------------------


class CounterOut(msgspec.Struct):
    """A counter: the sum of ``value / sample_rate``, and that per second of the interval."""

    name: str
    tags: list[str]
    value: float
    rate: float


class ValueOut(msgspec.Struct):
    """A gauge (its last value) or a set (its number of distinct members)."""

    name: str
    tags: list[str]
    value: float


class SummaryOut(msgspec.Struct):
    """A histogram, timer or distribution. ``count`` and ``sum`` weigh each sample by
    ``1 / sample_rate``, ``avg = sum / count``; ``median`` and ``p95`` are over the samples
    received, interpolated linearly between the closest ranks (numpy's default)."""

    name: str
    tags: list[str]
    count: float
    sum: float
    min: float
    max: float
    avg: float
    median: float
    p95: float


class IntervalOut(msgspec.Struct):
    """One line of ``statsd.jsonl``: the aggregate of one flush interval, every worker merged.

    ``start``/``end`` are epoch seconds. ``lines`` counts the lines aggregated,
    ``invalid_lines`` those that did not parse. A record for an interval already written can
    follow when a worker was late (behind, or stopping while others ran): add them up.
    """

    start: float
    end: float
    counters: list[CounterOut]
    gauges: list[ValueOut]
    sets: list[ValueOut]
    histograms: list[SummaryOut]
    timers: list[SummaryOut]
    distributions: list[SummaryOut]
    events: list[Event]
    service_checks: list[ServiceCheck]
    lines: int
    invalid_lines: int


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linearly interpolated between closest ranks."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _summary(key: Key, values: list[float], weights: list[float]) -> SummaryOut:
    count = sum(weights)
    total = sum(v * w for v, w in zip(values, weights, strict=True))
    ordered = sorted(values)
    return SummaryOut(
        key[0],
        list(key[1]),
        count,
        total,
        ordered[0],
        ordered[-1],
        total / count,
        quantile(ordered, 0.5),
        quantile(ordered, 0.95),
    )


def render_interval(b: Bucket, interval: float) -> IntervalOut:
    """The output record of a merged bucket."""
    summaries: dict[str, list[SummaryOut]] = {name: [] for name in SUMMARY_KINDS.values()}
    for (kind, key), (values, weights) in sorted(b.samples.items()):
        summaries[SUMMARY_KINDS[kind]].append(_summary(key, values, weights))
    return IntervalOut(
        start=b.start,
        end=b.start + interval,
        counters=[
            CounterOut(n, list(t), v, v / interval) for (n, t), v in sorted(b.counters.items())
        ],
        gauges=[ValueOut(n, list(t), v) for (n, t), (_, v) in sorted(b.gauges.items())],
        sets=[ValueOut(n, list(t), len(m)) for (n, t), m in sorted(b.sets.items())],
        events=[event for _, event in sorted(b.events, key=lambda pair: pair[0])],
        service_checks=[check for _, check in sorted(b.checks, key=lambda pair: pair[0])],
        lines=b.lines,
        invalid_lines=b.invalid_lines,
        histograms=summaries["histograms"],
        timers=summaries["timers"],
        distributions=summaries["distributions"],
    )


class GaugeTotal(msgspec.Struct):
    """A gauge's last value and when it was received (epoch seconds)."""

    name: str
    tags: list[str]
    value: float
    at: float


class SetTotal(msgspec.Struct):
    """A set's distinct members over all intervals, and how many there are."""

    name: str
    tags: list[str]
    value: int
    members: list[str]


class SummaryTotal(msgspec.Struct):
    """A histogram, timer or distribution over all intervals (no percentiles: those would
    need every sample ever received)."""

    name: str
    tags: list[str]
    count: float
    sum: float
    min: float
    max: float
    avg: float


class Totals(msgspec.Struct, kw_only=True):
    """``totals.json``: everything aggregated since the directory was created.

    Counters are summed over intervals, gauges hold their last value, sets their distinct
    members; ``flushes`` counts the interval records written.
    """

    since: float | None = None
    until: float | None = None
    flushes: int = 0
    counters: list[ValueOut] = []
    gauges: list[GaugeTotal] = []
    sets: list[SetTotal] = []
    histograms: list[SummaryTotal] = []
    timers: list[SummaryTotal] = []
    distributions: list[SummaryTotal] = []
    events: int = 0
    service_checks: int = 0
    lines: int = 0
    invalid_lines: int = 0


def add_to_totals(totals: Totals, b: Bucket, interval: float) -> Totals:
    """Fold one merged interval into the running totals; returns the new totals."""
    counters = {(c.name, tuple(c.tags)): c.value for c in totals.counters}
    for key, value in b.counters.items():
        counters[key] = counters.get(key, 0.0) + value
    gauges = {(g.name, tuple(g.tags)): (g.at, g.value) for g in totals.gauges}
    for key, (at, value) in b.gauges.items():
        if key not in gauges or at >= gauges[key][0]:
            gauges[key] = (at, value)
    sets = {(s.name, tuple(s.tags)): set(s.members) for s in totals.sets}
    for key, members in b.sets.items():
        sets.setdefault(key, set()).update(members)
    return Totals(
        since=b.start if totals.since is None else min(totals.since, b.start),
        until=max(totals.until or 0.0, b.start + interval),
        flushes=totals.flushes + 1,
        counters=[ValueOut(n, list(t), v) for (n, t), v in sorted(counters.items())],
        gauges=[GaugeTotal(n, list(t), v, at) for (n, t), (at, v) in sorted(gauges.items())],
        sets=[SetTotal(n, list(t), len(m), sorted(m)) for (n, t), m in sorted(sets.items())],
        events=totals.events + len(b.events),
        service_checks=totals.service_checks + len(b.checks),
        lines=totals.lines + b.lines,
        invalid_lines=totals.invalid_lines + b.invalid_lines,
        histograms=_summary_totals(totals, b, "h"),
        timers=_summary_totals(totals, b, "ms"),
        distributions=_summary_totals(totals, b, "d"),
    )


def _summary_totals(totals: Totals, b: Bucket, kind: str) -> list[SummaryTotal]:
    name = SUMMARY_KINDS[kind]
    merged = {(s.name, tuple(s.tags)): s for s in getattr(totals, name)}
    for (k, key), (values, weights) in b.samples.items():
        if k != kind:
            continue
        count = sum(weights)
        total = sum(v * w for v, w in zip(values, weights, strict=True))
        low, high = min(values), max(values)
        old = merged.get(key)
        if old is not None:
            count, total = count + old.count, total + old.sum
            low, high = min(low, old.min), max(high, old.max)
        merged[key] = SummaryTotal(key[0], list(key[1]), count, total, low, high, total / count)
    return [merged[key] for key in sorted(merged)]


# -- the statsd aggregator: the shared directory ----------------------------------------------


class Spool:
    """The directory the aggregator's workers share.

    ``partials/`` holds each worker's per-interval aggregates (``<start ms>-<pid>-...msgpack``,
    written to a temporary name and renamed, so never read half-written); ``workers/`` one
    empty file per live worker (``<pid>``); ``statsd.jsonl`` and ``totals.json`` the output.
    Whoever holds the ``flock`` on ``.lock`` merges.
    """

    def __init__(self, root: str) -> None:
        self.root = Path(root).absolute()
        self.partials = self.root / "partials"
        self.workers = self.root / "workers"
        self.output = self.root / "statsd.jsonl"
        self.totals = self.root / "totals.json"
        self.partials.mkdir(parents=True, exist_ok=True)
        self.workers.mkdir(exist_ok=True)
        self._lock = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._token = secrets.token_hex(4)  # two spools in one process never collide
        self._sequence = itertools.count()

    def write_partial(self, bucket: Bucket) -> None:
        """Publish one interval's aggregate of this process."""
        start = round(bucket.start * 1000)
        name = f"{start:015d}-{os.getpid()}-{self._token}-{next(self._sequence)}.msgpack"
        _write_atomically(self.partials / name, dump_bucket(bucket))

    def register(self) -> None:
        """Announce this process as a live worker."""
        (self.workers / str(os.getpid())).touch()

    def unregister(self) -> None:
        """This process stops: it will write no more partials."""
        with contextlib.suppress(FileNotFoundError):
            (self.workers / str(os.getpid())).unlink()

    def others_alive(self) -> bool:
        """True while another registered worker process is alive (stale entries are removed)."""
        for entry in self.workers.iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                if _alive(int(entry.name)):
                    return True
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        return False

    @contextlib.contextmanager
    def locked(self, wait: bool) -> Iterator[bool]:
        """Hold the merge lock; yields False (without waiting) when another process has it."""
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def ready(self, until_ms: float | None) -> dict[int, list[Path]]:
        """Partial files by interval start (ms), those starting before ``until_ms`` (all: None)."""
        groups: dict[int, list[Path]] = {}
        for path in self.partials.glob("[0-9]*.msgpack"):
            start = int(path.name.partition("-")[0])
            if until_ms is None or start < until_ms:
                groups.setdefault(start, []).append(path)
        return groups

    def read_totals(self) -> Totals:
        """The running totals (empty when there are none yet, or they are unreadable)."""
        try:
            return msgspec.json.decode(self.totals.read_bytes(), type=Totals)
        except FileNotFoundError:
            return Totals()
        except msgspec.DecodeError as exc:
            log.error("statsd: %s is unreadable (%s); totals start again", self.totals, exc)
            return Totals()

    def close(self) -> None:
        """Release the lock file's descriptor."""
        os.close(self._lock)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the statsd aggregator: the handler -------------------------------------------------------


class StatsdOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """:class:`StatsdAggregator` options (``UGSTATSD_<NAME>``).

    Attributes:
        dir: the directory for the workers' partial aggregates and the output files.
        flush_interval: seconds per interval; intervals are aligned on the clock (multiples
            of it since the epoch), so every worker agrees which interval a line belongs to.
    """

    dir: Annotated[str, msgspec.Meta(min_length=1)] = "ugram-statsd"
    flush_interval: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 10.0


class StatsdAggregator:
    """DogStatsD-compatible aggregation, merged across workers; run with ``--codec statsd``.

    Each line is aggregated in the worker that got it, in the interval of its receive time.
    After an interval ends, each worker writes its aggregate of it to ``<dir>/partials/``;
    whichever worker then holds the merge lock combines the partials of intervals that ended
    at least ``grace`` seconds ago into one line of ``<dir>/statsd.jsonl`` (see
    :class:`IntervalOut`) and updates ``<dir>/totals.json`` (see :class:`Totals`). When
    the server stops, the last worker to stop merges everything left, so the output is
    complete after a graceful shutdown.

        UGSTATSD_DIR=/var/lib/app/statsd UGSTATSD_FLUSH_INTERVAL=10 \\
            ugram serve ugram.builtin:StatsdAggregator --codec statsd --socket /run/app/dsd.sock
    """

    def __init__(self, **options: Any) -> None:
        """Raises:
        ConfigError: an invalid or unknown option (see :class:`StatsdOptions`)."""
        self.options = load_options("UGSTATSD_", StatsdOptions, options)
        self.interval = self.options.flush_interval
        self.tick_interval = min(1.0, self.interval / 4)
        self.grace = max(0.5, 2 * self.tick_interval)
        self._buckets: dict[int, Bucket] = {}
        self._spool: Spool | None = None
        self.clock: Callable[[], float] = time.time  # when intervals end (tests replace it)

    def setup(self) -> None:
        """Create the directory and register this worker."""
        self._spool = Spool(self.options.dir)
        self._spool.register()

    def handle(self, line: Line, dgram: Datagram) -> None:
        """Aggregate one line in the interval of its receive time."""
        self._bucket(int(dgram.received_at // self.interval)).add(line, dgram.received_at)

    def _bucket(self, index: int) -> Bucket:
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = Bucket(index * self.interval)
        return bucket

    def tick(self) -> None:
        """Publish the intervals that ended; merge the ones every worker had time to publish."""
        spool = self._require()
        now = self.clock()
        self._spill(int(now // self.interval))
        with spool.locked(wait=False) as mine:
            if mine:
                self._merge(spool, (now - self.grace - self.interval) * 1000)

    def teardown(self) -> None:
        """Publish everything; the last worker to stop merges everything."""
        spool = self._require()
        self._spill(None)
        spool.unregister()  # after the partials are written: see others_alive()
        if not spool.others_alive():
            with spool.locked(wait=True):
                self._merge(spool, None)
        spool.close()
        self._spool = None

    def _require(self) -> Spool:
        assert self._spool is not None, "setup() was not called"
        return self._spool

    def _spill(self, before: int | None) -> None:
        """Write the buckets of intervals before ``before`` (None: all) as partial files."""
        invalid = take_invalid_lines("statsd")
        if invalid:
            self._bucket(int(self.clock() // self.interval)).invalid_lines += invalid
        spool = self._require()
        for index in sorted(self._buckets):
            if before is None or index < before:
                bucket = self._buckets.pop(index)
                if bucket:
                    spool.write_partial(bucket)

    def _merge(self, spool: Spool, until_ms: float | None) -> None:
        groups = spool.ready(until_ms)
        if not groups:
            return
        totals = spool.read_totals()
        records = []
        for start in sorted(groups):
            merged = Bucket(start / 1000)
            for path in groups[start]:
                merged.merge(_read_partial(path))
            records.append(_encode(render_interval(merged, self.interval)) + b"\n")
            totals = add_to_totals(totals, merged, self.interval)
        with open(spool.output, "ab") as out:
            out.write(b"".join(records))
        _write_atomically(spool.totals, _encode(totals))
        for paths in groups.values():
            for path in paths:
                path.unlink(missing_ok=True)


def _read_partial(path: Path) -> Bucket:
    try:
        return load_bucket(path.read_bytes())
    except (FileNotFoundError, msgspec.DecodeError) as exc:
        log.error("statsd: skipped unreadable partial aggregate %s (%s)", path, exc)
        return Bucket(0.0)

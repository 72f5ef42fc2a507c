"""``ugram.builtin:StatsdAggregator``: DogStatsD aggregation per flush interval, merged
across workers through a shared directory (use case 2)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec

from ..codecs import take_invalid_lines
from ..codecs.statsd import Line
from ..datagram import Datagram
from ..spec import pid_alive
from .aggregate import Bucket, Totals, add_to_totals, dump_bucket, load_bucket, render_interval
from .options import load_options
from .record import encode

log = logging.getLogger("ugram.builtin.statsd")


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
                if pid_alive(int(entry.name)):
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
    at least ``grace`` seconds ago into one line of ``<dir>/statsd.jsonl`` (an
    :class:`~ugram.builtin.aggregate.IntervalOut`) and updates ``<dir>/totals.json`` (a
    :class:`~ugram.builtin.aggregate.Totals`). When the server stops, the last worker to stop
    merges everything left, so the output is complete after a graceful shutdown.

        UGSTATSD_DIR=/var/lib/app/statsd UGSTATSD_FLUSH_INTERVAL=10 \\
            ugram serve ugram.builtin:StatsdAggregator --codec statsd --socket /run/app/dsd.sock
    """

    def __init__(self, **options: Any) -> None:
        """Read the options: keyword arguments > ``UGSTATSD_*`` variables > file > defaults.

        Raises:
            ConfigError: an invalid or unknown option (see :class:`StatsdOptions`).
        """
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
        self._bucket(int(dgram.received_at // self.interval)).add(line, dgram.received_ns)

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
            records.append(encode(render_interval(merged, self.interval)) + b"\n")
            totals = add_to_totals(totals, merged, self.interval)
        with open(spool.output, "ab") as out:
            out.write(b"".join(records))
        _write_atomically(spool.totals, encode(totals))
        for paths in groups.values():
            for path in paths:
                path.unlink(missing_ok=True)


def _read_partial(path: Path) -> Bucket:
    try:
        return load_bucket(path.read_bytes())
    except (FileNotFoundError, msgspec.DecodeError) as exc:
        log.error("statsd: skipped unreadable partial aggregate %s (%s)", path, exc)
        return Bucket(0.0)

"""``ugram.builtin:StatsdAggregator``: DogStatsD aggregation per flush interval, merged
across workers through a shared directory (use case 2)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .. import context, safefs
from ..codecs import take_invalid_lines
from ..codecs.statsd import Line
from ..datagram import Datagram
from ..errors import UnsafePathError
from ..logs import RateLimited
from ..ring import Record
from ..spec import pid_alive
from .aggregate import (
    Bucket,
    Limits,
    SeriesKeys,
    Totals,
    add_to_totals,
    dump_bucket,
    load_bucket,
    render_interval,
)
from .options import load_options
from .record import encode
from .statsd_journal import BusyError, WriteAhead
from .statsd_options import StatsdOptions as StatsdOptions
from .statsd_options import make_exporter

log = logging.getLogger("ugram.builtin.statsd")
_warn = RateLimited(log)

DIR_MODE = 0o750  # the directory and its partials/ and workers/
FILE_MODE = 0o640  # statsd.jsonl and totals.json: the owner writes, its group may read
PRIVATE_MODE = 0o600  # .lock, the partial files, the workers' entries
_ADVICE = (
    "remove it, make it owned by the server's user and not writable by others (chown, "
    "chmod go-w), or choose another UGSTATSD_DIR"
)
OUTPUT, TOTALS, LOCK = "statsd.jsonl", "totals.json", ".lock"
# Partial names kept in totals.json once merged: enough for every worker of a large server to
# recover a dead one's journal minutes later (see statsd_journal), small beside the totals.
MERGED_KEPT = 4096
_PARTIAL = re.compile(r"(\d{1,18})-\d+-[0-9a-f]+-\d+\.msgpack")


class Spool:
    """The directory the aggregator's workers share.

    ``partials/`` holds each worker's per-interval aggregates (``<start ms>-<pid>-...msgpack``,
    written to a temporary name and renamed, so never read half-written); ``workers/`` one
    empty file per live worker (``<pid>``); ``journal/<slot>/`` each worker slot's
    write-ahead journal (:mod:`ugram.builtin.statsd_journal`); ``statsd.jsonl`` and
    ``totals.json`` the output. Whoever holds the ``flock`` on ``.lock`` merges.

    Every file goes through :mod:`ugram.safefs`: the directory and its subdirectories must be
    owned by root or the server's user and writable by nobody else (created 0750 when
    missing), files are opened relative to their descriptors without following symlinks and
    created with explicit modes (0640 output, 0600 the rest), whatever the umask.
    """

    def __init__(self, root: str) -> None:
        """Open (create) the directory, its subdirectories and the lock.

        Raises:
            UnsafePathError: a directory is owned by another user or writable by others, a
                component is another user's symlink, or a file there is a symlink or not
                ours (the message names it, its owner and what to do).
            OSError: a directory or the lock cannot be created.
        """
        self.path = os.path.abspath(root)
        self._dirs: list[safefs.Dir] = []
        try:
            self.root = self._open(self.path)
            self.partials = self._open(os.path.join(self.path, "partials"))
            self.workers = self._open(os.path.join(self.path, "workers"))
            for name in (OUTPUT, TOTALS):
                _check_ours(self.root, name)
            self._lock = safefs.open_file(self.root, LOCK, os.O_RDWR, PRIVATE_MODE)
        except BaseException:
            self._close_dirs()
            raise
        self._token = secrets.token_hex(4)  # two spools in one process never collide
        self._sequence = itertools.count()

    def _open(self, path: str) -> safefs.Dir:
        # Not allow_unsafe: below an unsafe directory the walk refuses before creating
        # anything, instead of creating directories there and refusing them afterwards.
        directory = safefs.open_dir(
            path, create=True, mode=DIR_MODE, what="the statsd directory", advice=_ADVICE
        )
        self._dirs.append(directory)
        if directory.kind != "private":
            raise UnsafePathError(
                f"refusing the statsd directory {path}: {directory.reason}, so another user "
                f"could plant files there for the server to write through or merge; {_ADVICE}"
            )
        return directory

    def partial_name(self, bucket: Bucket) -> str:
        """A new, unique name for ``bucket``'s partial file."""
        start = round(bucket.start * 1000)
        return f"{start:015d}-{os.getpid()}-{self._token}-{next(self._sequence)}.msgpack"

    def write_partial(self, bucket: Bucket, name: str | None = None) -> None:
        """Publish one interval's aggregate of this process (as ``name``, or a new name)."""
        name = name or self.partial_name(bucket)
        # No fsync: a partial lives one interval; a torn one after a crash is skipped.
        safefs.write_replace(self.partials, name, dump_bucket(bucket), PRIVATE_MODE, fsync=False)

    def journal_dir(self, slot: int) -> safefs.Dir:
        """``journal/<slot>``, the write-ahead journal of a worker slot (created 0750).

        Raises:
            UnsafePathError: as for the other directories.
        """
        self._open(os.path.join(self.path, "journal"))
        return self._open(os.path.join(self.path, "journal", str(slot)))

    def spilled(self, name: str) -> bool:
        """Whether the partial file ``name`` was written: it is there, or ``totals.json``
        says it was merged. In that order: a merge writes ``totals.json`` before it removes
        what it merged, so a partial missing now is listed in the totals read after."""
        try:
            os.stat(name, dir_fd=self.partials.fd, follow_symlinks=False)
        except FileNotFoundError:
            return name in self.read_totals().merged_partials
        return True

    def register(self) -> None:
        """Announce this process as a live worker."""
        os.close(safefs.open_file(self.workers, str(os.getpid()), os.O_WRONLY, PRIVATE_MODE))

    def unregister(self) -> None:
        """This process stops: it will write no more partials."""
        safefs.unlink_at(self.workers, str(os.getpid()))

    def others_alive(self) -> bool:
        """True while another registered worker process is alive (stale entries are removed)."""
        for name in os.listdir(self.workers.fd):
            if name.isdigit() and int(name) != os.getpid():
                if pid_alive(int(name)):
                    return True
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self.workers.fd)
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

    def ready(self, until_ms: float | None) -> dict[int, list[str]]:
        """Partial file names by interval start (ms), those starting before ``until_ms``
        (all: None). Names that are not a partial's, and directories, are left alone."""
        groups: dict[int, list[str]] = {}
        with os.scandir(self.partials.fd) as entries:
            names = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        for name in names:
            match = _PARTIAL.fullmatch(name)
            if match is not None:
                start = int(match.group(1))
                if until_ms is None or start < until_ms:
                    groups.setdefault(start, []).append(name)
        return groups

    def read_partial(self, name: str) -> Bucket | None:
        """The aggregate in partial file ``name``; None (logged) when it is not merged: not a
        regular file owned by root or us with a single link, or unreadable."""
        try:
            return load_bucket(safefs.read_file(self.partials, name))
        except UnsafePathError as exc:
            _warn.warning("statsd: skipped a partial aggregate that is not ours: %s", exc)
        except (OSError, msgspec.DecodeError) as exc:
            _warn.warning(
                "statsd: skipped unreadable partial aggregate %s (%s)",
                self.partials.join(name),
                exc,
            )
        return None

    def remove(self, names: list[str]) -> None:
        """Remove merged (or skipped) partial files."""
        for name in names:
            try:
                os.unlink(name, dir_fd=self.partials.fd)
            except FileNotFoundError:
                pass
            except OSError as exc:  # one that became a directory meanwhile
                _warn.warning("statsd: cannot remove %s (%s)", self.partials.join(name), exc)

    def read_totals(self) -> Totals:
        """The running totals (empty when there are none yet, or they are unreadable).

        Raises:
            UnsafePathError: ``totals.json`` is a symlink or not ours.
        """
        try:
            return msgspec.json.decode(safefs.read_file(self.root, TOTALS), type=Totals)
        except FileNotFoundError:
            return Totals()
        except msgspec.DecodeError as exc:
            log.error(
                "statsd: %s is unreadable (%s); totals start again", self.root.join(TOTALS), exc
            )
            return Totals()

    def append_output(self, data: bytes) -> None:
        """Append interval records to ``statsd.jsonl``."""
        fd = safefs.open_file(self.root, OUTPUT, os.O_WRONLY | os.O_APPEND, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def write_totals(self, data: bytes) -> None:
        """Replace ``totals.json`` (atomically: a fresh file, renamed)."""
        safefs.write_replace(self.root, TOTALS, data, FILE_MODE)

    def close(self) -> None:
        """Release the lock file's and the directories' descriptors."""
        os.close(self._lock)
        self._close_dirs()

    def _close_dirs(self) -> None:
        for directory in self._dirs:
            directory.close()


def _interval_end(received_ns: list[int], start: int, index: int, interval: float) -> int:
    """Where the run of datagrams from ``start`` on received in interval ``index`` ends: the
    first of another interval, or the end."""
    # The interval of a time only grows with it: when the times are in order (as received,
    # unless the clock was set back) and the last is in the interval, all are.
    last = int(received_ns[-1] / 1e9 // interval)
    if start == 0 and last == index and received_ns == sorted(received_ns):
        return len(received_ns)
    at = math.nan  # those of one read share their float time: each looked at once
    for k in range(start + 1, len(received_ns)):
        if received_ns[k] / 1e9 != at:
            at = received_ns[k] / 1e9
            if int(at // interval) != index:
                return k
    return len(received_ns)


def _check_ours(directory: safefs.Dir, name: str) -> None:
    """Refuse, at start-up, an output file the merge would refuse later."""
    try:
        info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(
            f"{directory.join(name)} is a symbolic link; refusing to follow it (remove it)"
        )
    safefs.check_existing(info, directory.join(name))


class StatsdAggregator:
    """DogStatsD-compatible aggregation across workers; run with ``--codec statsd``.

    Two outputs (``output``): ``prometheus`` exposes the series on the server's
    ``--metrics`` endpoint, merged by the supervisor from every worker's export ring
    (:mod:`ugram.builtin.export`: each batch's contribution is published there before the
    batch is acknowledged, so a killed worker loses nothing and a replay counts once);
    ``jsonl`` writes per-interval records and running totals into ``dir`` (each batch is
    journaled before it is acknowledged, :mod:`ugram.builtin.statsd_journal`, so a killed
    worker loses nothing there either):

    Each line is aggregated in the worker that got it, in the interval of its receive time.
    After an interval ends, each worker writes its aggregate of it to ``<dir>/partials/``;
    whichever worker then holds the merge lock combines the partials of intervals that ended
    at least ``grace`` seconds ago into one line of ``<dir>/statsd.jsonl`` (an
    :class:`~ugram.builtin.aggregate.IntervalOut`) and updates ``<dir>/totals.json`` (a
    :class:`~ugram.builtin.aggregate.Totals`). When the server stops, the last worker to stop
    merges everything left, so the output is complete after a graceful shutdown.

        ugram serve ugram.builtin:StatsdAggregator --codec statsd --socket /run/app/dsd.sock \\
            --metrics 127.0.0.1:9102
        UGSTATSD_OUTPUT=jsonl UGSTATSD_DIR=/var/lib/app/statsd \\
            ugram serve ugram.builtin:StatsdAggregator --codec statsd --socket /run/app/dsd.sock
    """

    def __init__(self, **options: Any) -> None:
        """Read the options: keyword arguments > ``UGSTATSD_*`` variables > file > defaults.

        Raises:
            ConfigError: an invalid or unknown option (see :class:`StatsdOptions`), an
                output the server cannot give, or a mapping file that does not load.
        """
        self.options = load_options("UGSTATSD_", StatsdOptions, options)
        o = self.options
        self.output = o.resolved_output(context.export_fd() >= 0)
        self.jsonl = self.output in ("jsonl", "both")
        self.exporter = make_exporter(o) if self.output != "jsonl" else None
        self.limits = Limits(
            o.max_series, o.max_set_members, o.max_members, o.series_ttl, o.max_tags
        )
        self.interval = self.options.flush_interval
        self.tick_interval = min(1.0, self.interval / 4)
        self.grace = max(0.5, 2 * self.tick_interval)
        self._buckets: dict[int, Bucket] = {}
        self._keys = SeriesKeys(o.max_tags, o.max_series)  # shared by every interval's bucket
        self._index: int | None = None  # the interval the last line went to, and its bucket
        self._current = Bucket(0.0)
        self._spool: Spool | None = None
        self._ahead: WriteAhead | None = None  # the jsonl journal, from the first batch on
        self.clock: Callable[[], float] = time.time  # when intervals end (tests replace it)

    def setup(self) -> None:
        """Create (or check) the directory and register this worker (``jsonl`` output).

        Raises:
            UnsafePathError: the directory or a file in it is not safe to use (see
                :class:`Spool`); the server stops (exit 3) with the message.
        """
        if not self.jsonl:
            return
        try:
            self._spool = Spool(self.options.dir)
        except UnsafePathError as exc:
            raise UnsafePathError(
                f"StatsdAggregator (UGSTATSD_DIR={self.options.dir}): {exc}"
            ) from None
        self._spool.register()

    def handle_batch(self, packets: list[list[Line]], records: list[Record]) -> None:
        """Aggregate each datagram's lines (what the worker calls: ``records`` are the
        ring's, one beside each datagram's lines; a Datagram a record would cost more than
        aggregating its line).

        Raises:
            ExportError: the export ring cannot take the batch (corrupt, supervisor gone).
        """
        if self.exporter is not None:
            invalid = take_invalid_lines("statsd")
            self.exporter.handle_batch(packets, records, invalid)
            if self.jsonl and invalid:
                self._bucket(int(self.clock() // self.interval)).invalid_lines += invalid
        if self.jsonl:
            if self._ahead is None and context.worker_index() >= 0:
                self._adopt()
            ahead = self._ahead
            if ahead is not None:
                # A long interval at a high rate: spilled now, the batch that made its log
                # so long acknowledged (spilled before, its replay would count twice).
                for index in ahead.oversized():
                    self._spill_one(index)
                packets, records = ahead.unreplayed(packets, records)
                ahead.settle()
                ahead.write(records)  # before the batch is acknowledged
            self._aggregate(packets, records)

    def _adopt(self, wait: bool = True) -> None:
        """Own this slot's journal and aggregate what a dead predecessor acknowledged but
        never spilled (see :mod:`ugram.builtin.statsd_journal`).

        Raises:
            BusyError: another process owns the slot's journal, and not ``wait``.
        """
        spool = self._require()
        slot = context.worker_index()
        self._ahead = WriteAhead(spool.journal_dir(slot), spool.spilled, self.interval, wait)
        packets, records = self._ahead.take_recovered()
        if records:
            self._aggregate(packets, records)

    def _adopt_if_free(self) -> None:
        """:meth:`_adopt` in a worker that got no batch yet, unless another process owns the
        slot's journal (a predecessor still in its teardown: a later tick tries again)."""
        if self._ahead is None and context.worker_index() >= 0:
            with contextlib.suppress(BusyError):
                self._adopt(wait=False)

    def _aggregate(self, packets: list[list[Line]], records: list[Record]) -> None:
        """Aggregate each datagram's lines in the interval of its receive time."""
        received = [record[2] for record in records]
        interval, start = self.interval, 0
        while start < len(received):
            index = int(received[start] / 1e9 // interval)  # as handle's received_at
            stop = _interval_end(received, start, index, interval)
            bucket = self._current if index == self._index else self._bucket(index)
            bucket.add_packets(packets, received, start, stop)
            start = stop

    def handle(self, line: Line, dgram: Datagram) -> None:
        """Aggregate one line (:meth:`handle_batch`, one line at a time; in the JSON-lines
        output only: the worker calls :meth:`handle_batch`)."""
        index = int(dgram.received_at // self.interval)
        bucket = self._current if index == self._index else self._bucket(index)
        bucket.add(line, dgram.received_ns)

    def _bucket(self, index: int) -> Bucket:
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = Bucket(index * self.interval, self.limits, self._keys)
            self._buckets[index] = bucket
        self._index, self._current = index, bucket
        return bucket

    def tick(self) -> None:
        """Publish the intervals that ended; merge the ones every worker had time to publish.
        A worker that got no batch yet adopts its slot's journal here, if the slot is free."""
        if not self.jsonl:
            return
        spool = self._require()
        self._adopt_if_free()
        now = self.clock()
        self._spill(int(now // self.interval))
        with spool.locked(wait=False) as mine:
            if mine:
                self._merge(spool, (now - self.grace - self.interval) * 1000)

    def teardown(self) -> None:
        """Publish everything; the last worker to stop merges everything."""
        if not self.jsonl:
            return
        spool = self._require()
        self._adopt_if_free()  # no batch came: what a dead predecessor left is this stop's
        self._spill(None)
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None
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
        logged = self._ahead.journal.indices() if self._ahead is not None else []
        for index in sorted(set(self._buckets) | set(logged)):
            if before is None or index < before:
                self._spill_one(index)

    def _spill_one(self, index: int) -> None:
        """Write interval ``index``'s bucket as a partial file (sealed in the journal first)
        and forget its log."""
        spool, ahead = self._require(), self._ahead
        if index == self._index:  # written now: a later line needs a new bucket
            self._index = None
        bucket = self._buckets.pop(index, None)
        if bucket:
            name = spool.partial_name(bucket)
            if ahead is not None:  # the seal first: see statsd_journal
                ahead.seal(index, name)
            spool.write_partial(bucket, name)
        if ahead is not None:
            ahead.forget(index)

    def _merge(self, spool: Spool, until_ms: float | None) -> None:
        found = spool.ready(until_ms)
        if not found:
            return
        before = totals = spool.read_totals()
        # Merged already, by a merge killed before it removed them: removed, not merged again.
        done = set(before.merged_partials)
        groups = {start: [n for n in names if n not in done] for start, names in found.items()}
        records = []
        for start in sorted(groups):
            if not groups[start]:
                continue
            merged = Bucket(start / 1000, self.limits)
            for name in groups[start]:
                part = spool.read_partial(name)
                if part is None:
                    merged.skipped_partials += 1
                else:
                    merged.merge(part)
            totals = add_to_totals(totals, merged, self.interval, self.limits)
            gauges = {(g.name, tuple(g.tags)): g.value for g in totals.gauges}
            records.append(encode(render_interval(merged, self.interval, gauges)) + b"\n")
        names = [name for names in groups.values() for name in names]
        # This merge's own names all stay: one killed after writing the totals must find them.
        room = MERGED_KEPT - len(names)
        recent = [*(before.merged_partials[-room:] if room > 0 else []), *names]
        totals = msgspec.structs.replace(totals, merged_partials=recent)
        if records:
            spool.append_output(b"".join(records))
        spool.write_totals(encode(totals))
        spool.remove([name for names in found.values() for name in names])
        self._report(before, totals)

    def _report(self, before: Totals, after: Totals) -> None:
        """Log (rate-limited) what the limits refused and pruned in this merge."""
        lines = after.refused_lines - before.refused_lines
        series = after.refused_series - before.refused_series
        members = after.refused_members - before.refused_members
        if lines or series or members:
            o = self.options
            _warn.warning(
                "statsd: refused %d line(s) (max_series=%d, max_tags=%d, or a sum that would "
                "overflow), %d series (max_series, or an overflow) and %d set member(s) "
                "(max_set_members=%d, max_members=%d)",
                lines,
                o.max_series,
                o.max_tags,
                series,
                members,
                o.max_set_members,
                o.max_members,
            )
        pruned = after.pruned_series - before.pruned_series
        if pruned:
            log.info(
                "statsd: dropped %d series not updated for %gs from the totals",
                pruned,
                self.options.series_ttl,
            )

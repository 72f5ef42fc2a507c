"""The ``jsonl`` output's write-ahead journal: a SIGKILLed worker's aggregate survives it.

A worker acknowledges a batch when ``handle_batch`` returns, long before the interval's
aggregate is written as a partial file. So, before returning, the aggregator appends the
batch's records (payloads and receive times) to its slot's journal, one file per interval:
``<dir>/journal/<slot>/<interval>.log``. When it spills an interval it appends a *seal*
naming the partial file it is about to write, writes the partial, then removes the log.

A worker that starts in a slot takes the slot's lock (the previous owner is dead, or done
with its teardown) and adopts what is there: in each log, the records after the last seal
whose partial exists (or was merged: ``totals.json`` lists the partials merged lately) were
acknowledged but never spilled, and it aggregates them again; each log is cut after its
last whole entry (a write torn by the kill), rewritten without its seals, and goes on as the
new owner's. The ring replays the batch the dead worker had in hand: its records that were
journaled are skipped (logged), the rest count. A log past :data:`MAX_LOG` bytes (a long
interval at a high rate) has its interval spilled early, at the start of the next batch (the
one that made it so is acknowledged by then), as a partial of its own (the merge adds the
partials of one interval). So whenever a worker dies, each record counts once:

* killed before its batch was journaled: nothing of it is in the log; it is replayed;
* after: it is in the log (recovered) and skipped in the replay (by each record's position
  in the ring of the same server run: a batch of two intervals is two entries, and a kill
  between them skips only the records of the first);
* between a seal and its partial: the seal names a partial that does not exist, so the
  records before it are recovered; between the partial and the log's removal: the partial
  exists (or was merged), so they are not.

What the page cache holds survives a killed process; a crash of the machine is not covered
(no fsync, as for the partial files, which live one interval).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec

from .. import context, safefs
from ..codecs.base import CodecError
from ..codecs.statsd import Line, make_decoder
from ..ring import Record

log = logging.getLogger("ugram.builtin.statsd")

FILE_MODE = 0o600
HEADER = struct.Struct("<II")  # the entry's length, its CRC-32
RECORDS, SEAL = 0, 1
LOCK = ".lock"
MAX_ENTRY = 1 << 30  # a length above it is a torn or foreign header, never an entry
MAX_LOG = 16 << 20  # bytes of one interval's log: past it, the interval is spilled early


class BusyError(Exception):
    """The slot's journal is another live process's."""


class Entry(msgspec.Struct, array_like=True):
    """One journal entry: a batch's records of one interval, or a seal."""

    kind: int
    server: str = ""  # the server run whose ring the positions are in
    resets: int = 0
    ends: list[int] = []  # each record's end in the worker's ring (with ``resets``)
    payloads: list[bytes] = []
    received: list[int] = []  # each record's receive time, epoch ns
    partial: str = ""  # a seal: the partial file written after it


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode


def frame(entry: Entry) -> bytes:
    """``entry`` as it is appended: length, CRC-32, msgpack."""
    body = _encode(entry)
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def read_entries(data: bytes) -> tuple[list[Entry], int]:
    """The whole entries at the start of ``data``, and where they end (a torn or corrupt
    entry, and what follows it, is not read)."""
    entries, at = [], 0
    while at + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, at)
        body = data[at + HEADER.size : at + HEADER.size + length]
        if length > MAX_ENTRY or len(body) != length or zlib.crc32(body) != crc:
            break
        try:
            entries.append(_decode(body))
        except msgspec.DecodeError:
            break
        at += HEADER.size + length
    return entries, at


@dataclass
class Recovered:
    """What a slot's journal held that no partial has: records to aggregate again, and the
    ring positions of every record journaled (a replay of one must be skipped)."""

    payloads: list[bytes] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    journaled: dict[tuple[str, int], set[int]] = field(default_factory=dict)

    def add(self, other: Recovered) -> None:
        """Take ``other``'s records and positions too."""
        self.payloads += other.payloads
        self.received += other.received
        for key, ends in other.journaled.items():
            self.journaled.setdefault(key, set()).update(ends)


def unsealed_entries(entries: list[Entry], spilled: Callable[[str], bool]) -> list[Entry]:
    """The record entries after the last seal whose partial was ``spilled`` (a seal whose
    partial was never written covers nothing)."""
    kept: list[Entry] = []
    for entry in entries:
        if entry.kind != SEAL:
            kept.append(entry)
        elif spilled(entry.partial):  # everything before it is in that partial
            kept = []
    return kept


def recovered(entries: list[Entry]) -> Recovered:
    """The records of ``entries`` and their positions."""
    out = Recovered()
    for entry in entries:
        out.payloads.extend(entry.payloads)
        out.received.extend(entry.received)
        out.journaled.setdefault((entry.server, entry.resets), set()).update(entry.ends)
    return out


class Journal:
    """One worker slot's journal directory, owned by one process at a time (its lock)."""

    def __init__(self, directory: safefs.Dir, wait: bool = True) -> None:
        """Own ``directory`` (``<dir>/journal/<slot>``): wait for its lock (``wait``),
        saying that the wait is on purpose (a SIGHUP predecessor may still be in its
        teardown).

        Raises:
            BusyError: the lock is another process's, and not ``wait``.
            UnsafePathError: the lock file is not ours.
            OSError: it cannot be opened.
        """
        self.dir = directory
        self._lock = safefs.open_file(directory, LOCK, os.O_RDWR, FILE_MODE)
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    os.close(self._lock)
                    raise BusyError(f"{directory.path} is another worker's") from None
                context.keep_alive()
                time.sleep(0.05)
        self._files: dict[int, int] = {}  # interval index -> its log, open for appending
        self.sizes: dict[int, int] = {}  # interval index -> its log's bytes

    def adopt(self, spilled: Callable[[str], bool]) -> Recovered:
        """Read every log left in the directory and return what was acknowledged but never
        spilled (all logs together). Each log is left holding just that: a torn entry at
        its end (a kill mid-write) is cut, and one with seals is rewritten (atomically)
        without them and what they cover, so no later reading depends on how long
        ``totals.json`` remembers a merged partial.

        Raises:
            UnsafePathError: a log there is not ours.
        """
        total = Recovered()
        for index in self._indices():
            fd = self._open(index)
            data = _read_all(fd)
            entries, end = read_entries(data)
            if end < len(data):
                log.warning(
                    "statsd: %s: a torn entry at byte %d (a worker killed while writing): "
                    "its batch was not acknowledged, and is replayed",
                    self.dir.join(_name(index)),
                    end,
                )
                os.ftruncate(fd, end)
            self.sizes[index] = end
            kept = unsealed_entries(entries, spilled)
            if len(kept) != len(entries):
                self._rewrite(index, kept)
            total.add(recovered(kept))
        return total

    def _rewrite(self, index: int, entries: list[Entry]) -> None:
        """Replace interval ``index``'s log with ``entries`` (a fresh file, renamed)."""
        data = b"".join(map(frame, entries))
        safefs.write_replace(self.dir, _name(index), data, FILE_MODE, fsync=False)
        os.close(self._files.pop(index))
        self._open(index)
        self.sizes[index] = len(data)

    def append(self, index: int, entry: Entry) -> None:
        """Append one entry to interval ``index``'s log (one write: O_APPEND)."""
        fd = self._files.get(index)
        if fd is None:
            fd = self._open(index)
        encoded = frame(entry)
        data = memoryview(encoded)
        start = self.sizes[index] if index in self.sizes else os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:  # disk full after a short write: no torn entry before later ones
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self.sizes[index] = start + len(encoded)

    def forget(self, index: int) -> None:
        """Interval ``index`` is in a partial file: remove its log."""
        fd = self._files.pop(index, None)
        self.sizes.pop(index, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_name(index), dir_fd=self.dir.fd)

    def indices(self) -> list[int]:
        """The intervals that have a log."""
        return sorted(set(self._indices()) | set(self._files))

    def close(self) -> None:
        """Close the logs and release the lock (the directory is left to its owner)."""
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        os.close(self._lock)  # releases the flock

    def _open(self, index: int) -> int:
        fd = safefs.open_file(self.dir, _name(index), os.O_RDWR | os.O_APPEND, FILE_MODE)
        self._files[index] = fd
        return fd

    def _indices(self) -> Iterator[int]:
        for name in os.listdir(self.dir.fd):
            stem, dot, suffix = name.partition(".")
            if dot and suffix == "log" and stem.isdigit():
                yield int(stem)


def _name(index: int) -> str:
    return f"{index}.log"


def _read_all(fd: int) -> bytes:
    chunks, at = [], 0
    while chunk := os.pread(fd, 1 << 20, at):
        chunks.append(chunk)
        at += len(chunk)
    return b"".join(chunks)


class WriteAhead:
    """A worker's side of its slot's journal: what it adopts, the replayed records it
    skips, each batch journaled before it is acknowledged, and the seals of its spills."""

    def __init__(
        self,
        directory: safefs.Dir,
        spilled: Callable[[str], bool],
        interval: float,
        wait: bool = True,
    ) -> None:
        """Own ``directory``'s journal (see :class:`Journal`) and read what it holds;
        ``spilled`` says whether a partial was written, ``interval`` is the flush interval.

        Raises:
            BusyError: another process owns it, and not ``wait``.
            UnsafePathError: a file there is not ours.
            OSError: one cannot be opened.
        """
        self.journal = Journal(directory, wait)
        self.interval = interval
        try:
            self._found = self.journal.adopt(spilled)
        except BaseException:  # the slot is free again: a retry must not wait on itself
            self.journal.close()
            raise
        self._journaled = self._found.journaled
        self._later: set[int] = set()  # logs to remove once the replay is over

    def take_recovered(self) -> tuple[list[list[Line]], list[Record]]:
        """The adopted records to aggregate again, decoded, beside records like the ring's."""
        found, self._found = self._found, Recovered()
        decode = make_decoder(Line)
        assert decode is not None
        packets, records = [], []
        for payload, received in zip(found.payloads, found.received, strict=True):
            with contextlib.suppress(CodecError):  # none: each was decoded once already
                packets.append(decode(payload))
                records.append(Record(payload, b"", received, -1, -1, -1))
        if records:
            log.info(
                "statsd: recovered %d record(s) a previous worker %d acknowledged but had "
                "not written out yet (its journal)",
                len(records),
                context.worker_index(),
            )
        return packets, records

    def unreplayed(
        self, packets: list[list[Line]], records: list[Record]
    ) -> tuple[list[list[Line]], list[Record]]:
        """The records of a replayed batch that the dead predecessor had not journaled
        (all of them once the replay is over)."""
        if not self._journaled:
            return packets, records
        ends = self._journaled.get((context.server_id(), context.ring_resets()), set())
        keep = [i for i, record in enumerate(records) if context.record_end(record) not in ends]
        last = context.record_end(records[-1]) if records else -1
        if not ends or last < 0 or last > max(ends):
            self._journaled = {}  # positions only grow: the rest of the ring is new
        if len(keep) == len(records):
            return packets, records
        log.info(
            "statsd: skipped %d replayed record(s) already journaled", len(records) - len(keep)
        )
        return [packets[i] for i in keep], [records[i] for i in keep]

    def write(self, records: list[Record]) -> None:
        """Journal ``records``, one entry per interval they fall in."""
        server, resets, interval = context.server_id(), context.ring_resets(), self.interval
        by_interval: dict[int, Entry] = {}
        for record in records:
            index = int(record[2] / 1e9 // interval)
            entry = by_interval.get(index)
            if entry is None:
                entry = by_interval[index] = Entry(RECORDS, server, resets, [], [], [])
            entry.ends.append(context.record_end(record))
            entry.payloads.append(record[0])
            entry.received.append(record[2])
        for index, entry in by_interval.items():
            self.journal.append(index, entry)

    def seal(self, index: int, partial: str) -> None:
        """Say, before it is written, which partial file holds interval ``index``."""
        self.journal.append(index, Entry(SEAL, partial=partial))

    def forget(self, index: int) -> None:
        """Interval ``index`` is written out (or held nothing): remove its log, once the
        replay of the dead predecessor's batch is over (until then the log's positions say
        which replayed records to skip, should this worker die too)."""
        if self._journaled:
            self._later.add(index)
            return
        self.journal.forget(index)

    def settle(self) -> None:
        """Remove the logs :meth:`forget` kept for the replay, once it is over."""
        if not self._journaled and self._later:
            for index in sorted(self._later):
                self.journal.forget(index)
            self._later.clear()

    def oversized(self) -> list[int]:
        """The intervals whose log holds more than :data:`MAX_LOG` bytes: to spill now,
        instead of holding a long interval's datagrams (an hour's, at a high rate) on disk."""
        return [index for index, size in self.journal.sizes.items() if size > MAX_LOG]

    def close(self) -> None:
        """Close the logs and release the slot (the logs :meth:`forget` kept stay: sealed,
        their partials written, a successor drops them)."""
        self.journal.close()

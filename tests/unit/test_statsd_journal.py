"""The jsonl output's write-ahead journal (ugram/builtin/statsd_journal.py): what a
successor recovers, at every point a worker can die, and that a merge counts a partial once.

tests/exposition/test_exposition.py kills real workers mid-flood; these place the death
exactly: a torn entry, a seal without its partial, a partial merged before the successor
looked, a merge killed before it removed its partials.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ugram.builtin import StatsdAggregator
from ugram.builtin.aggregate import Bucket
from ugram.builtin.statsd import Spool
from ugram.builtin.statsd_journal import (
    HEADER,
    RECORDS,
    SEAL,
    Entry,
    Journal,
    WriteAhead,
    frame,
    read_entries,
    recovered,
    unsealed_entries,
)
from ugram.codecs.statsd import parse_packet
from ugram.errors import UnsafePathError
from ugram.ring import Record

NS = 1_000_000_000


def records(*payloads: bytes, server: str = "s1", start: int = 0) -> Entry:
    ends = [start + 100 * (i + 1) for i in range(len(payloads))]
    return Entry(RECORDS, server, 0, ends, list(payloads), [7 * NS] * len(payloads))


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(str(tmp_path / "statsd"))


def test_a_torn_last_entry_is_cut_and_not_recovered(spool: Spool) -> None:
    journal = Journal(spool.journal_dir(0))
    journal.append(0, records(b"a:1|c"))
    journal.append(0, records(b"a:2|c", start=100))
    journal.close()
    log = Path(spool.path, "journal", "0", "0.log")
    whole = log.stat().st_size
    with log.open("ab") as file:  # killed in the middle of its third write
        file.write(frame(records(b"a:4|c", start=200))[:-3])

    successor = Journal(spool.journal_dir(0))
    found = successor.adopt(spool.spilled)

    assert found.payloads == [b"a:1|c", b"a:2|c"]
    assert found.journaled == {("s1", 0): {100, 200}}
    assert log.stat().st_size == whole  # cut: what the successor appends is read next time
    successor.append(0, records(b"a:8|c", start=300))
    entries, end = read_entries(log.read_bytes())
    assert [e.payloads for e in entries] == [[b"a:1|c"], [b"a:2|c"], [b"a:8|c"]]
    assert end == log.stat().st_size
    successor.close()


def test_a_seal_covers_what_precedes_it_only_once_its_partial_is_written(
    spool: Spool,
) -> None:
    entries = [records(b"a:1|c"), Entry(SEAL, partial="p1"), records(b"a:2|c", start=100)]
    assert recovered(unsealed_entries(entries, lambda name: name == "p1")).payloads == [b"a:2|c"]
    # killed between the seal and its partial: nothing before the seal is anywhere else
    both = recovered(unsealed_entries(entries, lambda name: False))
    assert both.payloads == [b"a:1|c", b"a:2|c"]


def test_a_partial_counts_as_written_when_present_or_merged(spool: Spool) -> None:
    bucket = Bucket(0.0)
    bucket.add(parse_packet(b"a:1|c")[0], 0)
    present = spool.partial_name(bucket)
    spool.write_partial(bucket, present)
    assert spool.spilled(present)
    assert not spool.spilled("merged-earlier.msgpack")
    # A merge lists what it merged, then removes it: read at the moment of the question.
    spool.write_totals(b'{"merged_partials": ["merged-earlier.msgpack"]}')
    assert spool.spilled("merged-earlier.msgpack")
    assert not spool.spilled("never-written.msgpack")


def aggregator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StatsdAggregator:
    monkeypatch.setenv("UGSTATSD_DIR", str(tmp_path / "statsd"))
    monkeypatch.setenv("UGSTATSD_OUTPUT", "jsonl")
    agg = StatsdAggregator()
    agg.setup()
    return agg


def test_a_merge_killed_before_removing_its_partials_does_not_merge_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agg = aggregator(tmp_path, monkeypatch)
    spool = agg._require()
    bucket = Bucket(0.0)
    bucket.add(parse_packet(b"a:5|c")[0], 0)
    spool.write_partial(bucket)
    remove = spool.remove
    monkeypatch.setattr(spool, "remove", lambda names: None)  # killed before the removal
    agg._merge(spool, None)
    monkeypatch.setattr(spool, "remove", remove)
    agg._merge(spool, None)  # the next merge finds the partial still there

    totals = spool.read_totals()
    assert [(c.name, c.value) for c in totals.counters] == [("a", 5.0)]
    assert totals.flushes == 1
    assert not os.listdir(spool.partials.fd)
    agg.teardown()


def test_journaled_positions_of_another_server_run_skip_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A journal left by a server that was killed whole: its ring positions mean nothing in
    # the new server's rings, whose records must all count.
    entries = [records(b"a:1|c", server="old")]
    found = recovered(unsealed_entries(entries, lambda name: False))
    assert found.journaled == {("old", 0): {100}}
    ahead = WriteAhead(Spool(str(tmp_path / "statsd")).journal_dir(0), lambda n: False, 10.0)
    ahead._journaled = found.journaled
    monkeypatch.setattr("ugram.context.server_id", lambda: "new")
    monkeypatch.setattr("ugram.context.record_end", lambda record: 100)
    packets = [parse_packet(b"b:1|c")]
    record = Record(b"b:1|c", b"", 7 * NS, -1, -1, -1)
    assert ahead.unreplayed(packets, [record]) == (packets, [record])
    ahead._journaled = found.journaled
    monkeypatch.setattr("ugram.context.server_id", lambda: "old")  # the same run: skipped
    assert ahead.unreplayed(packets, [record]) == ([], [])
    ahead.close()


def test_frames_hold_their_length_and_checksum() -> None:
    data = frame(records(b"x:1|c"))
    length, _ = HEADER.unpack_from(data)
    assert length == len(data) - HEADER.size
    assert read_entries(data[:-1]) == ([], 0)
    corrupt = data[: HEADER.size] + bytes([data[HEADER.size] ^ 1]) + data[HEADER.size + 1 :]
    assert read_entries(corrupt) == ([], 0)


def test_a_long_interval_is_spilled_early_and_still_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An hour's interval at a high rate would hold its datagrams on the disk for an hour:
    # past MAX_LOG bytes the interval goes out as a partial of its own, its log removed.
    monkeypatch.setenv("UGSTATSD_FLUSH_INTERVAL", "3600")
    monkeypatch.setattr("ugram.builtin.statsd_journal.MAX_LOG", 2000)
    monkeypatch.setattr("ugram.context.worker_index", lambda: 0)
    monkeypatch.setattr("ugram.context.server_id", lambda: "s")
    monkeypatch.setattr("ugram.context.ring_resets", lambda: 0)
    ends: dict[int, int] = {}
    monkeypatch.setattr("ugram.context.record_end", lambda record: ends[id(record)])
    agg = aggregator(tmp_path, monkeypatch)
    spool = agg._require()
    for batch in range(40):
        records = [Record(b"c:1|c", b"", 7 * NS, -1, -1, -1) for _ in range(10)]
        ends.update({id(r): 100 * (batch * 10 + i + 1) for i, r in enumerate(records)})
        agg.handle_batch([parse_packet(r.payload) for r in records], records)
        # Until it is acknowledged, the batch's positions stay journaled: a kill now would
        # replay it, and the replay must be skipped (its lines are in the aggregate).
        (log,) = Path(spool.path, "journal", "0").glob("*.log")
        last = read_entries(log.read_bytes())[0][-1]
        assert last.ends == [ends[id(r)] for r in records]
    early = spool.ready(None)
    assert sum(map(len, early.values())) >= 2  # spilled before the interval ended
    assert all(size <= 2000 + 400 for size in agg._ahead.journal.sizes.values())  # type: ignore[union-attr]
    agg.teardown()  # the last worker: merges everything
    totals = Spool(spool.path).read_totals()
    assert [(c.name, c.value) for c in totals.counters] == [("c", 400.0)]
    assert totals.lines == 400


def test_adoption_leaves_each_log_without_its_seals(spool: Spool) -> None:
    # What it recovers no longer depends on totals.json remembering the sealed partial.
    journal = Journal(spool.journal_dir(0))
    journal.append(3, records(b"a:1|c"))
    journal.append(3, Entry(SEAL, partial="gone.msgpack"))  # its partial was never written
    journal.append(3, records(b"a:2|c", start=100))
    journal.append(3, Entry(SEAL, partial="there.msgpack"))
    journal.append(3, records(b"a:4|c", start=200))
    journal.close()
    successor = Journal(spool.journal_dir(0))
    found = successor.adopt(lambda name: name == "there.msgpack")
    assert found.payloads == [b"a:4|c"]
    entries, _ = read_entries(Path(spool.path, "journal", "0", "3.log").read_bytes())
    assert [(e.kind, e.payloads) for e in entries] == [(RECORDS, [b"a:4|c"])]
    assert successor.adopt(lambda name: False).payloads == [b"a:4|c"]  # the same, afresh
    successor.close()


def test_a_failed_adoption_frees_the_slot(spool: Spool, tmp_path: Path) -> None:
    directory = spool.journal_dir(0)
    log = Path(spool.path, "journal", "0", "5.log")
    log.write_bytes(frame(records(b"a:1|c")))
    os.link(log, tmp_path / "planted")  # two links: not a file the journal may trust
    with pytest.raises(UnsafePathError):
        WriteAhead(directory, spool.spilled, 10.0)
    (tmp_path / "planted").unlink()
    ahead = WriteAhead(directory, spool.spilled, 10.0, wait=False)  # not BusyError: free
    assert ahead.take_recovered()[1][0].payload == b"a:1|c"
    ahead.close()


def test_a_merge_keeps_every_name_it_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ugram.builtin.statsd.MERGED_KEPT", 3)
    agg = aggregator(tmp_path, monkeypatch)
    spool = agg._require()
    spool.write_totals(b'{"merged_partials": ["old1", "old2", "old3"]}')
    for start in (0.0, 10.0, 20.0, 30.0):
        bucket = Bucket(start)
        bucket.add(parse_packet(b"a:1|c")[0], int(start * NS))
        spool.write_partial(bucket)
    agg._merge(spool, None)
    kept = spool.read_totals().merged_partials
    assert len(kept) == 4
    assert not {"old1", "old2", "old3"} & set(kept)
    agg.teardown()

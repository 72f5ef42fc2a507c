"""After a chaos run: what was sent, what was handled, by which process, and in what order —
checked against the delivery promises of README.md and docs/ (each check says which)."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

RECORD = re.compile(rb'\{"s":"s(\d+)","q":(\d+)\}')
# The supervisor's liveness kills: "worker 2 (pid 812) unresponsive for more than 3s: ..."
TIMEOUT_KILL = re.compile(r"\] ugram\.supervisor: (receiver|worker \d+) \(pid \d+\) .*killing it")
REFUSED = {"BrokenPipeError", "FileNotFoundError", "ConnectionRefusedError"}
MAX_STALL = 15.0  # seconds: a freeze (3 s) and a restart, twice over, and then some
RSS_CHECK_EVERY = 1024  # records between two memory checks at most (ugram/workers/loop.py)


@dataclass
class Records:
    """What the handler wrote, one ``<pid>.log`` per worker process."""

    lines: int = 0  # every record handled, duplicates included
    malformed: int = 0  # lines that are not a record the senders send
    disorder: int = 0  # within one process, a sender's record after a later one
    repeats: int = 0  # within one process, a sender's record twice in a row
    processes: int = 0  # worker processes that handled something
    per_process: list[tuple[int, int]] = field(default_factory=list)  # (slot, records)
    seen: dict[int, bytearray] = field(default_factory=dict)  # per sender: times seen, by seq
    phantom: int = 0  # records with a sequence number that was never sent


def read_records(out_dir: Path, sent: dict[int, int]) -> Records:
    """Count every handled record by sender and sequence number, and check each process's
    order (sender ``i`` (named ``s<i>``) sent seq 0 .. sent[i] - 1)."""
    found = Records(seen={sender: bytearray(n) for sender, n in sent.items()})
    for file in sorted(out_dir.glob("*.log")):
        data = file.read_bytes()
        lines = data.count(b"\n")
        pairs = RECORD.findall(data)
        found.lines += lines
        found.malformed += lines - len(pairs)
        found.processes += bool(lines)
        found.per_process.append((int(file.stem.split("-", 1)[1]), lines))  # <pid>-<slot>
        last: dict[int, int] = {}
        for raw_sender, raw_seq in pairs:
            sender, seq = int(raw_sender), int(raw_seq)
            before = last.get(sender, -1)
            found.repeats += seq == before
            found.disorder += seq < before
            last[sender] = seq
            if seq >= sent.get(sender, 0):
                found.phantom += 1
                continue
            counts = found.seen[sender]
            if counts[seq] < 255:
                counts[seq] += 1
    return found


def dead_letters(path: Path) -> set[tuple[int, int]]:
    """(sender, seq) of each record moved to the dead-letter file."""
    if not path.exists():
        return set()
    letters = set()
    for line in path.read_text().splitlines():
        match = RECORD.fullmatch(base64.b64decode(json.loads(line)["data_base64"]))
        if match:
            letters.add((int(match.group(1)), int(match.group(2))))
    return letters


@dataclass
class Outcome:
    """Everything a run produced, and the figures the checks and the report use."""

    exit_code: int
    socket_left: bool
    senders: dict[int, dict[str, object]]  # by sender: what chaos_sender.py printed
    sigterm_at: float
    summary: dict[str, int]
    stderr: str
    done: dict[str, int]
    records: Records
    letters: set[tuple[int, int]]
    receive_batch: int
    max_records: int
    stall: float  # seconds: the longest time the flood made no progress before SIGTERM
    reload_seconds: float  # how long the fixed deploy's SIGHUP took to reload every worker

    @property
    def sent(self) -> int:
        return sum(int(str(s["sent"])) for s in self.senders.values())

    @property
    def missing(self) -> list[tuple[int, int]]:
        gaps = []
        for sender, counts in self.records.seen.items():
            at = counts.find(0)
            while at >= 0:
                if (sender, at) not in self.letters:
                    gaps.append((sender, at))
                at = counts.find(0, at + 1)
        return gaps

    @property
    def distinct(self) -> int:
        return sum(len(c) - c.count(0) for c in self.records.seen.values())

    @property
    def duplicates(self) -> int:
        return self.records.lines - self.records.malformed - self.records.phantom - self.distinct

    def timeout_kills(self, role: str) -> int:
        return sum(m.startswith(role) for m in TIMEOUT_KILL.findall(self.stderr))

    @property
    def worker_deaths(self) -> int:
        """Workers killed: by the plan (SIGKILL) and by the supervisor (frozen)."""
        killed = self.done.get("kill_worker", 0) + self.done.get("kill_booting", 0)
        return killed + self.timeout_kills("worker")

    @property
    def receiver_deaths(self) -> int:
        return self.done.get("kill_receiver", 0) + self.timeout_kills("receiver")

    def figures(self) -> str:
        """One line of figures for the report."""
        s, d = self.summary, self.done
        recycled_count = self.stderr.count("recycling after")
        recycled_rss = self.stderr.count("MiB resident after")
        stops = sum(d.get(k, 0) for k in ("stop_worker", "stop_receiver"))
        freezes = sum(d.get(k, 0) for k in ("freeze_worker", "freeze_receiver"))
        return (
            f"sent={self.sent} handled={s.get('handled')} lines={self.records.lines} "
            f"distinct={self.distinct} duplicates={self.duplicates} "
            f"missing={len(self.missing)} received={s.get('received')} "
            f"replayed={s.get('replayed')} lost={s.get('lost')} "
            f"possibly_lost={s.get('possibly_lost')} quarantined={s.get('quarantined')} | "
            f"kills: worker={d.get('kill_worker', 0)} booting={d.get('kill_booting', 0)} "
            f"receiver={d.get('kill_receiver', 0)} "
            f"timeout-kills: worker={self.timeout_kills('worker')} "
            f"receiver={self.timeout_kills('receiver')} | stops={stops} freezes={freezes} "
            f"hups={d.get('hup', 0)} bad_hups={d.get('bad_hup', 0)} ttin={d.get('ttin', 0)} "
            f"ttou={d.get('ttou', 0)} | recycled: count={recycled_count} rss={recycled_rss} | "
            f"restarts={s.get('restarts')} boot_failures={s.get('boot_failures')} "
            f"processes={self.records.processes} longest_stall={self.stall:.2f}s "
            f"fixed_reload={self.reload_seconds:.2f}s "
            f"exit={self.exit_code}"
        )


def check(out: Outcome) -> dict[str, str]:
    """Every failed check, by name, with what was seen (empty: the run kept every promise)."""
    failed: dict[str, str] = {}

    def expect(name: str, ok: bool, why: str) -> None:
        if not ok:
            failed[name] = why

    s, r = out.summary, out.records
    deaths = out.worker_deaths + out.receiver_deaths
    # README "Shutdown and exit codes": SIGTERM drains everything, exits 0, removes the file.
    expect("exit_code", out.exit_code == 0, f"exit code {out.exit_code}, expected 0")
    expect("socket_removed", not out.socket_left, "the socket file (or .ctl) is still there")
    expect("unhandled", s.get("unhandled", -1) == 0, f"unhandled={s.get('unhandled')}")
    # The kernel refuses senders only once the server shuts down (the socket survives every
    # child's death): each sender stopped on a refusal, after SIGTERM.
    for i, sender in out.senders.items():
        refused = sender["error"] in REFUSED and float(str(sender["error_at"])) >= out.sigterm_at
        expect(f"sender_{i}", refused, f"sender s{i} stopped with {sender}")
    expect("malformed", r.malformed == 0, f"{r.malformed} handled line(s) are not a record")
    expect("phantom", r.phantom == 0, f"{r.phantom} record(s) handled that were never sent")
    # README "When processes die": nothing the kernel accepted is lost; with receive_batch 1
    # a killed receiver may lose the one datagram it held, counted (lost, possibly_lost).
    missing = out.missing
    if out.receive_batch > 1:
        expect("missing", not missing, f"{len(missing)} accepted, never handled: {missing[:10]}")
    else:
        allowed = s.get("lost", 0) + s.get("possibly_lost", 0)
        expect(
            "missing",
            s.get("lost", 0) <= len(missing) <= allowed,
            f"{len(missing)} never handled, lost={s.get('lost')} possibly_lost="
            f"{s.get('possibly_lost')}: {missing[:10]}",
        )
    # docs/handlers.md "Errors and delivery": at most one duplicate per dead worker (record
    # handler); ugram/receiver/mmsg.py: a killed receiver's successor places at most one
    # datagram twice.
    expect(
        "duplicates",
        out.duplicates <= deaths,
        f"{out.duplicates} duplicates for {out.worker_deaths} worker and "
        f"{out.receiver_deaths} receiver deaths",
    )
    expect(
        "replayed",
        s.get("replayed", 0) <= out.worker_deaths,
        f"replayed={s.get('replayed')} for {out.worker_deaths} worker deaths (at most 1 each)",
    )
    # The receiver places datagrams in receipt order, each ring is FIFO with one consumer
    # at a time: every worker process sees each sender's sequence numbers rise (with
    # route_by, docs/handlers.md: per-key order is kept). Twice in a row in one process is
    # a receiver's successor placing again the datagram that was being placed at the kill.
    expect("order", r.disorder == 0, f"{r.disorder} record(s) out of their sender's order")
    expect(
        "repeats",
        r.repeats <= out.receiver_deaths,
        f"{r.repeats} record(s) handled twice in a row by one process, "
        f"{out.receiver_deaths} receiver deaths",
    )
    # docs/reference.md "Totals": received = handled + rejected + quarantined + in rings
    # + lost; the counters are exact across worker kills (the journal), and `received` may
    # count one datagram twice per receiver kill (mmsg re-placement).
    accounted = s.get("handled", 0) + s.get("rejected", 0) + s.get("quarantined", 0)
    accounted += s.get("lost", 0)
    drift = s.get("received", 0) - accounted
    expect(
        "counters",
        abs(drift) <= out.receiver_deaths,
        f"received - (handled + rejected + quarantined + lost) = {drift}, "
        f"{out.receiver_deaths} receiver deaths",
    )
    unacked = r.lines - s.get("handled", 0)
    expect(
        "handled_counter",
        0 <= unacked <= out.worker_deaths,
        f"{r.lines} records handled, the counter says {s.get('handled')}: {unacked} "
        f"handled and not acknowledged, for {out.worker_deaths} worker deaths",
    )
    low = out.sent - s.get("possibly_lost", 0)
    expect(
        "received",
        low <= s.get("received", 0) <= out.sent + out.receiver_deaths,
        f"received={s.get('received')} for {out.sent} sent",
    )
    expect("rejected", s.get("rejected", -1) == 0, f"rejected={s.get('rejected')}: all valid")
    expect("handler_errors", s.get("handler_errors", -1) == 0, "the handler never raises")
    # Every restart is one of the plan's kills (or the supervisor's): nothing else crashed.
    expect(
        "restarts",
        s.get("restarts", 0) <= deaths,
        f"restarts={s.get('restarts')} for {deaths} deaths",
    )
    expect(
        "tracebacks",
        "Traceback (most recent call last)" not in out.stderr,
        "an exception escaped somewhere: see the log",
    )
    # README "When processes die", SIGHUP: a bad deploy is refused and the server serves
    # on; once the code is fixed, SIGHUP reloads.
    d = out.done
    expect("bad_deploy", d.get("bad_hup_rejected", 0) == 1, "the broken deploy was not refused")
    expect("fixed_deploy", d.get("fixed_hup_reloaded", 0) == 1, "the fixed deploy did not reload")
    expect("boot_failures", s.get("boot_failures", 0) >= 1, "no boot failure counted")
    # Senders only wait while a process is stopped, frozen (killed after worker_timeout) or
    # replaced: the flood never stands still for long.
    expect(
        "stall",
        out.stall <= MAX_STALL,
        f"no record handled for {out.stall:.1f}s (at most {MAX_STALL:g}s expected)",
    )
    # Recycling is enforced: no process handles more than max_records (+ its 10% jitter);
    # the leaking ones (even slots) reach max_rss within 60% of max_records (see
    # tests/chaos/schedule.py), and are recycled by the next memory check, at most
    # RSS_CHECK_EVERY records later: well before max_records.
    by_count = out.max_records + out.max_records // 10
    by_rss = out.max_records * 6 // 10 + RSS_CHECK_EVERY
    over = [(i, n) for i, n in r.per_process if n > (by_rss if i % 2 == 0 else by_count)]
    expect(
        "recycling",
        not over,
        f"(slot, records) of processes past their recycling limit ({by_rss} by memory in "
        f"even slots, {by_count} by count in odd ones): {over}",
    )
    return failed

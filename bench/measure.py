"""What to measure (:class:`Config`), one measurement of it (:class:`Sample`), and the rounds:
every configuration once per round, in the same order, so that a row and its baseline are
always measured minutes apart at most, under the same conditions."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.procs import BenchError
from bench.receivers import run_receiver
from bench.senders import Payload
from bench.server import ServerSpec, UgramResult, run_ugram
from bench.snapshot import ugram_snapshot
from bench.table import size_label

RECEIVER_LABELS = {
    "c-mmsg": "C recvmmsg",
    "c-plain": "C plain recv",
    "blocking": "Python blocking",
    "asyncio": "stdlib asyncio",
}
HANDLER_LABELS = {
    "trivial": "trivial",
    "json": "JSON→Struct",
    "cpu": "CPU ~50µs",
    "latency": "Latency",
}
PURE_PYTHON = "--speedups=false"


@dataclass(frozen=True)
class Config:
    """One thing to measure: a receiver running a handler on ``count`` datagrams of ``size``.

    ``receiver``: a key of ``RECEIVER_LABELS``, or ``ugram`` (then ``workers``, ``codec``,
    ``flags`` and ``rev`` apply, and ``handler`` may be ``module:attr``). ``confined``: the
    receiver on the first CPU, the sender on the others. ``paced``: a paced sender at this
    rate instead of a flood (ugram only; latency figures come back).
    """

    receiver: str
    handler: str
    size: int
    count: int
    workers: int = 0
    codec: str = ""
    flags: tuple[str, ...] = ()
    rev: str = ""  # "": the tree under measurement
    confined: bool = False
    paced: float = 0.0

    @property
    def case(self) -> str:
        """Handler and size: ``JSON→Struct 1 KB``."""
        return f"{HANDLER_LABELS.get(self.handler, self.handler)} {size_label(self.size)}"

    @property
    def subject(self) -> str:
        """Which receiver: ``C recvmmsg``, ``ugram 2 workers, pure Python @8808a95``."""
        if self.receiver != "ugram":
            label = RECEIVER_LABELS[self.receiver]
        else:
            label = f"ugram {self.workers} worker{'s' if self.workers > 1 else ''}"
            extras = ["pure Python" if f == PURE_PYTHON else f for f in self.flags]
            label = ", ".join([label, *extras]) + (f" @{self.rev}" if self.rev else "")
        return label + (", 1 CPU" if self.confined else "")

    @property
    def payload(self) -> Payload:
        return "json" if self.handler == "json" or self.codec == "json" else "raw"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        return cls(**{**data, "flags": tuple(data["flags"])})


@dataclass
class Sample:
    """One measurement of a config: msg/s, and what else the receiver reports."""

    rate: float
    rate_exit: float | None = None  # ugram: until the server exited after SIGTERM
    recv_us: float | None = None  # ugram: receiver CPU µs per datagram
    worker_us: float | None = None  # ugram: all workers' CPU µs per datagram
    latency: dict[str, dict[str, int]] = field(default_factory=dict)  # ns percentiles
    achieved: float | None = None  # the paced sender's rate

    @classmethod
    def of(cls, res: UgramResult) -> Sample:
        return cls(
            res.rate,
            res.rate_exit,
            res.receiver_us,
            res.worker_us,
            res.latency,
            res.paced_rate or None,
        )


@dataclass
class Context:
    """What every measurement of a run shares: which ugram, and where processes run."""

    ugram_path: str | None = None
    snapshots: dict[str, str] = field(default_factory=dict)  # rev -> directory

    def tree(self, rev: str) -> str | None:
        """The directory of the ugram to measure (None: the working tree)."""
        if not rev:
            return self.ugram_path
        if rev not in self.snapshots:
            self.snapshots[rev] = ugram_snapshot(rev)
        return self.snapshots[rev]


def cpu_split(confined: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(receiver CPUs, sender CPUs): the first CPU and the others when ``confined``."""
    cpus = sorted(os.sched_getaffinity(0))
    if not confined or len(cpus) < 2:
        return (), ()
    return (cpus[0],), tuple(cpus[1:])


def measure_once(cfg: Config, ctx: Context) -> Sample:
    """One run of ``cfg``.

    Raises:
        BenchError: the run failed, or did not receive exactly what was sent.
    """
    cpus = cpu_split(cfg.confined)
    if cfg.receiver != "ugram":
        rate = run_receiver(
            cfg.receiver, cfg.handler, cfg.count, cfg.size, payload=cfg.payload, cpus=cpus
        )
        return Sample(rate)
    spec = ServerSpec(cfg.handler, cfg.workers, cfg.codec, cfg.flags, ctx.tree(cfg.rev), cpus[0])
    res = run_ugram(
        spec,
        cfg.count,
        cfg.size,
        payload=cfg.payload,
        paced=cfg.paced,
        sender_cpus=cpus[1],
    )
    return Sample.of(res)


@dataclass
class Results:
    """Every sample of a run, by config (one per round), and each failed config's error."""

    samples: dict[Config, list[Sample]] = field(default_factory=dict)
    errors: dict[Config, str] = field(default_factory=dict)

    def get(self, cfg: Config) -> list[Sample] | None:
        """The samples of ``cfg``, None if it failed or was not measured."""
        return None if cfg in self.errors else self.samples.get(cfg)

    def rates(self, cfg: Config) -> list[float]:
        """msg/s of every round ([] if it failed or was not measured)."""
        return [s.rate for s in self.get(cfg) or []]

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": [[c.to_json(), [asdict(s) for s in ss]] for c, ss in self.samples.items()],
            "errors": [[c.to_json(), e] for c, e in self.errors.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        res = cls()
        for cfg, samples in data["samples"]:
            res.samples[Config.from_json(cfg)] = [Sample(**s) for s in samples]
        res.errors = {Config.from_json(cfg): err for cfg, err in data["errors"]}
        return res


def run_rounds(configs: Iterable[Config], rounds: int, ctx: Context, results: Results) -> None:
    """Measure each config once per round, in order; a config that fails is not retried."""
    todo = list(dict.fromkeys(configs))
    for number in range(1, rounds + 1):
        for cfg in todo:
            if cfg in results.errors:
                continue
            progress(f"round {number}/{rounds}: {cfg.case}, {cfg.subject}")
            try:
                results.samples.setdefault(cfg, []).append(measure_once(cfg, ctx))
            except (BenchError, OSError) as exc:
                results.errors[cfg] = str(exc).strip()
                print(f"FAILED {cfg.case}, {cfg.subject}: {exc}", file=sys.stderr, flush=True)


def progress(what: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    print(f"... {what}", file=sys.stderr, flush=True)

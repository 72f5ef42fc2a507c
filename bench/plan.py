"""What a scenario is, and what scenarios share: the run's options (:class:`Plan`), the
section each one prints (:class:`Section`), and the throughput table and goal lines."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.measure import Config, Context, Results
from bench.table import Row, Table, fmt_ratio, median_of, rate, us

FULL_SIZES = (64, 1024, 4096, 16384)
QUICK_SIZES = (64, 1024)
FULL_COUNTS = {64: 400_000, 1024: 400_000, 4096: 200_000, 16384: 100_000}
QUICK_COUNTS = {64: 200_000, 1024: 200_000}
CPU_COUNT = {False: 40_000, True: 15_000}  # keyed by quick
ASYNCIO_SHARE = 6  # asyncio is ~15x slower: send it 1/6 of the datagrams
# ugram: msg/s to the server's exit after SIGTERM; CPU µs per datagram of the receiver (while
# the load ran) and of every worker together (setup() to teardown(), idle spinning included)
THROUGHPUT_HEADERS = ["sent", "incl. shutdown", "recv CPU µs", "workers CPU µs"]


@dataclass
class Plan:
    """The options of one run: scenarios build their configs from it."""

    quick: bool
    rounds: int
    args: argparse.Namespace

    @property
    def sizes(self) -> tuple[int, ...]:
        return QUICK_SIZES if self.quick else FULL_SIZES

    def count(self, receiver: str, handler: str, size: int) -> int:
        """Datagrams per run: ``--count``, else by size (the CPU-heavy handler: fewer)."""
        if handler == "cpu":
            count = CPU_COUNT[self.quick]
        else:
            sizes = QUICK_COUNTS if self.quick else FULL_COUNTS
            count = self.args.count or sizes.get(size, min(sizes.values()))
        return count // ASYNCIO_SHARE if receiver == "asyncio" else count

    def cfg(self, receiver: str, handler: str, size: int, *, confined: bool = False) -> Config:
        """A baseline receiver's config, with the run's datagram count."""
        count = self.count(receiver, handler, size)
        return Config(receiver, handler, size, count, confined=confined)

    def ugram(
        self,
        handler: str,
        size: int,
        workers: int,
        *,
        codec: str = "",
        flags: tuple[str, ...] = (),
        confined: bool = False,
    ) -> Config:
        """A ugram config, with the run's datagram count."""
        count = self.count("ugram", handler, size)
        return Config("ugram", handler, size, count, workers, codec, flags, confined=confined)


@dataclass
class Section:
    """What a scenario prints: a title, tables, ratio lines, and its headline figure."""

    title: str
    tables: list[Table] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    figure: str = ""

    def render(self) -> str:
        return "\n".join([self.title, *(t.render() for t in self.tables), *self.lines])


class Scenario:
    """A named measurement: configs for the shared rounds, an optional phase of its own,
    and the section it prints from the results."""

    name = ""
    summary = ""
    default = True  # part of a run that names no scenario

    def pairs(self, plan: Plan) -> list[tuple[Config, Config | None]]:
        """The rows of its throughput table: (config, the config it is divided by)."""
        return []

    def needs(self, plan: Plan) -> list[Config]:
        """Configs to measure in the shared, interleaved rounds (by default: its pairs')."""
        return [cfg for pair in self.pairs(plan) for cfg in pair if cfg is not None]

    def run(self, plan: Plan, ctx: Context, results: Results) -> None:
        """A phase of its own, after the shared rounds (latency, the flood, netns)."""

    def report(self, plan: Plan, results: Results) -> Section:
        raise NotImplementedError

    def failures(self) -> int:
        """Runs of its own phase that failed (the shared rounds count theirs)."""
        return 0


def throughput_row(results: Results, cfg: Config, base: Config | None = None) -> Row:
    """A msg/s row for ``cfg`` (``base``: the config it is divided by)."""
    samples = results.get(cfg) or []
    extras = [f"{cfg.count:,}"]
    extras.append(rate(median_of([s.rate_exit for s in samples])))
    extras.append(us(median_of([s.recv_us for s in samples])))
    extras.append(us(median_of([s.worker_us for s in samples])))
    base_row = throughput_row(results, base) if base is not None else None
    return Row(cfg.case, cfg.subject, results.rates(cfg), base_row, extras, results.errors.get(cfg))


def throughput_table(results: Results, pairs: Sequence[tuple[Config, Config | None]]) -> Table:
    """The throughput table: one row per (config, baseline) pair."""
    table = Table("msg/s", THROUGHPUT_HEADERS)
    table.rows = [throughput_row(results, cfg, base) for cfg, base in pairs]
    return table


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float | None:
    """The median of the per-round ratios ``num[i] / den[i]`` (None if either is missing)."""
    pairs = [n / d for n, d in zip(num, den, strict=False) if d]
    return statistics.median(pairs) if pairs and len(num) == len(den) else None


def goal(
    label: str, num: tuple[str, Sequence[float]], den: tuple[str, Sequence[float]]
) -> tuple[str, float | None]:
    """A ratio line ``label (what: median) ÷ what (median) = r``, and ``r``."""
    r = paired_ratio(num[1], den[1])
    text = (
        f"{label} ({num[0]}: {rate(median_of(list(num[1])))}) "
        f"÷ {den[0]} ({rate(median_of(list(den[1])))}) = {fmt_ratio(r)}"
    )
    return text, r


def best_of(*series: Sequence[float]) -> list[float]:
    """Per round, the best of the series that were measured ([] if none was)."""
    present = [s for s in series if s]
    return [max(values) for values in zip(*present, strict=True)] if present else []

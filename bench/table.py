"""The one table format every scenario prints, and the header lines of a run.

A :class:`Row` is one thing measured over the rounds of a run: its figure in every round,
and optionally the row it is compared with (its baseline, measured in the same rounds). A
table prints, for each row: what ran (``case``: handler and size; ``subject``: which
receiver), the median over the rounds, their range, the ratio to the baseline (the median
of the per-round ratios, each round's pair measured back to back) and the scenario's own
extra columns.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"
LEFT_COLUMNS = 2  # case and subject are text; the rest are figures (but "baseline")


@dataclass
class Row:
    """One measurement over the rounds: ``values`` (one per round, empty if it failed)."""

    case: str
    subject: str
    values: list[float]
    base: Row | None = None
    extras: list[str] = field(default_factory=list)
    error: str | None = None

    def ratio(self) -> float | None:
        """Median of the per-round ratios to the baseline (None without one)."""
        if self.base is None or not self.values or not self.base.values:
            return None
        pairs = list(zip(self.values, self.base.values, strict=False))
        return statistics.median(v / b for v, b in pairs if b) if pairs else None

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values and not self.error else None


@dataclass
class Table:
    """Rows sharing one figure (``unit``: ``msg/s``, ``p99 µs``...) and extra columns."""

    unit: str
    extra_headers: list[str]
    rows: list[Row] = field(default_factory=list)
    fmt: Callable[[float], str] = lambda value: f"{value:,.0f}"

    def render(self) -> str:
        headers = ["case", "subject", self.unit, "min", "max", "÷ base", "base"]
        return table([*headers, *self.extra_headers], [self.cells(row) for row in self.rows])

    def cells(self, row: Row) -> list[str]:
        median = row.median()
        if median is None:
            return [row.case, row.subject, "FAILED", "-", "-", "-", "-", *row.extras]
        spread = ["-", "-"]
        if len(row.values) > 1:
            spread = [self.fmt(min(row.values)), self.fmt(max(row.values))]
        base = row.base.subject if row.base is not None else "-"
        ratio = fmt_ratio(row.ratio()) if row.base is not None else "-"
        figures = [self.fmt(median), *spread, ratio, base]
        return [row.case, row.subject, *figures, *row.extras]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: text columns (the first two, and ``base``) left-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    left = {i for i, h in enumerate(headers) if i < LEFT_COLUMNS or h == "base"}

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def rate(value: float | None) -> str:
    """``1,234,567`` msg/s, or ``-`` when not measured."""
    return "-" if value is None else f"{value:,.0f}"


def us(value: float | None) -> str:
    """Microseconds with two decimals, ``-`` when not measured."""
    return "-" if value is None else f"{value:.2f}"


def size_label(size: int) -> str:
    """``64 B``, ``1 KB``, ``16 KB``."""
    return f"{size // 1024} KB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def fmt_ratio(value: float | None) -> str:
    """Two decimals below 10, one above, ``n/a`` when missing."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def median_of(values: Sequence[float | None]) -> float | None:
    """The median of the values that were measured, None if none was."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def max_dgram_qlen() -> str:
    """``net.unix.max_dgram_qlen`` of this network namespace, ``?`` if unreadable."""
    try:
        with open(QLEN_PATH) as f:
            return f.read().strip()
    except OSError:
        return "?"


def busy_note(seconds: float = 1.0) -> str | None:
    """A warning when other processes already use the CPUs (figures will be noisy)."""
    used = psutil.cpu_percent(interval=seconds)
    if used < 15:
        return None
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"warning: the machine was {used:.0f}% busy before the run (load {load}); "
        "other processes compete for the CPUs and the figures will be low and noisy"
    )


def machine_line() -> str:
    """One line: CPUs, kernel, Python, max_dgram_qlen."""
    return (
        f"machine: {os.cpu_count()} CPU(s), {platform.machine()}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, net.unix.max_dgram_qlen={max_dgram_qlen()}"
    )


def ugram_line(ugram_path: str | None) -> str:
    """Which ugram is measured: its directory and git commit (``+ uncommitted`` when edited)."""
    where = Path(ugram_path or Path(__file__).resolve().parent.parent)
    if where.parent.name == ".build" and where.name.startswith("ugram-"):
        return f"ugram: git {where.name.removeprefix('ugram-built-')} (a snapshot of that commit)"
    try:
        head = _git(where, "rev-parse", "--short", "HEAD")
        dirty = _git(where, "status", "--porcelain", "--", "ugram")
    except (OSError, subprocess.CalledProcessError):
        return f"ugram: {where} (not a git checkout)"
    return f"ugram: {where} (git {head}{' + uncommitted changes in ugram/' if dirty else ''})"


def _git(where: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(where), *args], capture_output=True, text=True, check=True
    ).stdout.strip()

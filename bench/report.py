"""Formatting helpers shared by the bench scripts: tables, rates, the machine note."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

QLEN_PATH = "/proc/sys/net/unix/max_dgram_qlen"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table; columns after the first three are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(widths[i]) if i < 3 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def rate(value: float | None) -> str:
    """``1,234,567`` msg/s, or ``-`` when not measured."""
    return "-" if value is None else f"{value:,.0f}"


def size_label(size: int) -> str:
    """``64 B``, ``1 KB``, ``16 KB``."""
    return f"{size // 1024} KB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, None if either is missing or ``den`` is 0."""
    if num is None or den is None or den == 0:
        return None
    return num / den


def fmt_ratio(value: float | None) -> str:
    """Two significant decimals for ratios below 10, one above, ``n/a`` when missing."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


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
    """Which ugram is measured: its directory and git commit (``+dirty`` when modified)."""
    where = Path(ugram_path or Path(__file__).resolve().parent.parent)
    if where.parent.name == ".build" and where.name.startswith("ugram-"):
        return f"ugram: git {where.name.removeprefix('ugram-')} (a snapshot of that commit)"
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "ugram"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"ugram: {where} (not a git checkout)"
    return f"ugram: {where} (git {head}{' + uncommitted changes in ugram/' if dirty else ''})"

"""What operators see of a running server: the :class:`Report`, one consistent reading.

Everything exposed is built from one: ``/metrics`` (:mod:`ugram.metrics`), ``/healthz``, and
the control socket behind ``ugram stats`` (:mod:`ugram.control`), so the three never
disagree. The supervisor builds it (:mod:`ugram.supervisor.report`) and hands the servers a
function that returns a fresh one; they never see the supervisor itself.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .handler_stats import Reading
from .health import Health
from .stats import Latency, Snapshot


class ProcessInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The receiver as the supervisor sees it."""

    pid: int  # 0 when not running
    state: str  # "booting", "running", "draining", "stopped", or "not running"
    uss_bytes: int = 0  # private memory (USS); 0 when not running or not readable


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One worker slot: its process, its ring and its own counters."""

    index: int
    pid: int  # 0 when not running
    state: str
    ring_depth: int  # records published and not yet acknowledged
    ring_bytes: int  # bytes published and not yet acknowledged
    ring_capacity: int
    handled: int
    handler_errors: int
    invalid: int
    replayed: int
    quarantined: int
    uss_bytes: int = 0  # private memory (USS); 0 when not running or not readable


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``ugram stats --json`` prints; the schema is stable (``schema`` = 1).

    Fields added later have defaults, so a report of an older server still decodes.
    """

    schema: int = 1
    version: str
    time: float  # seconds since the epoch
    pid: int  # the supervisor's
    socket: str
    phase: str  # "running", "draining", "stopped"
    uptime_seconds: float
    active_workers: int
    worker_slots: int
    totals: Snapshot
    receiver: ProcessInfo
    workers: list[WorkerInfo]
    latency: Latency
    health: Health
    metrics: str  # the metrics endpoint's URL, "" when off
    config: dict[str, Any]
    uss_bytes: int = 0  # the supervisor's private memory (USS); 0 when not readable
    server_id: str = ""  # drawn at each start: the first part of every Datagram.id
    handler_metrics: list[Reading] = []  # what handlers declared (ugram.handler_stats)

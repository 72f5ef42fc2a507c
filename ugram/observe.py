"""What operators see of a running server: one consistent reading, and the threads serving it.

:func:`build_report` reads the shared counters, the rings and the supervisor's view of its
children into one :class:`Report`. Everything exposed comes from it: ``/metrics``
(:mod:`ugram.metrics`), ``/healthz``, and the control socket behind ``ugram stats``
(:mod:`ugram.control`), so the three never disagree.

:class:`Observers` binds the metrics endpoint and the control socket, serves each from a
daemon thread in the supervisor once the children exist, and closes them before the
supervisor releases the shared memory they read.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .health import Health, Liveness, stall_reason
from .stats import Latency, Slot, Snapshot, State, Stats, worker_block

if TYPE_CHECKING:
    from .ring import Ring
    from .supervisor import Child, Supervisor

log = logging.getLogger("ugram.supervisor")


class ProcessInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The receiver as the supervisor sees it."""

    pid: int  # 0 when not running
    state: str  # "booting", "running", "draining", "stopped", or "not running"


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


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``ugram stats --json`` prints; the schema is stable (``schema`` = 1)."""

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


def build_report(sup: Supervisor, started: float, metrics_url: str = "") -> Report:
    """Read the supervisor, its counters and rings into a :class:`Report`.

    Safe to call from another thread while the supervisor runs (and until
    :meth:`Observers.close`): it only reads.

    Raises:
        RuntimeError: the server is not running (its shared memory is gone).
    """
    from . import __version__  # not at import time: ugram/__init__ imports the supervisor

    view = _View.of(sup)
    workers = [_worker_info(view, index) for index in view.worker_indices()]
    return Report(
        version=__version__,
        time=time.time(),
        pid=os.getpid(),
        socket=sup.socket_path,
        phase=view.phase,
        uptime_seconds=round(time.monotonic() - started, 3),
        active_workers=view.active,
        worker_slots=len(view.rings),
        totals=view.stats.snapshot(),
        receiver=ProcessInfo(pid=view.receiver_pid(), state=view.receiver_state()),
        workers=workers,
        latency=view.stats.latency(),
        health=check_health(view),
        metrics=metrics_url,
        config=msgspec.to_builtins(sup.config),
    )


def health_of(sup: Supervisor) -> Health:
    """``/healthz``: ok only while the receiver and every active worker run and progress.

    Raises:
        RuntimeError: the server is not running.
    """
    return check_health(_View.of(sup))


class _View:
    """A consistent copy of the supervisor's private state, taken once per reading.

    This is the one place that reads the supervisor's internals; the dicts are copied in
    one C call each (atomic under the GIL) so the main loop may change them meanwhile.
    """

    def __init__(self, sup: Supervisor, stats: Stats) -> None:
        self.stats = stats
        self.rings: list[Ring] = list(sup._rings)
        self.workers: dict[int, Child] = dict(sup._workers)
        self.liveness: dict[int, Liveness] = dict(sup._liveness)
        self.receiver: Child | None = sup._receiver
        self.active = sup._active
        self.phase: str = sup._phase.value
        self.timeout = sup.config.worker_timeout

    @classmethod
    def of(cls, sup: Supervisor) -> _View:
        stats = sup._stats
        if stats is None:
            raise RuntimeError("the server is not running")
        return cls(sup, stats)

    def worker_indices(self) -> list[int]:
        """Active slots, plus any other slot with a process or records left in its ring."""
        extra = {i for i in self.workers if i >= self.active}
        extra |= {i for i, ring in enumerate(self.rings) if i >= self.active and ring.depth()}
        return [*range(self.active), *sorted(extra)]

    def block(self, index: int) -> memoryview:
        return self.stats.block(worker_block(index))

    def receiver_pid(self) -> int:
        return self.receiver.proc.pid if self.receiver else 0

    def receiver_state(self) -> str:
        if self.receiver is None:
            return "not running"
        block = self.stats.block(0)
        state = _state_name(int(block[Slot.STATE]))
        if state == "running" and receiver_frozen(block, self.timeout, time.monotonic_ns()):
            return f"unresponsive for more than {self.timeout:g}s"
        return state

    def worker_state(self, index: int) -> str:
        if index not in self.workers:
            return "not running"
        return _state_name(int(self.block(index)[Slot.STATE]))


def receiver_frozen(block: memoryview, timeout: float, now_ns: int) -> bool:
    """True when a running receiver has not passed its 50 ms housekeeping for ``timeout``."""
    beat = int(block[Slot.HEARTBEAT_NS])
    return bool(timeout and beat and (now_ns - beat) / 1e9 > timeout)


def _state_name(value: int) -> str:
    try:
        state = State(value)
    except ValueError:
        return f"unknown ({value})"
    return "booting" if state in (State.EMPTY, State.BOOTING) else state.name.lower()


def _worker_info(view: _View, index: int) -> WorkerInfo:
    block, ring, child = view.block(index), view.rings[index], view.workers.get(index)
    return WorkerInfo(
        index=index,
        pid=child.proc.pid if child else 0,
        state=view.worker_state(index),
        ring_depth=ring.depth(),
        ring_bytes=ring.used_bytes(),
        ring_capacity=ring.capacity,
        handled=int(block[Slot.HANDLED]),
        handler_errors=int(block[Slot.HANDLER_ERRORS]),
        invalid=int(block[Slot.INVALID]),
        replayed=int(block[Slot.REPLAYED]),
        quarantined=int(block[Slot.QUARANTINED]),
    )


def check_health(view: _View) -> Health:
    """Healthy while running, with a running receiver and every active worker progressing."""
    reasons: list[str] = []
    if view.phase != "running":
        reasons.append(f"the server is {view.phase}")
    receiver = view.receiver_state()
    if receiver != "running":
        reasons.append(f"receiver is {receiver}")
    for index in range(view.active):
        reason = _worker_problem(view, index)
        if reason:
            reasons.append(reason)
    return Health(ok=not reasons, reasons=reasons)


def _worker_problem(view: _View, index: int) -> str | None:
    child = view.workers.get(index)
    if child is None:
        return f"worker {index} is not running"
    name = f"worker {index} (pid {child.proc.pid})"
    if child.kill_at:
        return f"{name} is being killed: no progress for more than {view.timeout:g}s"
    state = view.worker_state(index)
    if state != "running":
        return f"{name} is {state}"
    seen = view.liveness.get(index)
    if not view.timeout or seen is None:
        return None
    why = stall_reason(view.block(index), seen, view.timeout, time.monotonic(), time.monotonic_ns())
    return f"{name} is {why} for more than {view.timeout:g}s" if why else None


class _Served(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


class Observers:
    """The metrics endpoint and the control socket of one supervisor.

    Construct it once the shared memory exists (it binds, so a bad ``metrics`` address
    fails the start-up before any child runs), :meth:`start` it once the children exist,
    :meth:`close` it before the shared memory is released.
    """

    def __init__(self, sup: Supervisor) -> None:
        """Bind the metrics endpoint (if configured) and the control socket (if enabled).

        Raises:
            SocketError: the metrics address cannot be bound. A control socket that cannot
                be bound is only logged: the server runs without ``ugram stats``.
        """
        self._sup = sup
        self._started = time.monotonic()
        self._served: list[_Served] = []
        self.metrics_url = ""
        try:
            self._bind(sup)
        except BaseException:
            self.close()
            raise

    def _bind(self, sup: Supervisor) -> None:
        cfg = sup.config
        if cfg.metrics:
            from .metrics import MetricsServer

            server = MetricsServer(
                cfg.metrics,
                self.report,
                self.health,
                cfg.file_mode,
                cfg.gid,
                allow_unsafe=cfg.allow_unsafe_dir,
            )
            self.metrics_url = server.url
            self._served.append(server)
        if cfg.control:
            from .control import ControlServer

            control = ControlServer.bind_for(sup.socket_path, self.report_json, cfg)
            if control is not None:
                self._served.append(control)

    def report(self) -> Report:
        """A fresh :class:`Report` (called from the serving threads)."""
        return build_report(self._sup, self._started, self.metrics_url)

    def report_json(self) -> bytes:
        """The report as JSON: what the control socket answers."""
        return msgspec.json.encode(self.report())

    def health(self) -> Health:
        """The health check alone (cheaper than a report)."""
        return health_of(self._sup)

    def start(self) -> None:
        """Serve each endpoint from its own daemon thread."""
        for served in self._served:
            served.start()
        if self.metrics_url:
            log.info("serving metrics on %s (and /healthz)", self.metrics_url)

    def close(self) -> None:
        """Stop serving (waits for a request in progress) and remove what was bound."""
        while self._served:
            self._served.pop().close()

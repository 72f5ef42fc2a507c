"""Reading the supervisor's state, its counters and rings into one :class:`~ugram.observe.Report`.

Called from the observers' threads while the main loop runs: it only reads, and it copies
the state's dicts whole (one C call each, atomic under the GIL) so that the main loop may
change them meanwhile. Each process's private memory (USS) comes from psutil, one call per
process: the control socket builds a report at most every 0.1 s.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import msgspec
import psutil

from .. import handler_stats
from ..health import Health, Liveness, receiver_frozen, stall_reason
from ..observe import ProcessInfo, Report, WorkerInfo
from ..ring import Ring
from ..stats import RECEIVER_BLOCK, Slot, State, Stats, worker_block
from .resources import Resources
from .state import Child, ServerState


def build_report(
    state: ServerState,
    res: Resources,
    started: float,
    metrics_url: str = "",
    *,
    memory: bool = True,
) -> Report:
    """Read ``state``, its counters and rings into a :class:`Report`.

    Args:
        state: the supervisor's state.
        res: its resources (counters and rings).
        started: ``time.monotonic()`` when it began serving.
        metrics_url: the metrics endpoint's URL, "" when off.
        memory: read each process's private memory (about 0.7 ms a process: the kernel
            walks its page tables); False leaves the ``uss_bytes`` fields 0.

    Raises:
        RuntimeError: the server is not running (its shared memory is gone).
    """
    from .. import __version__  # not at import time: ugram/__init__ imports the supervisor

    view = _View.of(state, res)
    uss = private_memory if memory else _unread
    workers = [_worker_info(view, index, uss) for index in view.worker_indices()]
    receiver = ProcessInfo(
        pid=view.receiver_pid(), state=view.receiver_state(), uss_bytes=uss(view.receiver_pid())
    )
    return Report(
        version=__version__,
        time=time.time(),
        pid=os.getpid(),
        socket=state.socket_path,
        phase=view.phase,
        uptime_seconds=round(time.monotonic() - started, 3),
        active_workers=view.active,
        worker_slots=len(view.rings),
        totals=view.stats.snapshot(),
        receiver=receiver,
        workers=workers,
        latency=view.stats.latency(),
        health=check_health(view),
        metrics=metrics_url,
        config=msgspec.to_builtins(state.config),
        uss_bytes=uss(os.getpid()),
        server_id=res.server_id,
        handler_metrics=view.handler_metrics(),
    )


def health_of(state: ServerState, res: Resources) -> Health:
    """``/healthz``: ok only while the receiver and every active worker run and progress.

    Raises:
        RuntimeError: the server is not running.
    """
    return check_health(_View.of(state, res))


def private_memory(pid: int) -> int:
    """The bytes only process ``pid`` holds (USS: its private pages), or 0 when unknown.

    0 for pid 0 (no process), a process that has exited, or one whose memory map this user
    may not read.
    """
    if not pid:
        return 0
    with contextlib.suppress(psutil.Error, OSError):
        return int(psutil.Process(pid).memory_full_info().uss)
    return 0


def _unread(pid: int) -> int:
    return 0


class _View:
    """A consistent copy of the supervisor's state, taken once per reading."""

    def __init__(self, state: ServerState, res: Resources) -> None:
        self.stats: Stats = res.stats
        self.rings: list[Ring] = list(res.rings)
        self.workers: dict[int, Child] = dict(state.workers)
        self.liveness: dict[int, Liveness] = dict(state.liveness)
        self.receiver: Child | None = state.receiver
        self.active = state.active
        self.phase: str = state.phase.value
        self.timeout = state.config.worker_timeout
        self.handlers = res.handlers

    @classmethod
    def of(cls, state: ServerState, res: Resources) -> _View:
        if res.released:
            raise RuntimeError("the server is not running")
        return cls(state, res)

    def worker_indices(self) -> list[int]:
        """Active slots, plus any other slot with a process or records left in its ring."""
        extra = {i for i in self.workers if i >= self.active}
        extra |= {i for i, ring in enumerate(self.rings) if i >= self.active and ring.depth()}
        return [*range(self.active), *sorted(extra)]

    def block(self, index: int) -> memoryview:
        return self.stats.block(worker_block(index))

    def handler_metrics(self) -> list[handler_stats.Reading]:
        """What the handlers declared (:mod:`ugram.handler_stats`), over every slot."""
        return handler_stats.read(self.handlers, range(len(self.rings)), time.monotonic_ns())

    def receiver_pid(self) -> int:
        return self.receiver.proc.pid if self.receiver else 0

    def receiver_state(self) -> str:
        if self.receiver is None:
            return "not running"
        block = self.stats.block(RECEIVER_BLOCK)
        state = _state_name(int(block[Slot.STATE]))
        if state == "running" and receiver_frozen(block, self.timeout, time.monotonic_ns()):
            return f"unresponsive for more than {self.timeout:g}s"
        return state

    def worker_state(self, index: int) -> str:
        if index not in self.workers:
            return "not running"
        return _state_name(int(self.block(index)[Slot.STATE]))


def _state_name(value: int) -> str:
    try:
        state = State(value)
    except ValueError:
        return f"unknown ({value})"
    return "booting" if state in (State.EMPTY, State.BOOTING) else state.name.lower()


def _worker_info(view: _View, index: int, uss: Callable[[int], int]) -> WorkerInfo:
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
        uss_bytes=uss(child.proc.pid) if child else 0,
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
    reasons += handler_stats.alarms(view.handler_metrics())
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

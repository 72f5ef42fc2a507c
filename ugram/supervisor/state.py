"""What several parts of the supervisor read and change, kept in one place.

Each part (children, liveness, scaling, reload, drain, the report) is handed the one
:class:`ServerState` of its supervisor when it is made; none reaches into another part for it.
"""

from __future__ import annotations

import enum
import signal
import subprocess
from dataclasses import dataclass, field

from ..config import Config
from ..errors import EXIT_HANDLER_IMPORT, EXIT_WORKER_BOOT
from ..events import Callbacks, ConnState
from ..health import Liveness


class Phase(enum.Enum):
    """The supervisor's life stages."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class Child:
    """A running receiver or worker process."""

    role: str
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    kill_at: float = 0.0  # when a stuck worker gets SIGKILL (after its traceback dump)

    @property
    def name(self) -> str:
        """``receiver`` or ``worker N``."""
        return "receiver" if self.role == "receiver" else f"worker {self.index}"


@dataclass
class Handover:
    """SIGHUP, one slot: its replacement boots first, and only then is the old one retired.

    The ring has one consumer at a time, so the replacement (the standby) takes it over only
    once the old worker has exited; a standby that cannot boot leaves the old one running.
    """

    index: int
    standby: Child
    retired: bool = False  # the old worker was told to retire: the slot is the standby's
    called_off: bool = False  # the standby was told to exit without taking over


@dataclass(eq=False)
class ServerState:
    """The supervisor's view of its server: its phase, its children and what they are doing.

    The report (:mod:`ugram.supervisor.report`) reads it from the observers' threads: its
    dicts are only ever changed by the main loop, and read there by copying them whole.
    """

    config: Config
    socket_path: str  # the path actually bound once started (absolute), else as configured
    callbacks: Callbacks = field(default_factory=Callbacks)
    phase: Phase = Phase.NEW
    active: int = 0  # workers the receiver routes to (SIGTTIN/SIGTTOU change it)
    receiver: Child | None = None
    workers: dict[int, Child] = field(default_factory=dict)
    liveness: dict[int, Liveness] = field(default_factory=dict)
    respawn_at: dict[tuple[str, int], float] = field(default_factory=dict)  # (role, index)
    retiring: set[int] = field(default_factory=set)  # SIGTTOU: slots that go once drained
    handover: Handover | None = None  # SIGHUP: the slot being replaced now
    exit_code: int | None = None  # set once stopped
    unhandled: int = 0  # records left when it stopped

    def children(self) -> list[Child]:
        """Every process of ours that may be running, a booting SIGHUP replacement included."""
        standby = [self.handover.standby] if self.handover else []
        receiver = [self.receiver] if self.receiver else []
        return [*self.workers.values(), *receiver, *standby]

    def emit_info(self, child: Child, state: ConnState) -> None:
        """Tell the ``on_info`` callbacks what ``child`` did."""
        self.callbacks.emit_info(self.socket_path, child.name, state)


def how(code: int) -> str:
    """How a child ended, from its exit status (negative: the signal that killed it)."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def why(code: int) -> str:
    """Why a worker failed to boot, from its exit code."""
    if code == EXIT_HANDLER_IMPORT:
        return "the handler could not be imported"
    if code == EXIT_WORKER_BOOT:
        return "setup() failed"
    return how(code)

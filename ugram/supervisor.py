"""The supervisor: owns the socket and the rings, starts, reaps and restarts the children.

It runs no user code and creates no event loop before its children exist; children are
started explicitly with ``subprocess`` and inherit exactly the fds they need (``pass_fds``).
Because the supervisor holds the bound socket and every ring for the server's whole life, a
dead receiver is replaced on the same socket (the kernel keeps queued datagrams meanwhile) and
a dead worker's replacement resumes from the last acknowledged record.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from types import FrameType

import msgspec
import setproctitle

from . import speedups
from .config import Config
from .errors import (
    EXIT_HANDLER_IMPORT,
    EXIT_OK,
    EXIT_UNHANDLED,
    EXIT_WORKER_BOOT,
    ChildCrashedError,
    HandlerError,
    RingCorruptError,
    ServerFailedError,
    ShutdownTimeoutError,
    UnsupportedPlatformError,
)
from .events import Callbacks, ConnState, ErrorCallback, InfoCallback, ServerInfoCallback
from .health import Liveness, stall_reason
from .observe import Observers, receiver_frozen
from .receiver import mmsg
from .receiver.admission import ANCILLARY_SIZE
from .ring import CLOSED, PUBLISHED, Ring, create_shared_fd
from .sockets import BoundSocket, adopt_systemd, bind_socket, unlink_if_ours
from .spec import ChildSpec
from .stats import (
    COMMAND_RETIRE,
    COMMAND_TAKE_OVER,
    JOURNALED,
    RECEIVER_BLOCK,
    Slot,
    Snapshot,
    State,
    Stats,
    standby_block,
    supervisor_block,
    worker_block,
)
from .wake import make_wake, signal_wake

log = logging.getLogger("ugram.supervisor")

TICK = 0.05
RESPAWN_BACKOFF_MAX = 5.0
KILL_GRACE = 0.3  # between the traceback request (SIGUSR1) and SIGKILL of a stuck worker
CORRUPT_GRACE = 2.0  # for the worker of a ring marked corrupt to exit before it is killed
RECEIVER_REJECTS = (Slot.OVERSIZED, Slot.INVALID, Slot.UNAUTHORIZED, Slot.RATE_LIMITED, Slot.SHED)
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGCHLD", "SIGHUP", "SIGTTIN", "SIGTTOU")


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


class Supervisor:
    """Runs a ugram server: ``Supervisor(config).run()`` blocks until it stops.

    For embedding in an asyncio application use ``await serve()`` and ``await shutdown()``.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.exit_code: int | None = None
        self.unhandled = 0
        self._phase = Phase.NEW
        self._callbacks = Callbacks()
        self._bound: BoundSocket | None = None
        self._rings: list[Ring] = []
        self._wakes: list[tuple[int, int]] = []
        self._space: tuple[int, int] = (-1, -1)
        self._stats: Stats | None = None
        self._receiver: Child | None = None
        self._workers: dict[int, Child] = {}
        self._active = config.workers
        self._respawn_at: dict[tuple[str, int], float] = {}
        self._boot_failures: dict[int, int] = {}
        self._liveness: dict[int, Liveness] = {}
        self._retiring: set[int] = set()  # SIGTTOU: slots that go away once drained
        self._rolling: list[int] = []  # SIGHUP: slots still to restart, one at a time
        self._handover: Handover | None = None  # SIGHUP: the slot being replaced now
        self._standby_at = -1  # the stats block of a booting SIGHUP replacement
        self._ran: set[int] = set()  # slots where a worker got past booting at least once
        self._started_up = False  # every initial slot has run: boot failures are retried
        self._deadline = 0.0
        self._signals: list[int] = []
        self._last_seen = (0, 0)
        self._fatal_code: int | None = None
        self._fatal_reason = ""
        self._timeout_used = config.graceful_timeout
        self._cut_short = False  # a forced stop (second SIGINT, fatal error) ended the drain
        self._final: Snapshot | None = None
        self._scratch = -1
        self._control = memoryview(bytearray(512)).cast("Q")  # the shared block once started
        self._observers: Observers | None = None  # /metrics, /healthz, the control socket

    # -- golib-shaped API -------------------------------------------------------------------

    def on_error(self, callback: ErrorCallback) -> None:
        """Register ``callback(*errors)``, called on child crashes and handler errors."""
        self._callbacks.error.append(callback)

    def on_info(self, callback: InfoCallback) -> None:
        """Register ``callback(local, remote, state)`` for process and read events."""
        self._callbacks.info.append(callback)

    def on_server_info(self, callback: ServerInfoCallback) -> None:
        """Register ``callback(message)`` for server lifecycle messages."""
        self._callbacks.server_info.append(callback)

    @property
    def is_running(self) -> bool:
        """True while the server accepts datagrams."""
        return self._phase is Phase.RUNNING

    @property
    def is_gone(self) -> bool:
        """True once shutdown has begun (draining or stopped)."""
        return self._phase in (Phase.DRAINING, Phase.STOPPED)

    @property
    def open_connections(self) -> int:
        """Always 0: datagram sockets have no connections."""
        return 0

    @property
    def socket_path(self) -> str:
        """The socket path actually bound (absolute), or the configured one before start."""
        return self._bound.path if self._bound else self.config.socket

    @property
    def workers(self) -> int:
        """How many workers the receiver routes to now (changed by SIGTTIN/SIGTTOU)."""
        return self._active

    def statistics(self) -> Snapshot:
        """Server-wide counters right now (the final ones once stopped).

        Raises:
            RuntimeError: the server was never started.
        """
        if self._stats is not None:
            return self._stats.snapshot()
        if self._final is not None:
            return self._final
        raise RuntimeError("the server has not been started")

    def worker_pids(self) -> dict[int, int]:
        """The pid of each live worker, by slot."""
        return {index: child.proc.pid for index, child in self._workers.items()}

    def receiver_pid(self) -> int | None:
        """The pid of the live receiver, if any."""
        return self._receiver.proc.pid if self._receiver else None

    # -- blocking form ----------------------------------------------------------------------

    def run(self) -> int:
        """Start the server, handle signals, block until it stops; return the exit code.

        SIGTERM or SIGINT drain and stop (a second SIGINT stops at once); SIGHUP restarts the
        workers one by one with freshly imported handler code; SIGTTIN/SIGTTOU add/remove a
        worker.

        Raises:
            SocketError: the socket cannot be bound (nothing was started).
            ServerFailedError: the workers could not boot (the handler cannot be imported,
                or its ``setup()`` keeps failing): the server has stopped, and
                ``exit_code`` says why (4 or 3), as ``ugram serve`` would exit.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        previous = self._install_signals(write_fd)
        # The blocking form owns its process: name it for ps/top. serve() leaves an
        # embedding application's title alone.
        setproctitle.setproctitle(f"ugram: supervisor {self.config.socket}")
        # poll, not select: an embedding application with many files open gives us fds
        # above FD_SETSIZE (1024), which select() refuses.
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        try:
            self.start()
            while self._phase is not Phase.STOPPED:
                poller.poll(TICK * 1000)
                _drain_pipe(read_fd)
                self._handle_signals()
                self.tick()
        finally:
            self._restore_signals(previous)
            os.close(read_fd)
            os.close(write_fd)
            if self._phase is not Phase.STOPPED:
                self.close()
        return self._outcome()

    def _outcome(self) -> int:
        """The exit code of a server that has stopped.

        Raises:
            ServerFailedError: it stopped because it could not serve at all: a failure that
                embedding code ignoring the return value must still see.
        """
        assert self.exit_code is not None
        if self._fatal_code is not None:
            raise ServerFailedError(self._fatal_code, self._fatal_reason)
        return self.exit_code

    def request_stop(self, force: bool = False) -> None:
        """Begin a graceful shutdown; ``force`` kills the children at once."""
        if self._phase is Phase.RUNNING:
            self._begin_drain(self.config.graceful_timeout)
        if force and self._phase is Phase.DRAINING:
            self._deadline = 0.0
            self._cut_short = True

    def _install_signals(self, wake_fd: int) -> dict[int, object]:
        previous: dict[int, object] = {-1: signal.set_wakeup_fd(wake_fd)}
        for name in HANDLED_SIGNALS:
            signum = getattr(signal, name)
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, object]) -> None:
        for signum, handler in previous.items():
            if signum == -1:
                signal.set_wakeup_fd(int(handler))  # type: ignore[call-overload]
            else:
                signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # no logging, no locks in a signal handler

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGCHLD:
                continue
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._handle_stop(name, force=signum == signal.SIGINT)
            elif self._phase is Phase.RUNNING:
                getattr(self, f"handle_{name[3:].lower()}")()

    def _handle_stop(self, name: str, force: bool) -> None:
        if self._phase is Phase.DRAINING and force:
            self._callbacks.emit_server_info(f"{name} again: stopping now")
            self.request_stop(force=True)
        elif self._phase is Phase.RUNNING:
            self._callbacks.emit_server_info(f"{name}: draining, then stopping")
            self.request_stop()

    def handle_hup(self) -> None:
        """SIGHUP: restart every worker, one at a time, re-importing the handler.

        Each replacement boots (imports the handler, runs ``setup()``) beside the worker it
        replaces; only then is the old one retired, and the replacement takes over its ring
        once it has exited. The next slot follows once that replacement runs. A replacement
        that cannot boot abandons the reload: the running workers keep the code they have.
        """
        self._rolling = sorted(i for i in self._workers if i not in self._retiring)
        self._callbacks.emit_server_info(f"SIGHUP: reloading {len(self._rolling)} worker(s)")

    def handle_ttin(self) -> None:
        """SIGTTIN: one worker more (up to max_workers)."""
        if self._active >= len(self._rings):
            log.warning("SIGTTIN ignored: already at max_workers=%d", len(self._rings))
            return
        index = self._active
        self._retiring.discard(index)
        self._set_active(self._active + 1)
        if index not in self._workers:
            self._spawn("worker", index)
        self._callbacks.emit_server_info(f"SIGTTIN: now {self._active} worker(s)")

    def handle_ttou(self) -> None:
        """SIGTTOU: one worker fewer (at least one stays); its ring is drained first."""
        if self._active <= 1:
            log.warning("SIGTTOU ignored: one worker is the minimum")
            return
        self._set_active(self._active - 1)
        self._retiring.add(self._active)
        self._callbacks.emit_server_info(f"SIGTTOU: now {self._active} worker(s)")

    # Aliases so an embedding application can do what the signals do.
    reload = handle_hup
    add_worker = handle_ttin
    remove_worker = handle_ttou

    def _set_active(self, active: int) -> None:
        assert self._stats is not None
        self._active = active
        self._control[Slot.ACTIVE] = active

    # -- async form -------------------------------------------------------------------------

    async def serve(self) -> int:
        """Start the server and run it until it stops; return the exit code.

        Installs no signal handlers: the embedding application calls :meth:`shutdown`.

        Raises:
            SocketError: the socket cannot be bound (nothing was started).
            ServerFailedError: the workers could not boot (as for :meth:`run`).
        """
        self.start()
        while self._phase is not Phase.STOPPED:
            await asyncio.sleep(TICK)
            self.tick()
        return self._outcome()

    async def shutdown(self, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Drain and stop within ``timeout`` seconds (default: graceful_timeout).

        Returns:
            The exit code: 0 when everything was handled and every child finished; 5 when
            children still running at the deadline were killed (their ``teardown()`` cut
            off) though no record was left.

        Raises:
            ShutdownTimeoutError: records were left unhandled when the time ran out.
        """
        if self._phase is Phase.RUNNING:
            self._begin_drain(self.config.graceful_timeout if timeout is None else timeout)
        while self._phase is not Phase.STOPPED:
            await asyncio.sleep(TICK)
            self.tick()
        if self.unhandled:
            raise ShutdownTimeoutError(self.unhandled, self._timeout_used)
        assert self.exit_code is not None
        return self.exit_code

    def close(self) -> None:
        """Stop at once: kill every child, count what was left, clean up (exit code 5 if
        a child was still running)."""
        if self._phase is Phase.STOPPED:
            return
        if self._phase is Phase.NEW:
            self._phase = Phase.STOPPED
            self.exit_code = EXIT_OK
            return
        if self._phase is Phase.RUNNING:
            self._begin_drain(0.0)
        self._deadline = 0.0
        self.tick()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket, create the rings and start the receiver and the workers.

        Raises:
            SocketError: the socket cannot be bound.
            UnsupportedPlatformError: the rings cannot run safely on this CPU.
        """
        cfg = self.config
        check_platform(cfg)
        creds = cfg.wants_credentials
        self._bound = adopt_systemd(credentials=creds) or bind_socket(
            cfg.socket,
            cfg.file_mode,
            cfg.gid,
            mkdir=cfg.mkdir,
            credentials=creds,
            allow_unsafe=cfg.allow_unsafe_dir,
        )
        if self._bound.identity is None and (cfg.mode != "0660" or cfg.gid != -1):
            why = _no_mode_why(self._bound)
            log.warning("mode and group do not apply to %s: %s", self._bound.path, why)
        slots = cfg.worker_slots
        try:
            # Rings for every slot SIGTTIN may use: an unused ring costs only its control page
            # (shared memory is allocated when touched).
            self._rings = [Ring.create(cfg.ring_size) for _ in range(slots)]
            self._wakes = [make_wake() for _ in range(slots)]
            self._space = make_wake()
            self._stats = Stats.create(slots + 3)  # + receiver, supervisor, standby
            self._scratch = _create_scratch(cfg)
            self._observers = Observers(self)  # binds now: a bad metrics address stops us here
        except BaseException:
            self._release()
            raise
        self._control = self._stats.block(supervisor_block(slots))
        self._standby_at = standby_block(slots)
        self._set_active(cfg.workers)
        self._phase = Phase.RUNNING
        for index in range(cfg.workers):
            self._spawn("worker", index)
        self._spawn("receiver", 0)
        self._observers.start()  # threads only once the children exist

    def _spec(self, role: str, index: int) -> ChildSpec:
        assert self._bound is not None
        assert self._stats is not None
        if role == "receiver":
            rings = [ring.fd for ring in self._rings]
            wakes = [write for _, write in self._wakes]
            block, space = RECEIVER_BLOCK, self._space[0]
        else:
            rings, wakes = [self._rings[index].fd], [self._wakes[index][0]]
            block, space = worker_block(index), self._space[1]
        return ChildSpec(
            role=role,
            index=index,
            config=self.config,
            socket_fd=self._bound.sock.fileno(),
            ring_fds=rings,
            wake_fds=wakes,
            space_fd=space,
            stats_fd=self._stats.fd,
            stats_block=block,
            control_block=supervisor_block(len(self._rings)),
            scratch_fd=self._scratch if role == "receiver" else -1,
        )

    def _spawn(self, role: str, index: int) -> None:
        assert self._stats is not None
        spec = self._spec(role, index)
        block = self._stats.block(spec.stats_block)
        block[Slot.STATE] = State.EMPTY
        block[Slot.COMMAND] = 0
        block[Slot.BUSY_SINCE_NS] = 0
        proc = subprocess.Popen(spec.argv(), pass_fds=spec.fds())
        child = Child(role, index, proc, time.monotonic())
        if role == "receiver":
            self._receiver = child
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.RECEIVER_STARTED)
        else:
            self._workers[index] = child
            self._liveness[index] = Liveness(since=time.monotonic())
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.WORKER_STARTED)
        log.debug("started %s (pid %d)", child.name, proc.pid)

    def _spawn_standby(self, index: int) -> Child:
        """Start a SIGHUP replacement for slot ``index``; it boots, then waits for its turn."""
        assert self._stats is not None
        spec = msgspec.structs.replace(self._spec("worker", index), standby_block=self._standby_at)
        block = self._stats.block(self._standby_at)
        block[Slot.STATE] = State.EMPTY
        block[Slot.COMMAND] = 0
        proc = subprocess.Popen(spec.argv(), pass_fds=spec.fds())
        log.info("SIGHUP: starting the new worker %d (pid %d)", index, proc.pid)
        return Child("worker", index, proc, time.monotonic())

    # -- the main loop ----------------------------------------------------------------------

    def tick(self) -> None:
        """One non-blocking round: reap, respawn, watch liveness, scale, report, drain."""
        if self._phase in (Phase.NEW, Phase.STOPPED):
            return
        self._reap()
        self._tend_corrupt_rings()
        self._note_started()
        self._respawn_due()
        self._watch_liveness()
        self._advance_retirements()
        self._advance_rolling()
        self._report()
        if self._phase is Phase.DRAINING:
            self._advance_drain()

    def _children(self) -> list[Child]:
        standby = [self._handover.standby] if self._handover else []
        return [*self._workers.values(), *([self._receiver] if self._receiver else []), *standby]

    def _reap(self) -> None:
        for child in self._children():
            code = child.proc.poll()
            if code is not None:
                self._on_exit(child, code)

    def _note_started(self) -> None:
        """Start-up is over once a worker of every initial slot has got past booting: the
        handler imports and sets up."""
        if self._started_up:
            return
        self._ran.update(i for i, child in self._workers.items() if not self._booting(child))
        self._started_up = all(i in self._ran for i in range(self.config.workers))
        if self._started_up and self._phase is Phase.RUNNING:
            self._announce()

    def _announce(self) -> None:
        # Only once every worker has imported the handler and run setup(): a handler that
        # cannot be served is reported as that, never after a claim that the server listens.
        assert self._bound is not None
        cfg = self.config
        self._callbacks.emit_server_info(
            f"listening on {self._bound.path} with {cfg.workers} worker(s), "
            f"handler {cfg.handler}, codec {cfg.codec}; "
            f"per-datagram loops {speedups.describe(cfg.speedups)}"
        )

    def _on_exit(self, child: Child, code: int) -> None:
        handover = self._handover
        if handover is not None and child is handover.standby:
            self._standby_exited(handover, code)
            return
        if child.role == "receiver":
            self._receiver = None
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.RECEIVER_STOPPED)
            if code != 0:
                self._account_lost()
        else:
            del self._workers[child.index]
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.WORKER_STOPPED)
            if not self._booting(child):
                self._ran.add(child.index)  # it ran, even if no tick saw it running
            if handover is not None and handover.retired and child.index == handover.index:
                self._replaced(handover, child, code)
                return
            if self._rings[child.index].marked_corrupt:
                return  # _tend_corrupt_rings resets its ring, then starts a new worker
        if code == 0:
            self._exited_cleanly(child)
        elif child.role == "worker" and (code == EXIT_HANDLER_IMPORT or self._booting(child)):
            self._boot_failed(child, code)
        else:
            self._crashed(child, code)

    def _exited_cleanly(self, child: Child) -> None:
        if child.role == "receiver":
            if self._phase is Phase.RUNNING:
                # Not told to drain (the DRAIN flag), so not meant to stop: a new receiver
                # takes the socket, and rings it may have closed are open again.
                log.warning("the receiver exited on its own; starting a new one")
                self._reopen_rings()
                self._control[Slot.RESTARTS] += 1
                self._spawn("receiver", 0)
            return
        index = child.index
        if self._phase is not Phase.RUNNING:
            if self._ring_needs_worker(index):
                self._spawn("worker", index)  # recycled mid-drain: its ring is not finished
            return
        if index in self._retiring:
            if self._rings[index].used_bytes():
                # Recycled before its ring was empty: a successor finishes the ring, then is
                # retired like any other once it is drained.
                self._spawn("worker", index)
                return
            self._retiring.discard(index)
            log.info("%s retired", child.name)
            return
        # Recycled (max_records, max_rss): replace it at once.
        self._control[Slot.RECYCLED] += 1
        self._spawn("worker", index)

    def _ring_needs_worker(self, index: int) -> bool:
        """Records are left in the ring, or may still be placed there: the receiver has not
        closed it (it is still draining the socket) and may route to it."""
        ring = self._rings[index]
        if ring.used_bytes():
            return True
        if ring.ctl[CLOSED]:
            return False  # closed after its last record: nothing more can arrive
        return index < self._active or not self._receiver_caught_up()

    def _reopen_rings(self) -> None:
        for ring in self._rings:
            ring.reopen()

    def _booting(self, child: Child) -> bool:
        assert self._stats is not None
        state = self._stats.block(worker_block(child.index))[Slot.STATE]
        return state in (State.EMPTY, State.BOOTING)

    def _boot_failed(self, child: Child, code: int) -> None:
        failures = self._boot_failures.get(child.index, 0) + 1
        self._boot_failures[child.index] = failures
        self._control[Slot.BOOT_FAILURES] += 1
        if not self._started_up:
            # At start-up the handler or its setup() is broken: stop rather than respawn.
            if code == EXIT_HANDLER_IMPORT:
                self._fatal(
                    code,
                    f"{child.name} could not load the handler {self.config.handler} "
                    "(the reason is above)",
                )
                return
            if failures >= self.config.boot_retries:
                self._fatal(
                    EXIT_WORKER_BOOT,
                    f"{child.name} failed to start {failures} times in a row ({_why(code)})",
                )
                return
        # Once started, the other workers go on serving: this slot is retried, backing off.
        delay = min(RESPAWN_BACKOFF_MAX, 0.1 * 2**failures)
        log.error("%s failed to start (%s); retrying in %.1fs", child.name, _why(code), delay)
        self._respawn_at[(child.role, child.index)] = time.monotonic() + delay

    def _crashed(self, child: Child, code: int) -> None:
        error = ChildCrashedError(f"{child.name} (pid {child.proc.pid}) died: {_how(code)}")
        log.error("%s; restarting it", error)
        self._callbacks.emit_error(error)
        self._control[Slot.RESTARTS] += 1
        if child.role == "worker":
            self._boot_failures.pop(child.index, None)
            if child.index in self._retiring and not self._rings[child.index].used_bytes():
                self._retiring.discard(child.index)
                return
        quick = time.monotonic() - child.started < 1.0
        self._respawn_at[(child.role, child.index)] = time.monotonic() + (0.1 if quick else 0.0)

    def _account_lost(self, crashed: bool = True) -> None:
        """A receiver died: what it had read but not yet written to a ring is lost.

        Not so with a scratch area (recvmmsg): its successor places what it held.
        """
        assert self._stats is not None
        if self._scratch >= 0:
            return
        block = self._stats.block(RECEIVER_BLOCK)
        published = sum(int(ring.ctl[PUBLISHED]) for ring in self._rings)
        rejected = sum(int(block[slot]) for slot in RECEIVER_REJECTS)
        lost = int(block[Slot.RECEIVED]) - published - rejected - int(self._control[Slot.LOST])
        if lost > 0:
            self._control[Slot.LOST] += lost
            log.error("the receiver died holding %d datagram(s): lost", lost)
        elif crashed:
            # Killed inside recv(): the kernel may have dequeued a datagram that no counter
            # saw. At most one; reported as an upper bound, not as a certainty.
            self._control[Slot.POSSIBLY_LOST] += 1
            log.error("the receiver died; at most 1 datagram it was reading may be lost")

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for key, when in list(self._respawn_at.items()):
            if when <= now and self._phase in (Phase.RUNNING, Phase.DRAINING):
                del self._respawn_at[key]
                self._spawn(*key)

    def _watch_liveness(self) -> None:
        """Kill a worker stuck on one record, or frozen, for longer than worker_timeout.

        A busy worker is judged by how long its current record has taken, never by a ping,
        so a handler that legitimately computes for a while is left alone.
        """
        timeout = self.config.worker_timeout
        if not timeout or self._stats is None:
            return
        now, now_ns = time.monotonic(), time.monotonic_ns()
        self._watch_receiver(timeout, now_ns)
        for index, child in list(self._workers.items()):
            if child.kill_at:
                if now >= child.kill_at:
                    child.proc.kill()
                continue
            block = self._stats.block(worker_block(index))
            if block[Slot.STATE] != State.RUNNING:
                continue
            seen = self._liveness[index]
            seen.observe(int(block[Slot.PROGRESS]), now)
            why = stall_reason(block, seen, timeout, now, now_ns)  # /healthz asks the same
            if why:
                self._kill_stuck(child, why)

    def _watch_receiver(self, timeout: float, now_ns: int) -> None:
        """A frozen receiver (stopped, wedged) is killed and replaced on the same socket;
        with a scratch area its successor recovers what it held."""
        assert self._stats is not None
        child = self._receiver
        block = self._stats.block(RECEIVER_BLOCK)
        if child is not None and child.kill_at and time.monotonic() >= child.kill_at:
            child.proc.kill()
        if child is None or child.kill_at or block[Slot.STATE] != State.RUNNING:
            return
        if receiver_frozen(block, timeout, now_ns):
            self._kill_stuck(child, "unresponsive")

    def _kill_stuck(self, child: Child, why: str) -> None:
        log.error(
            "%s (pid %d) %s for more than %gs: dumping its traceback and killing it",
            child.name,
            child.proc.pid,
            why,
            self.config.worker_timeout,
        )
        self._control[Slot.WORKER_TIMEOUTS] += 1
        child.proc.send_signal(signal.SIGUSR1)  # faulthandler prints where it is stuck
        child.kill_at = time.monotonic() + KILL_GRACE

    def _advance_retirements(self) -> None:
        """Retire a SIGTTOU'd worker once the receiver stopped routing to it and it drained."""
        assert self._stats is not None
        receiver_caught_up = self._receiver_caught_up()
        for index in sorted(self._retiring):
            child = self._workers.get(index)
            if child is None or not receiver_caught_up or self._rings[index].used_bytes():
                continue
            self._stats.block(worker_block(index))[Slot.COMMAND] = COMMAND_RETIRE

    def _receiver_caught_up(self) -> bool:
        """The receiver routes with the current worker count (SIGTTIN/SIGTTOU)."""
        assert self._stats is not None
        seen = int(self._stats.block(RECEIVER_BLOCK)[Slot.ACTIVE_SEEN])
        return self._receiver is None or seen == self._active

    # -- SIGHUP: one slot at a time, each replacement booted before the old worker retires --

    def _advance_rolling(self) -> None:
        """Move the slot being replaced on; start the next once the previous one runs."""
        if self._handover is not None:
            self._advance_handover(self._handover)
            return
        if not self._rolling or self._phase is not Phase.RUNNING or self._any_booting():
            return
        index = self._rolling.pop(0)
        if index in self._workers and index not in self._retiring:
            self._handover = Handover(index, self._spawn_standby(index))
        elif not self._rolling:
            self._callbacks.emit_server_info("SIGHUP: last worker restarted")

    def _any_booting(self) -> bool:
        """A worker is starting or waiting to be restarted: no slot is to go down now."""
        if any(key[0] == "worker" for key in self._respawn_at):
            return True
        return any(self._booting(child) for child in self._workers.values())

    def _advance_handover(self, handover: Handover) -> None:
        assert self._stats is not None
        if handover.retired or handover.called_off:
            return  # waiting for the old worker, or the standby, to exit (see _on_exit)
        if self._stats.block(self._standby_at)[Slot.STATE] != State.READY:
            return  # still booting; a failure shows as its exit
        if self._phase is not Phase.RUNNING or handover.index in self._retiring:
            self._call_off(handover)
            return
        handover.retired = True
        index = handover.index
        if self._respawn_at.pop(("worker", index), None) is not None or index not in self._workers:
            self._take_over(handover)  # the old worker died meanwhile: nothing to wait for
            return
        self._stats.block(worker_block(index))[Slot.COMMAND] = COMMAND_RETIRE

    def _call_off(self, handover: Handover) -> None:
        """Tell the standby to exit without touching the ring (the old worker stays)."""
        assert self._stats is not None
        handover.called_off = True
        self._stats.block(self._standby_at)[Slot.COMMAND] = COMMAND_RETIRE

    def _replaced(self, handover: Handover, child: Child, code: int) -> None:
        """The retired worker exited: its standby takes the slot."""
        if code != 0:
            # Died while finishing: the standby replays what it had in hand.
            error = ChildCrashedError(f"{child.name} (pid {child.proc.pid}) died: {_how(code)}")
            log.error("%s; its replacement takes over", error)
            self._callbacks.emit_error(error)
            self._control[Slot.RESTARTS] += 1
        self._take_over(handover)

    def _take_over(self, handover: Handover) -> None:
        assert self._stats is not None
        self._handover = None
        index, child = handover.index, handover.standby
        block = self._stats.block(worker_block(index))
        block[Slot.STATE] = State.EMPTY  # booting, to the watchers, until it runs
        block[Slot.COMMAND] = 0
        block[Slot.BUSY_SINCE_NS] = 0
        self._workers[index] = child
        self._liveness[index] = Liveness(since=time.monotonic())
        self._boot_failures.pop(index, None)
        self._control[Slot.RECYCLED] += 1
        # Only now, with the old worker reaped: one consumer of the ring at a time.
        self._stats.block(self._standby_at)[Slot.COMMAND] = COMMAND_TAKE_OVER
        self._callbacks.emit_info(self.socket_path, child.name, ConnState.WORKER_STARTED)
        log.info("SIGHUP: %s replaced (now pid %d)", child.name, child.proc.pid)
        if not self._rolling and self._phase is Phase.RUNNING:
            self._callbacks.emit_server_info("SIGHUP: last worker restarted")

    def _standby_exited(self, handover: Handover, code: int) -> None:
        self._handover = None
        if handover.called_off and code == 0:
            log.info("SIGHUP: the new worker %d was called off", handover.index)
            return
        self._control[Slot.BOOT_FAILURES] += 1
        self._rolling.clear()
        if handover.retired:  # READY, then died: the old worker, told to go, gets a fresh one
            log.error(
                "SIGHUP: reload abandoned: the new worker %d died before taking over (%s)",
                handover.index,
                _how(code),
            )
        else:
            log.error(
                "SIGHUP: reload abandoned: the new worker %d failed to start (%s); the "
                "running workers keep the code they have",
                handover.index,
                _why(code),
            )
        self._callbacks.emit_server_info(f"SIGHUP: reload abandoned ({_why(code)})")

    def _report(self) -> None:
        if self._stats is None:
            return
        snap = self._stats.snapshot()
        received, errors = self._last_seen
        if snap.received > received:
            self._callbacks.emit_info(self.socket_path, "receiver", ConnState.DATAGRAMS_READ)
        if snap.handler_errors > errors:
            self._callbacks.emit_error(
                HandlerError(f"{snap.handler_errors - errors} handler error(s)")
            )
        self._last_seen = (snap.received, snap.handler_errors)

    def _fatal(self, code: int, message: str) -> None:
        if self._fatal_code is not None:
            return  # the other workers failing the same way: said once already
        log.critical("%s; stopping the server", message)
        self._callbacks.emit_server_info(f"fatal: {message}", logged=True)
        if self._phase is Phase.RUNNING:
            self._begin_drain(0.0)
        self._deadline = 0.0
        self._cut_short = True
        self._fatal_code = code
        self._fatal_reason = message

    # -- shutdown ---------------------------------------------------------------------------

    def _begin_drain(self, timeout: float) -> None:
        assert self._bound is not None
        self._phase = Phase.DRAINING
        self._timeout_used = timeout
        self._deadline = time.monotonic() + timeout
        self._rolling.clear()
        if self._handover is not None and not self._handover.retired:
            self._call_off(self._handover)  # the old worker drains its own ring
        # New senders get ENOENT from now on, and connected ones EPIPE: what is queued stays
        # readable and is drained, and nothing can slip in after the drain's last read.
        # (Not on a socket systemd lent us: the shutdown would outlive us on its socket.)
        unlink_if_ours(self._bound)
        if not self._bound.adopted:
            with contextlib.suppress(OSError):
                self._bound.sock.shutdown(socket.SHUT_RD)
        # A flag, not SIGTERM: a receiver still starting up would die of the signal before
        # it could drain. The receiver polls it every 50 ms, or at start.
        self._control[Slot.DRAIN] = 1
        if self._receiver is None and not self._respawn_at:
            self._close_rings()

    def _close_rings(self) -> None:
        for ring, (_, write_fd) in zip(self._rings, self._wakes, strict=True):
            ring.close_producer()
            signal_wake(write_fd)

    def _advance_drain(self) -> None:
        alive = self._children()
        waiting_respawn = bool(self._respawn_at)
        if not alive and not waiting_respawn:
            self._finish(killed=[])
        elif time.monotonic() >= self._deadline:
            for child in alive:
                child.proc.kill()
            for child in alive:
                child.proc.wait()
            if self._receiver is not None:
                self._account_lost(crashed=False)
            self._respawn_at.clear()
            self._finish(killed=[f"{child.name} (pid {child.proc.pid})" for child in alive])

    def _finish(self, killed: list[str]) -> None:
        """Count what was left, set the exit code, report, release everything.

        Args:
            killed: the children that were still running at the deadline and were killed.
        """
        self._settle_counts()
        left_in_rings = sum(ring.count_unacknowledged() for ring in self._rings)
        left_in_rings += self._left_in_scratch()
        left_in_socket = self._drain_socket()
        self.unhandled = left_in_rings + left_in_socket
        snap = self._stats.snapshot() if self._stats else None
        self._phase = Phase.STOPPED
        self._final = snap
        if self._fatal_code is not None:
            self.exit_code = self._fatal_code
        elif self.unhandled or killed:
            # Killed at the deadline: even with every record handled, a teardown() (a final
            # flush, a closed connection) was cut off. Not a clean stop.
            self.exit_code = EXIT_UNHANDLED
            self._report_unclean(left_in_rings, left_in_socket, killed)
        else:
            self.exit_code = EXIT_OK
        if snap is not None:
            self._callbacks.emit_server_info(
                f"stopped: received={snap.received} handled={snap.handled} "
                f"rejected={snap.rejected} handler_errors={snap.handler_errors} "
                f"invalid={snap.invalid} oversized={snap.oversized} "
                f"replayed={snap.replayed} quarantined={snap.quarantined} lost={snap.lost} "
                f"possibly_lost={snap.possibly_lost} corrupt_rings={snap.corrupt_rings} "
                f"restarts={snap.restarts} boot_failures={snap.boot_failures} "
                f"unhandled={self.unhandled}"
            )
        self._release()

    # -- rings: counts after a kill, corruption (worker branch; the logic is in ring.py) ---

    def _tend_corrupt_rings(self) -> None:
        """Reset each ring marked corrupt (by its worker or the receiver): stop its worker,
        wait until the receiver confirms it stopped writing to it, empty it (what it held is
        counted as lost), and start a new worker on it."""
        assert self._stats is not None
        for index, ring in enumerate(self._rings):
            if not ring.marked_corrupt:
                continue
            self._respawn_at.pop(("worker", index), None)  # not onto the corrupt ring
            child = self._workers.get(index)
            if child is not None:  # it exits by itself on the mark; killed if it does not
                if not child.kill_at:
                    self._stats.block(worker_block(index))[Slot.COMMAND] = COMMAND_RETIRE
                    child.kill_at = time.monotonic() + CORRUPT_GRACE
                elif time.monotonic() >= child.kill_at:
                    child.proc.kill()
                continue
            if self._receiver is not None and not ring.quiesced:
                continue
            lost = ring.reset()
            self._control[Slot.LOST] += lost
            self._control[Slot.CORRUPT_RINGS] += 1
            error = RingCorruptError(
                f"worker {index}'s ring was corrupt: emptied it ({lost} record(s) lost)"
            )
            log.error("%s; starting a new worker on it", error)
            self._callbacks.emit_error(error)
            if index < self._active or index in self._retiring:
                self._spawn("worker", index)

    def _settle_counts(self) -> None:
        """Every worker is gone: settle the counts of one killed between two stores (at the
        deadline: no successor settles them)."""
        assert self._stats is not None
        for index, ring in enumerate(self._rings):
            if ring.marked_corrupt:  # its journal is no more trustworthy than the rest
                continue
            with self._stats.block(worker_block(index)) as block:
                ring.settle_journal(block, JOURNALED)

    def _report_unclean(self, left_in_rings: int, left_in_socket: int, killed: list[str]) -> None:
        when = (
            "when the stop was forced"
            if self._cut_short
            else f"at the graceful timeout ({self._timeout_used:g}s)"
        )
        if killed:
            log.error(
                "%s killed %s: still running, so teardown() did not finish",
                ", ".join(killed),
                when,
            )
        if self.unhandled:
            log.error(
                "stopped with %d record(s) left unhandled (%d in rings, %d in the socket queue)%s",
                self.unhandled,
                left_in_rings,
                left_in_socket,
                f", the children killed {when}" if killed else "",
            )

    def _drain_socket(self) -> int:
        """Count (and discard) datagrams still queued after every child is gone."""
        if self._bound is None:
            return 0
        count = 0
        while True:
            try:
                self._bound.sock.recv(1, socket.MSG_DONTWAIT)
            except OSError:
                return count
            count += 1

    def _left_in_scratch(self) -> int:
        """Datagrams a receiver killed at the deadline had read but not placed."""
        if self._scratch < 0:
            return 0
        cfg = self.config
        control = ANCILLARY_SIZE if cfg.wants_credentials else 0
        area = mmsg.BatchReceiver(-1, cfg.max_datagram, control, cfg.receive_batch, self._scratch)
        try:
            return len(area.unplaced())
        finally:
            area.close()

    def _release(self) -> None:
        if self._observers is not None:  # first: their threads read what is released below
            self._observers.close()
            self._observers = None
        if self._bound is not None:
            unlink_if_ours(self._bound)
            self._bound.sock.close()
        for ring in self._rings:
            ring.close()
            os.close(ring.fd)
        for read_fd, write_fd in {*self._wakes, self._space}:
            for fd in {read_fd, write_fd} - {-1}:
                os.close(fd)
        if self._stats is not None:
            self._control.release()
            self._stats.close()
            os.close(self._stats.fd)
            self._stats = None
        self._rings, self._wakes, self._space = [], [], (-1, -1)
        if self._scratch >= 0:
            os.close(self._scratch)
            self._scratch = -1


def _create_scratch(config: Config) -> int:
    """The receiver's recvmmsg area, held here so a receiver's successor can recover it."""
    if config.receive_batch <= 1 or not mmsg.available():
        return -1
    control = ANCILLARY_SIZE if config.wants_credentials else 0
    return create_shared_fd(mmsg.scratch_size(config.max_datagram, control, config.receive_batch))


def check_platform(config: Config) -> None:
    """Fail at start-up, not later, when the platform lacks a feature the config needs.

    Raises:
        UnsupportedPlatformError: credentials (SO_PASSCRED) outside Linux.
    """
    if config.wants_credentials and not hasattr(socket, "SO_PASSCRED"):
        raise UnsupportedPlatformError(
            "sender credentials (credentials, allow_uid, allow_gid, rate_limit) need "
            "SO_PASSCRED, which only Linux has"
        )


def _how(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _why(code: int) -> str:
    """Why a worker failed to boot, from its exit code."""
    if code == EXIT_HANDLER_IMPORT:
        return "the handler could not be imported"
    if code == EXIT_WORKER_BOOT:
        return "setup() failed"
    return _how(code)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _no_mode_why(bound: BoundSocket) -> str:
    """Why ``mode`` and ``group`` were not applied to a socket without a file of ours."""
    if bound.adopted and not bound.is_abstract:
        return (
            "the socket is systemd's: its mode and group come from the unit "
            "(SocketMode=, SocketGroup=)"
        )
    if bound.adopted:
        return "the socket is systemd's, and an abstract socket has no file"
    return "an abstract socket has no file"

"""The supervisor's main loop, its lifecycle API and its signals (gunicorn's arbiter).

It runs no user code and creates no event loop before its children exist. Each tick it
reaps, respawns, watches liveness, scales, reloads and drains, each by the part of
:mod:`ugram.supervisor` that owns that job; the parts share one
:class:`~ugram.supervisor.state.ServerState` and the :class:`~.resources.Resources` made
at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
from dataclasses import dataclass
from types import FrameType

import setproctitle

from ..config import Config
from ..errors import EXIT_OK, HandlerError, ServerFailedError, ShutdownTimeoutError
from ..events import ConnState, ErrorCallback, InfoCallback, ServerInfoCallback
from ..stats import Snapshot
from . import signals
from .children import Children
from .corrupt import CorruptRings
from .drain import Drain
from .liveness import Watchdog
from .observers import Observers
from .reload import RollingReload
from .resources import Resources, bind, check_platform
from .scaling import Scaler
from .state import Child, Phase, ServerState

log = logging.getLogger("ugram.supervisor")

TICK = 0.05


@dataclass(eq=False)
class _Parts:
    """The supervisor's parts once started: one per job, all on the same state."""

    res: Resources
    children: Children
    watchdog: Watchdog
    scaler: Scaler
    reload: RollingReload
    corrupt: CorruptRings
    drain: Drain
    observers: Observers


class Supervisor:
    """Runs a ugram server: ``Supervisor(config).run()`` blocks until it stops.

    For embedding in an asyncio application use ``await serve()`` and ``await shutdown()``.
    """

    def __init__(self, config: Config) -> None:
        """A server for ``config``; nothing is bound or started before :meth:`start`."""
        self.config = config
        self._state = ServerState(config, config.socket, active=config.workers)
        self._parts: _Parts | None = None
        self._signals: list[int] = []
        self._last_seen = (0, 0)  # received, handler errors: what on_info/on_error last saw

    # -- golib-shaped API -------------------------------------------------------------------

    def on_error(self, callback: ErrorCallback) -> None:
        """Register ``callback(*errors)``, called on child crashes and handler errors."""
        self._state.callbacks.error.append(callback)

    def on_info(self, callback: InfoCallback) -> None:
        """Register ``callback(local, remote, state)`` for process and read events."""
        self._state.callbacks.info.append(callback)

    def on_server_info(self, callback: ServerInfoCallback) -> None:
        """Register ``callback(message)`` for server lifecycle messages."""
        self._state.callbacks.server_info.append(callback)

    @property
    def is_running(self) -> bool:
        """True while the server accepts datagrams."""
        return self._state.phase is Phase.RUNNING

    @property
    def is_gone(self) -> bool:
        """True once shutdown has begun (draining or stopped)."""
        return self._state.phase in (Phase.DRAINING, Phase.STOPPED)

    @property
    def open_connections(self) -> int:
        """Always 0: datagram sockets have no connections."""
        return 0

    @property
    def socket_path(self) -> str:
        """The socket path actually bound (absolute), or the configured one before start."""
        return self._state.socket_path

    @property
    def workers(self) -> int:
        """How many workers the receiver routes to now (changed by SIGTTIN/SIGTTOU)."""
        return self._state.active

    @property
    def exit_code(self) -> int | None:
        """The exit code once stopped (as ``ugram serve`` would exit), else None."""
        return self._state.exit_code

    @property
    def unhandled(self) -> int:
        """Records left unhandled when the server stopped."""
        return self._state.unhandled

    def statistics(self) -> Snapshot:
        """Server-wide counters right now (the final ones once stopped).

        Raises:
            RuntimeError: the server was never started.
        """
        parts = self._parts
        if parts is not None and not parts.res.released:
            return parts.res.stats.snapshot()
        if parts is not None and parts.drain.final is not None:
            return parts.drain.final
        raise RuntimeError("the server has not been started")

    def worker_pids(self) -> dict[int, int]:
        """The pid of each live worker, by slot."""
        return {index: child.proc.pid for index, child in self._state.workers.items()}

    def receiver_pid(self) -> int | None:
        """The pid of the live receiver, if any."""
        receiver = self._state.receiver
        return receiver.proc.pid if receiver else None

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
        previous = signals.install(self._on_signal, write_fd)
        # The blocking form owns its process: name it for ps/top. serve() leaves an
        # embedding application's title alone.
        setproctitle.setproctitle(f"ugram: supervisor {self.config.socket}")
        # poll, not select: an embedding application with many files open gives us fds
        # above FD_SETSIZE (1024), which select() refuses.
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        try:
            self.start()
            while self._state.phase is not Phase.STOPPED:
                poller.poll(TICK * 1000)
                signals.drain_pipe(read_fd)
                self._handle_signals()
                self.tick()
        finally:
            signals.restore(previous)
            os.close(read_fd)
            os.close(write_fd)
            if self._state.phase is not Phase.STOPPED:
                self.close()
        return self._outcome()

    def _outcome(self) -> int:
        """The exit code of a server that has stopped.

        Raises:
            ServerFailedError: it stopped because it could not serve at all: a failure that
                embedding code ignoring the return value must still see.
        """
        assert self._state.exit_code is not None
        drain = self._parts.drain if self._parts else None
        if drain is not None and drain.fatal_code is not None:
            raise ServerFailedError(drain.fatal_code, drain.fatal_reason)
        return self._state.exit_code

    def request_stop(self, force: bool = False) -> None:
        """Begin a graceful shutdown; ``force`` kills the children at once."""
        if self._state.phase is Phase.RUNNING:
            self._begin_drain(self.config.graceful_timeout)
        if force and self._state.phase is Phase.DRAINING and self._parts is not None:
            self._parts.drain.cut(forced=True)

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
            elif self._state.phase is Phase.RUNNING:
                getattr(self, f"handle_{name[3:].lower()}")()

    def _handle_stop(self, name: str, force: bool) -> None:
        callbacks = self._state.callbacks
        if self._state.phase is Phase.DRAINING and force:
            callbacks.emit_server_info(f"{name} again: stopping now")
            self.request_stop(force=True)
        elif self._state.phase is Phase.RUNNING:
            callbacks.emit_server_info(f"{name}: draining, then stopping")
            self.request_stop()

    def handle_hup(self) -> None:
        """SIGHUP: restart every worker, one at a time, re-importing the handler.

        Each replacement boots (imports the handler, runs ``setup()``) beside the worker it
        replaces; only then is the old one retired, and the replacement takes over its ring
        once it has exited. The next slot follows once that replacement runs. A replacement
        that cannot boot abandons the reload: the running workers keep the code they have.
        Does nothing unless the server is running.
        """
        if self._parts is not None and self.is_running:
            self._parts.reload.start()

    def handle_ttin(self) -> None:
        """SIGTTIN: one worker more (up to max_workers); nothing unless running."""
        if self._parts is not None and self.is_running:
            self._parts.scaler.add()

    def handle_ttou(self) -> None:
        """SIGTTOU: one worker fewer (at least one stays); its ring is drained first.
        Nothing unless running."""
        if self._parts is not None and self.is_running:
            self._parts.scaler.remove()

    # Aliases so an embedding application can do what the signals do.
    reload = handle_hup
    add_worker = handle_ttin
    remove_worker = handle_ttou

    # -- async form -------------------------------------------------------------------------

    async def serve(self) -> int:
        """Start the server and run it until it stops; return the exit code.

        Installs no signal handlers: the embedding application calls :meth:`shutdown`.

        Raises:
            SocketError: the socket cannot be bound (nothing was started).
            ServerFailedError: the workers could not boot (as for :meth:`run`).
        """
        self.start()
        while self._state.phase is not Phase.STOPPED:
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
        if self._state.phase is Phase.RUNNING:
            self._begin_drain(self.config.graceful_timeout if timeout is None else timeout)
        while self._state.phase is not Phase.STOPPED:
            await asyncio.sleep(TICK)
            self.tick()
        if self._state.unhandled:
            assert self._parts is not None  # records were left: it ran
            raise ShutdownTimeoutError(self._state.unhandled, self._parts.drain.timeout_used)
        assert self._state.exit_code is not None
        return self._state.exit_code

    def close(self) -> None:
        """Stop at once: kill every child, count what was left, clean up (exit code 5 if
        a child was still running)."""
        state = self._state
        if state.phase is Phase.STOPPED:
            return
        if state.phase is Phase.NEW or self._parts is None:
            state.phase = Phase.STOPPED
            state.exit_code = EXIT_OK
            return
        if state.phase is Phase.RUNNING:
            self._begin_drain(0.0)
        self._parts.drain.cut(forced=False)
        self.tick()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket, create the rings and start the receiver and the workers.

        Raises:
            SocketError: the socket cannot be bound.
            UnsupportedPlatformError: the rings cannot run safely on this CPU.
        """
        cfg, state = self.config, self._state
        check_platform(cfg)
        bound = bind(cfg)
        state.socket_path = bound.path
        res = Resources.create(cfg, bound)
        try:
            observers = Observers(state, res)  # binds now: a bad metrics address stops us here
        except BaseException:
            res.release()
            raise
        children = Children(state, res, fatal=self._fatal)
        parts = self._parts = _Parts(
            res=res,
            children=children,
            watchdog=Watchdog(state, res),
            scaler=Scaler(state, res, children),
            reload=RollingReload(state, res, children),
            corrupt=CorruptRings(state, res, children),
            drain=Drain(state, res, release=self._release),
            observers=observers,
        )
        parts.scaler.set_active(cfg.workers)
        state.phase = Phase.RUNNING
        for index in range(cfg.workers):
            children.spawn("worker", index)
        children.spawn("receiver", 0)
        observers.start()  # threads only once the children exist

    # -- the main loop ----------------------------------------------------------------------

    def tick(self) -> None:
        """One non-blocking round: reap, respawn, watch liveness, scale, report, drain."""
        parts = self._parts
        if parts is None or self._state.phase in (Phase.NEW, Phase.STOPPED):
            return
        self._reap()
        parts.corrupt.tend()
        parts.children.note_started()
        parts.children.respawn_due()
        parts.watchdog.watch()
        parts.scaler.advance()
        parts.reload.advance()
        self._emit_progress(parts.res.stats.snapshot())
        if self._state.phase is Phase.DRAINING:
            parts.drain.advance()

    def _reap(self) -> None:
        for child in self._state.children():
            code = child.proc.poll()
            if code is not None:
                self._on_exit(child, code)

    def _on_exit(self, child: Child, code: int) -> None:
        assert self._parts is not None
        parts, handover = self._parts, self._state.handover
        if handover is not None and child is handover.standby:
            parts.reload.standby_exited(handover, code)
            return
        parts.children.forget(child, code)
        if child.role == "worker":
            if handover is not None and handover.retired and child.index == handover.index:
                parts.reload.replaced(handover, child, code)
                return
            if parts.res.rings[child.index].marked_corrupt:
                return  # CorruptRings resets its ring, then starts a new worker
        parts.children.settle(child, code)

    def _emit_progress(self, snap: Snapshot) -> None:
        """Tell the callbacks that datagrams arrived, or that handlers raised, since the
        last tick."""
        callbacks = self._state.callbacks
        received, errors = self._last_seen
        if snap.received > received:
            callbacks.emit_info(self.socket_path, "receiver", ConnState.DATAGRAMS_READ)
        if snap.handler_errors > errors:
            callbacks.emit_error(HandlerError(f"{snap.handler_errors - errors} handler error(s)"))
        self._last_seen = (snap.received, snap.handler_errors)

    def _begin_drain(self, timeout: float) -> None:
        assert self._parts is not None
        self._parts.reload.abandon()
        self._parts.drain.begin(timeout)

    def _fatal(self, code: int, message: str) -> None:
        """The server cannot serve at all: stop it at once, to exit with ``code``."""
        assert self._parts is not None
        drain = self._parts.drain
        if drain.fatal_code is not None:
            return  # the other workers failing the same way: said once already
        log.critical("%s; stopping the server", message)
        self._state.callbacks.emit_server_info(f"fatal: {message}", logged=True)
        if self._state.phase is Phase.RUNNING:
            self._begin_drain(0.0)
        drain.cut(forced=True)
        drain.fail(code, message)

    def _release(self) -> None:
        assert self._parts is not None
        self._parts.observers.close()  # first: their threads read what is released below
        self._parts.res.release()

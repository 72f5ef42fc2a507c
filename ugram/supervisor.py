"""The supervisor: owns the socket and the rings, starts, reaps and restarts the children.

It runs no user code and creates no event loop before its children exist; children are
started explicitly with ``subprocess`` and inherit exactly the fds they need (``pass_fds``).
Because the supervisor holds the bound socket and every ring for the server's whole life, a
dead receiver is replaced on the same socket (the kernel keeps queued datagrams meanwhile) and
a dead worker's replacement resumes from the last acknowledged record.
"""

from __future__ import annotations

import asyncio
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

import setproctitle

from .config import Config
from .errors import (
    EXIT_HANDLER_IMPORT,
    EXIT_OK,
    EXIT_UNHANDLED,
    EXIT_WORKER_BOOT,
    ChildCrashedError,
    HandlerError,
    ShutdownTimeoutError,
)
from .events import Callbacks, ConnState, ErrorCallback, InfoCallback, ServerInfoCallback
from .ring import Ring
from .sockets import BoundSocket, bind_socket, unlink_if_ours
from .spec import ChildSpec
from .stats import RECEIVER_BLOCK, Snapshot, Stats
from .wake import make_wake, signal_wake

log = logging.getLogger("ugram.supervisor")

TICK = 0.05
RESPAWN_BACKOFF_MAX = 5.0


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

    @property
    def name(self) -> str:
        """``receiver`` or ``worker N``."""
        return "receiver" if self.role == "receiver" else f"worker {self.index}"


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
        self._respawn_at: dict[tuple[str, int], float] = {}
        self._failures: dict[tuple[str, int], int] = {}
        self._deadline = 0.0
        self._signals: list[int] = []
        self._last_seen = (0, 0)
        self._fatal_code: int | None = None
        self._timeout_used = config.graceful_timeout
        self._final: Snapshot | None = None

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

    def statistics(self) -> Snapshot:
        """Server-wide counters right now.

        Raises:
            RuntimeError: the server was never started.
        """
        if self._stats is not None:
            return self._stats.snapshot()
        if self._final is not None:
            return self._final
        raise RuntimeError("the server has not been started")

    # -- blocking form ----------------------------------------------------------------------

    def run(self) -> int:
        """Start the server, handle SIGTERM/SIGINT, block until it stops; return the exit code.

        SIGTERM or SIGINT drains and stops; a second SIGINT stops at once.

        Raises:
            SocketError: the socket cannot be bound (nothing was started).
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        previous = self._install_signals(write_fd)
        try:
            self.start()
            while self._phase is not Phase.STOPPED:
                select.select([read_fd], [], [], TICK)
                _drain_pipe(read_fd)
                self._handle_signals()
                self.tick()
        finally:
            self._restore_signals(previous)
            os.close(read_fd)
            os.close(write_fd)
            if self._phase is not Phase.STOPPED:
                self.close()
        assert self.exit_code is not None
        return self.exit_code

    def request_stop(self, force: bool = False) -> None:
        """Begin a graceful shutdown; ``force`` kills the children at once."""
        if self._phase is Phase.RUNNING:
            self._begin_drain(self.config.graceful_timeout)
        if force and self._phase is Phase.DRAINING:
            self._deadline = 0.0

    def _install_signals(self, wake_fd: int) -> dict[int, object]:
        previous: dict[int, object] = {}
        old_wakeup = signal.set_wakeup_fd(wake_fd)
        previous[-1] = old_wakeup
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
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
            if signum == signal.SIGCHLD:
                continue
            name = signal.Signals(signum).name
            if self._phase is Phase.DRAINING and signum == signal.SIGINT:
                self._callbacks.emit_server_info(f"{name} again: stopping now")
                self.request_stop(force=True)
            elif self._phase is Phase.RUNNING:
                self._callbacks.emit_server_info(f"{name}: draining, then stopping")
                self.request_stop()

    # -- async form -------------------------------------------------------------------------

    async def serve(self) -> int:
        """Start the server and run it until it stops; return the exit code.

        Installs no signal handlers: the embedding application calls :meth:`shutdown`.
        """
        self.start()
        while self._phase is not Phase.STOPPED:
            await asyncio.sleep(TICK)
            self.tick()
        assert self.exit_code is not None
        return self.exit_code

    async def shutdown(self, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Drain and stop within ``timeout`` seconds (default: graceful_timeout).

        Returns:
            The exit code (0 when everything was handled).

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
        """Stop at once: kill every child, count what was left, clean up."""
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
        setproctitle.setproctitle(f"ugram: supervisor {cfg.socket}")
        self._bound = bind_socket(cfg.socket, cfg.file_mode, cfg.gid)
        try:
            self._rings = [Ring.create(cfg.ring_size) for _ in range(cfg.workers)]
            self._wakes = [make_wake() for _ in range(cfg.workers)]
            self._space = make_wake()
            self._stats = Stats.create(cfg.workers + 1)
        except BaseException:
            self._release()
            raise
        self._phase = Phase.RUNNING
        for index in range(cfg.workers):
            self._spawn("worker", index)
        self._spawn("receiver", 0)
        self._callbacks.emit_server_info(
            f"listening on {self._bound.path} with {cfg.workers} worker(s), "
            f"handler {cfg.handler}, codec {cfg.codec}"
        )

    def _spec(self, role: str, index: int) -> ChildSpec:
        assert self._bound is not None
        assert self._stats is not None
        if role == "receiver":
            rings = [ring.fd for ring in self._rings]
            wakes = [write for _, write in self._wakes]
            block, space = RECEIVER_BLOCK, self._space[0]
        else:
            rings, wakes = [self._rings[index].fd], [self._wakes[index][0]]
            block, space = index + 1, self._space[1]
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
        )

    def _spawn(self, role: str, index: int) -> None:
        spec = self._spec(role, index)
        proc = subprocess.Popen(spec.argv(), pass_fds=spec.fds())
        child = Child(role, index, proc, time.monotonic())
        if role == "receiver":
            self._receiver = child
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.RECEIVER_STARTED)
        else:
            self._workers[index] = child
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.WORKER_STARTED)
        log.debug("started %s (pid %d)", child.name, proc.pid)

    # -- the main loop ----------------------------------------------------------------------

    def tick(self) -> None:
        """One non-blocking round: reap, respawn, report, advance the shutdown."""
        if self._phase in (Phase.NEW, Phase.STOPPED):
            return
        self._reap()
        self._respawn_due()
        self._report()
        if self._phase is Phase.DRAINING:
            self._advance_drain()

    def _reap(self) -> None:
        children = [*self._workers.values(), *([self._receiver] if self._receiver else [])]
        for child in children:
            code = child.proc.poll()
            if code is not None:
                self._on_exit(child, code)

    def _on_exit(self, child: Child, code: int) -> None:
        if child.role == "receiver":
            self._receiver = None
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.RECEIVER_STOPPED)
        else:
            del self._workers[child.index]
            self._callbacks.emit_info(self.socket_path, child.name, ConnState.WORKER_STOPPED)
        if code == 0 and self._phase is Phase.DRAINING:
            return
        if code in (EXIT_HANDLER_IMPORT, EXIT_WORKER_BOOT) and child.role == "worker":
            self._fatal(code, f"{child.name} could not start its handler (exit code {code})")
            return
        self._crashed(child, code)

    def _crashed(self, child: Child, code: int) -> None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        error = ChildCrashedError(f"{child.name} (pid {child.proc.pid}) died: {how}")
        log.error("%s; restarting it", error)
        self._callbacks.emit_error(error)
        if child.role == "receiver" and self._phase is Phase.DRAINING:
            # No receiver will finish the drain: close the rings in its place so that the
            # workers finish what was published and exit.
            self._close_rings()
            return
        key = (child.role, child.index)
        quick = time.monotonic() - child.started < 1.0
        failures = self._failures.get(key, 0) + 1 if quick else 0
        self._failures[key] = failures
        delay = min(RESPAWN_BACKOFF_MAX, 0.1 * 2**failures) if failures else 0.0
        self._respawn_at[key] = time.monotonic() + delay

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for key, when in list(self._respawn_at.items()):
            if when <= now and self._phase in (Phase.RUNNING, Phase.DRAINING):
                del self._respawn_at[key]
                self._spawn(*key)

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
        log.critical("%s; stopping the server", message)
        self._callbacks.emit_server_info(f"fatal: {message}")
        if self._phase is Phase.RUNNING:
            self._begin_drain(0.0)
        self._deadline = 0.0
        self._fatal_code = code

    # -- shutdown ---------------------------------------------------------------------------

    def _begin_drain(self, timeout: float) -> None:
        assert self._bound is not None
        self._phase = Phase.DRAINING
        self._timeout_used = timeout
        self._deadline = time.monotonic() + timeout
        # New senders get ENOENT from now on; connected ones may still send until the drain.
        unlink_if_ours(self._bound)
        if self._receiver is not None:
            self._receiver.proc.send_signal(signal.SIGTERM)
        else:
            self._close_rings()

    def _close_rings(self) -> None:
        for ring, (_, write_fd) in zip(self._rings, self._wakes, strict=True):
            ring.close_producer()
            signal_wake(write_fd)

    def _advance_drain(self) -> None:
        alive = [*self._workers.values(), *([self._receiver] if self._receiver else [])]
        waiting_respawn = bool(self._respawn_at)
        if not alive and not waiting_respawn:
            self._finish(killed=False)
        elif time.monotonic() >= self._deadline:
            for child in alive:
                child.proc.kill()
            for child in alive:
                child.proc.wait()
            self._respawn_at.clear()
            self._finish(killed=True)

    def _finish(self, killed: bool) -> None:
        left_in_rings = sum(ring.depth() for ring in self._rings)
        left_in_socket = self._drain_socket()
        self.unhandled = left_in_rings + left_in_socket
        snap = self._stats.snapshot() if self._stats else None
        self._phase = Phase.STOPPED
        self._final = snap
        if self._fatal_code is not None:
            self.exit_code = self._fatal_code
        elif self.unhandled:
            self.exit_code = EXIT_UNHANDLED
            log.error(
                "stopped with %d record(s) left unhandled (%d in rings, %d in the socket queue)%s",
                self.unhandled,
                left_in_rings,
                left_in_socket,
                " after the graceful timeout" if killed else "",
            )
        else:
            self.exit_code = EXIT_OK
        if snap is not None:
            self._callbacks.emit_server_info(
                f"stopped: received={snap.received} handled={snap.handled} "
                f"rejected={snap.rejected} handler_errors={snap.handler_errors} "
                f"unhandled={self.unhandled}"
            )
        self._release()

    def _drain_socket(self) -> int:
        """Count (and discard) datagrams still queued after every child is gone."""
        if self._bound is None:
            return 0
        count = 0
        while True:
            try:
                self._bound.sock.recv(1, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                return count
            count += 1

    def _release(self) -> None:
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
            self._stats.close()
            os.close(self._stats.fd)
            self._stats = None
        self._rings, self._wakes, self._space = [], [], (-1, -1)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass

"""The receiver and the workers: started, reaped, restarted with backoff, or given up on.

Children are started explicitly with ``subprocess`` and inherit exactly the fds they need
(``pass_fds``). A worker that dies while booting is a boot failure: at start-up the server
stops (the handler cannot be imported, or its ``setup()`` keeps failing) instead of
respawning forever; once serving, that slot is retried with a growing delay.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable

from .. import ordering, portable, speedups
from ..errors import EXIT_HANDLER_IMPORT, EXIT_WORKER_BOOT, ChildCrashedError
from ..events import ConnState
from ..health import Liveness
from ..ring import CLOSED
from ..stats import Slot, State
from .accounting import account_lost
from .resources import Resources
from .state import Child, Phase, ServerState, how, why

log = logging.getLogger("ugram.supervisor")

RESPAWN_BACKOFF_MAX = 5.0

Fatal = Callable[[int, str], None]  # stop the server: (exit code, what happened)


class Children:
    """Starts children and decides what each exit means."""

    def __init__(self, state: ServerState, res: Resources, fatal: Fatal) -> None:
        """Start children on ``res``; ``fatal(code, message)`` stops the server."""
        self._state, self._res, self._fatal = state, res, fatal
        self._boot_failures: dict[int, int] = {}
        self._ran: set[int] = set()  # slots where a worker got past booting at least once
        self._started_up = False  # every initial slot has run: boot failures are retried

    def spawn(self, role: str, index: int) -> None:
        """Start the receiver (``role`` ``"receiver"``) or the worker of slot ``index``."""
        state = self._state
        spec = self._res.spec(state.config, role, index)
        block = self._res.stats.block(spec.stats_block)
        block[Slot.STATE] = State.EMPTY
        block[Slot.COMMAND] = 0
        block[Slot.BUSY_SINCE_NS] = 0
        proc = subprocess.Popen(spec.argv(), pass_fds=spec.fds())
        child = Child(role, index, proc, time.monotonic())
        if role == "receiver":
            state.receiver = child
            state.emit_info(child, ConnState.RECEIVER_STARTED)
        else:
            state.workers[index] = child
            state.liveness[index] = Liveness(since=time.monotonic())
            state.emit_info(child, ConnState.WORKER_STARTED)
        log.debug("started %s (pid %d)", child.name, proc.pid)

    def booting(self, child: Child) -> bool:
        """The worker ``child`` has not yet imported its handler and run ``setup()``."""
        state = self._res.worker(child.index)[Slot.STATE]
        return state in (State.EMPTY, State.BOOTING)

    def any_booting(self) -> bool:
        """A worker is starting or waiting to be restarted: no slot is to go down now."""
        if any(key[0] == "worker" for key in self._state.respawn_at):
            return True
        return any(self.booting(child) for child in self._state.workers.values())

    def took_over(self, index: int) -> None:
        """A SIGHUP replacement runs slot ``index``: its boot failures are forgotten."""
        self._boot_failures.pop(index, None)

    def receiver_caught_up(self) -> bool:
        """The receiver routes with the current worker count (SIGTTIN/SIGTTOU)."""
        seen = int(self._res.receiver()[Slot.ACTIVE_SEEN])
        return self._state.receiver is None or seen == self._state.active

    def note_started(self) -> None:
        """Start-up is over once a worker of every initial slot has got past booting: the
        handler imports and sets up."""
        if self._started_up:
            return
        state = self._state
        self._ran.update(i for i, child in state.workers.items() if not self.booting(child))
        self._started_up = all(i in self._ran for i in range(state.config.workers))
        if self._started_up and state.phase is Phase.RUNNING:
            self._announce()

    def _announce(self) -> None:
        # Only once every worker has imported the handler and run setup(): a handler that
        # cannot be served is reported as that, never after a claim that the server listens.
        cfg = self._state.config
        self._state.callbacks.emit_server_info(
            f"listening on {self._res.bound.path} with {cfg.workers} worker(s), "
            f"handler {cfg.handler}, codec {cfg.codec}; "
            f"per-datagram loops {speedups.describe(cfg.speedups)}; "
            f"memory ordering {ordering.describe()}; "
            f"platform {portable.current().describe()}"
        )

    def respawn_due(self) -> None:
        """Start the children whose restart delay has passed."""
        now = time.monotonic()
        state = self._state
        for key, when in list(state.respawn_at.items()):
            if when <= now and state.phase in (Phase.RUNNING, Phase.DRAINING):
                del state.respawn_at[key]
                self.spawn(*key)

    # -- exits ------------------------------------------------------------------------------

    def forget(self, child: Child, code: int) -> None:
        """``child`` exited with ``code``: it is no longer ours to watch."""
        state = self._state
        if child.role == "receiver":
            state.receiver = None
            state.emit_info(child, ConnState.RECEIVER_STOPPED)
            if code != 0:
                account_lost(self._res)
            return
        del state.workers[child.index]
        # A dead worker's forwarding sink can no longer say when publishing works again:
        # its successor (if any) starts by taking every datagram (it judges anew).
        self._res.rings[child.index].set_shedding(False)
        state.emit_info(child, ConnState.WORKER_STOPPED)
        if not self.booting(child):
            self._ran.add(child.index)  # it ran, even if no tick saw it running

    def settle(self, child: Child, code: int) -> None:
        """Act on a child's exit: replace it, retry it later, retire it, or stop the server."""
        if code == 0:
            self._exited_cleanly(child)
        elif child.role == "worker" and (code == EXIT_HANDLER_IMPORT or self.booting(child)):
            self._boot_failed(child, code)
        else:
            self._crashed(child, code)

    def _exited_cleanly(self, child: Child) -> None:
        state, res = self._state, self._res
        if child.role == "receiver":
            if state.phase is Phase.RUNNING:
                # Not told to drain (the DRAIN flag), so not meant to stop: a new receiver
                # takes the socket, and rings it may have closed are open again.
                log.warning("the receiver exited on its own; starting a new one")
                res.reopen_rings()
                res.control[Slot.RESTARTS] += 1
                self.spawn("receiver", 0)
            return
        index = child.index
        if state.phase is not Phase.RUNNING:
            if self._ring_needs_worker(index):
                self.spawn("worker", index)  # recycled mid-drain: its ring is not finished
            return
        if index in state.retiring:
            if res.rings[index].used_bytes():
                # Recycled before its ring was empty: a successor finishes the ring, then is
                # retired like any other once it is drained.
                self.spawn("worker", index)
                return
            state.retiring.discard(index)
            log.info("%s retired", child.name)
            return
        # Recycled (max_records, max_rss): replace it at once.
        res.control[Slot.RECYCLED] += 1
        self.spawn("worker", index)

    def _ring_needs_worker(self, index: int) -> bool:
        """Records are left in the ring, or may still be placed there: the receiver has not
        closed it (it is still draining the socket) and may route to it."""
        ring = self._res.rings[index]
        if ring.used_bytes():
            return True
        if ring.ctl[CLOSED]:
            return False  # closed after its last record: nothing more can arrive
        return index < self._state.active or not self.receiver_caught_up()

    def _boot_failed(self, child: Child, code: int) -> None:
        failures = self._boot_failures.get(child.index, 0) + 1
        self._boot_failures[child.index] = failures
        self._res.control[Slot.BOOT_FAILURES] += 1
        config = self._state.config
        if not self._started_up:
            # At start-up the handler or its setup() is broken: stop rather than respawn.
            if code == EXIT_HANDLER_IMPORT:
                self._fatal(
                    code,
                    f"{child.name} could not load the handler {config.handler} "
                    "(the reason is above)",
                )
                return
            if failures >= config.boot_retries:
                self._fatal(
                    EXIT_WORKER_BOOT,
                    f"{child.name} failed to start {failures} times in a row ({why(code)})",
                )
                return
        # Once started, the other workers go on serving: this slot is retried, backing off.
        delay = min(RESPAWN_BACKOFF_MAX, 0.1 * 2**failures)
        log.error("%s failed to start (%s); retrying in %.1fs", child.name, why(code), delay)
        self._state.respawn_at[(child.role, child.index)] = time.monotonic() + delay

    def _crashed(self, child: Child, code: int) -> None:
        state = self._state
        error = ChildCrashedError(f"{child.name} (pid {child.proc.pid}) died: {how(code)}")
        log.error("%s; restarting it", error)
        state.callbacks.emit_error(error)
        self._res.control[Slot.RESTARTS] += 1
        if child.role == "worker":
            self._boot_failures.pop(child.index, None)
            if child.index in state.retiring and not self._res.rings[child.index].used_bytes():
                state.retiring.discard(child.index)
                return
        quick = time.monotonic() - child.started < 1.0
        state.respawn_at[(child.role, child.index)] = time.monotonic() + (0.1 if quick else 0.0)

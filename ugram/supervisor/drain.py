"""Stopping: a staged drain within a deadline, then the final count and report.

The stages: the socket file goes (new senders get ENOENT, connected ones EPIPE, what is
queued stays readable); the receiver is told to drain the socket into the rings and close
them; each worker finishes its ring and exits. Past the deadline whatever still runs is
killed, and what was left (in rings, in the receiver's hands, in the socket queue) is
counted and reported: never lost in silence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import EXIT_OK, EXIT_UNHANDLED
from ..stats import Slot, Snapshot
from .accounting import account_lost, left_in_scratch, left_in_socket, settle_counts
from .resources import Resources, shut_reading
from .state import Phase, ServerState

log = logging.getLogger("ugram.supervisor")


class Drain:
    """The way to a stop: :meth:`begin`, then :meth:`advance` each tick until stopped."""

    def __init__(self, state: ServerState, res: Resources, release: Callable[[], None]) -> None:
        """Drain the server of ``state``; ``release()`` frees everything once it stopped."""
        self._state, self._res, self._release = state, res, release
        self._deadline = 0.0
        self.timeout_used = state.config.graceful_timeout
        self._cut_short = False  # a forced stop (second SIGINT, fatal error) ended the drain
        self.fatal_code: int | None = None  # why the server could not serve at all
        self.fatal_reason = ""
        self.final: Snapshot | None = None  # the counters once stopped

    def begin(self, timeout: float) -> None:
        """Stop accepting datagrams and tell the receiver to drain, within ``timeout`` s."""
        state, res = self._state, self._res
        state.phase = Phase.DRAINING
        self.timeout_used = timeout
        self._deadline = time.monotonic() + timeout
        # New senders get ENOENT from now on, and connected ones EPIPE: what is queued stays
        # readable and is drained, and nothing can slip in after the drain's last read.
        shut_reading(res.bound)
        # A flag, not SIGTERM: a receiver still starting up would die of the signal before
        # it could drain. The receiver polls it every 50 ms, or at start.
        res.control[Slot.DRAIN] = 1
        if state.receiver is None and not state.respawn_at:
            res.close_rings()

    def cut(self, *, forced: bool) -> None:
        """End the drain at the next tick (``forced``: a stop asked for, not a deadline)."""
        self._deadline = 0.0
        self._cut_short = self._cut_short or forced

    def fail(self, code: int, reason: str) -> None:
        """Remember why the server could not serve: it exits with ``code``."""
        self.fatal_code, self.fatal_reason = code, reason

    def advance(self) -> None:
        """Stop once every child has gone, or kill what still runs at the deadline."""
        state = self._state
        alive = state.children()
        if not alive and not state.respawn_at:
            self._finish(killed=[])
        elif time.monotonic() >= self._deadline:
            for child in alive:
                child.proc.kill()
            for child in alive:
                child.proc.wait()
            if state.receiver is not None:
                account_lost(self._res, crashed=False)
            state.respawn_at.clear()
            self._finish(killed=[f"{child.name} (pid {child.proc.pid})" for child in alive])

    def _finish(self, killed: list[str]) -> None:
        """Count what was left, set the exit code, report, release everything.

        Args:
            killed: the children that were still running at the deadline and were killed.
        """
        state, res = self._state, self._res
        settle_counts(res)
        left_in_rings = sum(ring.count_unacknowledged() for ring in res.rings)
        left_in_rings += left_in_scratch(res, state.config)
        queued = left_in_socket(res.bound)
        state.unhandled = left_in_rings + queued
        snap = res.stats.snapshot()
        state.phase = Phase.STOPPED
        self.final = snap
        if self.fatal_code is not None:
            state.exit_code = self.fatal_code
        elif state.unhandled or killed:
            # Killed at the deadline: even with every record handled, a teardown() (a final
            # flush, a closed connection) was cut off. Not a clean stop.
            state.exit_code = EXIT_UNHANDLED
            self._report_unclean(left_in_rings, queued, killed)
        else:
            state.exit_code = EXIT_OK
        state.callbacks.emit_server_info(_summary(snap, state.unhandled))
        self._release()

    def _report_unclean(self, left_in_rings: int, left_in_socket: int, killed: list[str]) -> None:
        when = (
            "when the stop was forced"
            if self._cut_short
            else f"at the graceful timeout ({self.timeout_used:g}s)"
        )
        if killed:
            log.error(
                "%s killed %s: still running, so teardown() did not finish",
                ", ".join(killed),
                when,
            )
        if self._state.unhandled:
            log.error(
                "stopped with %d record(s) left unhandled (%d in rings, %d in the socket queue)%s",
                self._state.unhandled,
                left_in_rings,
                left_in_socket,
                f", the children killed {when}" if killed else "",
            )


def _summary(snap: Snapshot, unhandled: int) -> str:
    """The final ``stopped: ...`` line: the totals, and what was left unhandled."""
    return (
        f"stopped: received={snap.received} handled={snap.handled} "
        f"rejected={snap.rejected} handler_errors={snap.handler_errors} "
        f"invalid={snap.invalid} oversized={snap.oversized} "
        f"replayed={snap.replayed} quarantined={snap.quarantined} lost={snap.lost} "
        f"possibly_lost={snap.possibly_lost} corrupt_rings={snap.corrupt_rings} "
        f"restarts={snap.restarts} boot_failures={snap.boot_failures} "
        f"unhandled={unhandled}"
    )

"""SIGHUP: restart every worker, one slot at a time, with freshly imported handler code.

Each replacement (the standby) boots (imports the handler, runs ``setup()``) beside the
worker it replaces; only then is the old one retired, and the standby takes over its ring
once it has exited: one consumer of a ring at a time. The next slot follows once that
replacement runs. A standby that cannot boot abandons the reload: the running workers keep
the code they have (unless a later SIGHUP came meanwhile: its reload goes on, that slot
included).
"""

from __future__ import annotations

import logging
import subprocess
import time

import msgspec

from ..errors import ChildCrashedError
from ..events import ConnState
from ..health import Liveness
from ..stats import COMMAND_RETIRE, COMMAND_TAKE_OVER, Slot, State
from .children import Children
from .resources import Resources
from .state import Child, Handover, Phase, ServerState, how, why

log = logging.getLogger("ugram.supervisor")


class RollingReload:
    """Replaces the workers one slot at a time (``state.handover`` is the slot being done)."""

    def __init__(self, state: ServerState, res: Resources, children: Children) -> None:
        """Reload the workers of ``state``; ``children`` says which are still booting."""
        self._state, self._res, self._children = state, res, children
        self._rolling: list[int] = []  # slots still to restart
        self._since = 0.0  # when the SIGHUP came: a worker started later runs the new code

    def start(self) -> None:
        """Plan a restart of every worker that is not being retired."""
        state = self._state
        self._since = time.monotonic()
        self._rolling = sorted(i for i in state.workers if i not in state.retiring)
        state.callbacks.emit_server_info(f"SIGHUP: reloading {len(self._rolling)} worker(s)")

    def abandon(self) -> None:
        """The server drains: restart no more slots, and call off a standby still waiting."""
        self._rolling.clear()
        handover = self._state.handover
        if handover is not None and not handover.retired:
            self._call_off(handover)  # the old worker drains its own ring

    def advance(self) -> None:
        """Move the slot being replaced on; start the next once the previous one runs."""
        state = self._state
        if state.handover is not None:
            self._advance_handover(state.handover)
            return
        if not self._rolling or state.phase is not Phase.RUNNING:
            return
        self._skip_restarted()
        if self._rolling and not self._children.any_booting():
            index = self._rolling.pop(0)
            if index in state.workers and index not in state.retiring:
                state.handover = Handover(index, self._spawn_standby(index))
                return
        if not self._rolling:
            state.callbacks.emit_server_info("SIGHUP: last worker restarted")

    def _skip_restarted(self) -> None:
        """Drop the slots whose worker was started after the SIGHUP (a recycle, a crash's
        respawn): it imported the new code already. Waiting for a moment when no worker
        boots would otherwise starve the reload while workers recycle often."""
        state = self._state
        for index in list(self._rolling):
            child = state.workers.get(index)
            if child is not None and child.started >= self._since:
                self._rolling.remove(index)
                log.info("SIGHUP: %s started since the SIGHUP: already reloaded", child.name)

    def _spawn_standby(self, index: int) -> Child:
        """Start a replacement for slot ``index``; it boots, then waits for its turn."""
        res = self._res
        spec = res.spec(self._state.config, "worker", index)
        spec = msgspec.structs.replace(spec, standby_block=res.standby_at)
        block = res.stats.block(res.standby_at)
        block[Slot.STATE] = State.EMPTY
        block[Slot.COMMAND] = 0
        proc = subprocess.Popen(spec.argv(), pass_fds=spec.fds())
        log.info("SIGHUP: starting the new worker %d (pid %d)", index, proc.pid)
        return Child("worker", index, proc, time.monotonic())

    def _advance_handover(self, handover: Handover) -> None:
        state, res = self._state, self._res
        if handover.retired or handover.called_off:
            return  # waiting for the old worker, or the standby, to exit
        if res.stats.block(res.standby_at)[Slot.STATE] != State.READY:
            return  # still booting; a failure shows as its exit
        if state.phase is not Phase.RUNNING or handover.index in state.retiring:
            self._call_off(handover)
            return
        handover.retired = True
        index = handover.index
        if state.respawn_at.pop(("worker", index), None) is not None or index not in state.workers:
            self._take_over(handover)  # the old worker died meanwhile: nothing to wait for
            return
        res.worker(index)[Slot.COMMAND] = COMMAND_RETIRE

    def _call_off(self, handover: Handover) -> None:
        """Tell the standby to exit without touching the ring (the old worker stays)."""
        handover.called_off = True
        self._res.stats.block(self._res.standby_at)[Slot.COMMAND] = COMMAND_RETIRE

    def replaced(self, handover: Handover, child: Child, code: int) -> None:
        """The retired worker ``child`` exited with ``code``: its standby takes the slot."""
        if code != 0:
            # Died while finishing: the standby replays what it had in hand.
            error = ChildCrashedError(f"{child.name} (pid {child.proc.pid}) died: {how(code)}")
            log.error("%s; its replacement takes over", error)
            self._state.callbacks.emit_error(error)
            self._res.control[Slot.RESTARTS] += 1
        self._take_over(handover)

    def _take_over(self, handover: Handover) -> None:
        state, res = self._state, self._res
        state.handover = None
        index, child = handover.index, handover.standby
        block = res.worker(index)
        block[Slot.STATE] = State.EMPTY  # booting, to the watchers, until it runs
        block[Slot.COMMAND] = 0
        block[Slot.BUSY_SINCE_NS] = 0
        state.workers[index] = child
        state.liveness[index] = Liveness(since=time.monotonic())
        self._children.took_over(index)
        res.control[Slot.RECYCLED] += 1
        # Only now, with the old worker reaped: one consumer of the ring at a time.
        res.stats.block(res.standby_at)[Slot.COMMAND] = COMMAND_TAKE_OVER
        state.emit_info(child, ConnState.WORKER_STARTED)
        log.info("SIGHUP: %s replaced (now pid %d)", child.name, child.proc.pid)
        if not self._rolling and state.phase is Phase.RUNNING:
            state.callbacks.emit_server_info("SIGHUP: last worker restarted")

    def standby_exited(self, handover: Handover, code: int) -> None:
        """The standby exited with ``code`` before taking over: the reload is abandoned,
        unless it was called off."""
        self._state.handover = None
        if handover.called_off and code == 0:
            log.info("SIGHUP: the new worker %d was called off", handover.index)
            return
        self._res.control[Slot.BOOT_FAILURES] += 1
        if self._since > handover.standby.started:
            # A SIGHUP came after this replacement started: its failure ends the reload of
            # the code it was started with, not the newer one, which restarts this slot too.
            log.error(
                "SIGHUP: the new worker %d failed (%s); a later SIGHUP's reload goes on",
                handover.index,
                why(code),
            )
            if handover.index not in self._rolling:
                self._rolling.insert(0, handover.index)
            return
        self._rolling.clear()
        if handover.retired:  # READY, then died: the old worker, told to go, gets a fresh one
            log.error(
                "SIGHUP: reload abandoned: the new worker %d died before taking over (%s)",
                handover.index,
                how(code),
            )
        else:
            log.error(
                "SIGHUP: reload abandoned: the new worker %d failed to start (%s); the "
                "running workers keep the code they have",
                handover.index,
                why(code),
            )
        self._state.callbacks.emit_server_info(f"SIGHUP: reload abandoned ({why(code)})")

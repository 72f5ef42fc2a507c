"""The watchdog: kill a worker stuck on one record, or a frozen process, after worker_timeout.

A busy worker is judged by how long its current record has taken, never by a ping, so a
handler that legitimately computes for a while is left alone (:mod:`ugram.health` holds
the rule, which ``/healthz`` applies too). A killed process gets SIGUSR1 first, so that
faulthandler prints where it was stuck, then SIGKILL after :data:`KILL_GRACE`.
"""

from __future__ import annotations

import logging
import signal
import time

from ..health import receiver_frozen, stall_reason
from ..stats import Slot, State
from .resources import Resources
from .state import Child, ServerState

log = logging.getLogger("ugram.supervisor")

KILL_GRACE = 0.3  # between the traceback request (SIGUSR1) and SIGKILL of a stuck worker
BOOTING = (State.EMPTY, State.BOOTING)


class Watchdog:
    """Watches the progress of the receiver and the workers, once per supervisor tick."""

    def __init__(self, state: ServerState, res: Resources) -> None:
        """Watch the children in ``state`` through their counter blocks in ``res``."""
        self._state, self._res = state, res

    def watch(self) -> None:
        """Kill a worker stuck on one record, or frozen, for longer than worker_timeout, and
        one that has been booting for longer than boot_timeout."""
        self._watch_boots()
        timeout = self._state.config.worker_timeout
        if not timeout:
            return
        now, now_ns = time.monotonic(), time.monotonic_ns()
        self._watch_receiver(timeout, now_ns)
        for index, child in list(self._state.workers.items()):
            if child.kill_at:
                if now >= child.kill_at:
                    child.proc.kill()
                continue
            block = self._res.worker(index)
            if block[Slot.STATE] != State.RUNNING:
                continue
            seen = self._state.liveness[index]
            seen.observe(int(block[Slot.PROGRESS]), now)
            why = stall_reason(block, seen, timeout, now, now_ns)  # /healthz asks the same
            if why:
                self._kill_stuck(child, why)

    def _watch_boots(self) -> None:
        """A worker hung in its import or ``setup()`` never reaches RUNNING, so the checks
        above never see it, while the receiver goes on filling its ring: past boot_timeout
        it is killed, and its exit counts as a boot failure (retried with backoff, fatal
        only at start-up); a SIGHUP replacement that hangs so abandons the reload."""
        timeout = self._state.config.boot_timeout
        if not timeout:
            return
        now = time.monotonic()
        for child, block in self._booting():
            if child.kill_at:
                if now >= child.kill_at:
                    child.proc.kill()
            elif block[Slot.STATE] in BOOTING and now - child.started > timeout:
                self._kill_hung_boot(child, timeout)

    def _booting(self) -> list[tuple[Child, memoryview]]:
        """Each worker (and SIGHUP replacement) with the counter block it boots in."""
        res, state = self._res, self._state
        found = [(child, res.worker(index)) for index, child in state.workers.items()]
        if state.handover is not None:
            found.append((state.handover.standby, res.stats.block(res.standby_at)))
        return found

    def _kill_hung_boot(self, child: Child, timeout: float) -> None:
        log.error(
            "%s (pid %d) still booting after %gs (the handler's import or setup() hangs): "
            "dumping its traceback and killing it",
            child.name,
            child.proc.pid,
            timeout,
        )
        child.proc.send_signal(signal.SIGUSR1)  # faulthandler prints where it hangs
        child.kill_at = time.monotonic() + KILL_GRACE

    def _watch_receiver(self, timeout: float, now_ns: int) -> None:
        """A frozen receiver (stopped, wedged) is killed and replaced on the same socket;
        with a scratch area its successor recovers what it held."""
        child = self._state.receiver
        block = self._res.receiver()
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
            self._state.config.worker_timeout,
        )
        self._res.control[Slot.WORKER_TIMEOUTS] += 1
        child.proc.send_signal(signal.SIGUSR1)  # faulthandler prints where it is stuck
        child.kill_at = time.monotonic() + KILL_GRACE

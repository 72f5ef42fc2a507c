"""Liveness: is a process alive and making progress? One notion, two users.

The supervisor's watchdog (:mod:`ugram.supervisor.liveness`) kills a worker that this module
calls stalled, and ``/healthz`` reports the same condition, so the endpoint turns unhealthy
at the moment the watchdog gives up on a worker, stays unhealthy while it is killed and
replaced, and turns healthy again once the replacement runs.

A busy worker is judged by how long its current record has taken, never by a ping, so a
handler that legitimately computes for a while is not called stalled before
``worker_timeout`` (uvicorn#2506 is the cautionary tale).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .stats import Slot

STUCK = "stuck on one record"
UNRESPONSIVE = "unresponsive"


@dataclass
class Liveness:
    """What the supervisor last saw of a worker's progress counter, and since when."""

    progress: int = -1
    since: float = 0.0

    def observe(self, progress: int, now: float) -> None:
        """Note the worker's progress counter at monotonic time ``now``."""
        if progress != self.progress:
            self.progress, self.since = progress, now


def stall_reason(
    block: memoryview, seen: Liveness, timeout: float, now: float, now_ns: int
) -> str | None:
    """Why a running worker counts as stalled, or None while it makes progress.

    Pure: it reads the worker's block and ``seen`` (updated by the supervisor's
    :meth:`Liveness.observe`), so ``/healthz`` may call it from another thread.

    Args:
        block: the worker's counter block.
        seen: the supervisor's record of the worker's progress counter.
        timeout: ``worker_timeout`` in seconds (> 0).
        now: ``time.monotonic()``.
        now_ns: ``time.monotonic_ns()``.

    Returns:
        :data:`STUCK` (one record for longer than ``timeout``), :data:`UNRESPONSIVE` (idle,
        and neither a heartbeat nor progress for longer than ``timeout``: frozen, e.g.
        SIGSTOPped), or None.
    """
    busy = int(block[Slot.BUSY_SINCE_NS])
    if busy:
        return STUCK if (now_ns - busy) / 1e9 > timeout else None
    if int(block[Slot.PROGRESS]) != seen.progress:
        return None  # moved since the supervisor last looked
    heartbeat_age = (now_ns - int(block[Slot.HEARTBEAT_NS])) / 1e9
    if heartbeat_age > timeout and now - seen.since > timeout:
        return UNRESPONSIVE
    return None


def receiver_frozen(block: memoryview, timeout: float, now_ns: int) -> bool:
    """True when a running receiver has not passed its 50 ms housekeeping for ``timeout``.

    Args:
        block: the receiver's counter block.
        timeout: ``worker_timeout`` in seconds (0: the check is off).
        now_ns: ``time.monotonic_ns()``.
    """
    beat = int(block[Slot.HEARTBEAT_NS])
    return bool(timeout and beat and (now_ns - beat) / 1e9 > timeout)


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of ``/healthz``: ok, or the reasons it is not."""

    ok: bool
    reasons: list[str]

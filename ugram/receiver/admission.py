"""Admission: who may send (allow lists on kernel-verified credentials) and how fast.

Both checks run in the receiver before a datagram reaches any ring, on the credentials the
kernel attached (SCM_CREDENTIALS), which a sender cannot forge.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..config import Config
from ..spec import pid_alive

log = logging.getLogger("ugram.receiver")

UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
# Room for the credentials and, before them, a time stamp: a socket handed over with
# SO_TIMESTAMP(NS|ING) on (systemd's Timestamping=) gets one first (3 timespecs at most),
# and with room for only the credentials they would be cut off (MSG_CTRUNC): every sender
# would look unauthenticated.
ANCILLARY_SIZE = (
    socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(3 * 16)
    if hasattr(socket, "CMSG_SPACE")
    else 0
)
MAX_SENDERS = 4096  # rate-limit table bound; least recently seen senders are evicted
REPORT_EVERY = 10.0  # seconds between "suppressed N datagrams from ..." lines


def parse_credentials(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """Extract ``(pid, uid, gid)`` from recvmsg ancillary data, None when absent."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS and len(data) >= UCRED.size:
            pid, uid, gid = UCRED.unpack_from(data)
            # pid 0: queued before SO_PASSCRED was on; the ids are the kernel's overflow
            # values (65534), not the sender's. Treat as unknown rather than trust them.
            return (pid, uid, gid) if pid else None
    return None


SCM_CREDENTIALS: int = getattr(socket, "SCM_CREDENTIALS", -1)


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    suppressed: int = 0


class RateLimiter:
    """A token bucket per sender key, in a bounded LRU table.

    Each sender may send ``burst`` datagrams at once and ``rate`` per second after that.
    """

    def __init__(self, rate: float, burst: int, max_senders: int = MAX_SENDERS) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, round(rate)))
        self.max_senders = max_senders
        self._buckets: OrderedDict[int, _Bucket] = OrderedDict()
        self._last_report = time.monotonic()

    def allow(self, key: int, now: float | None = None) -> bool:
        """Spend one token of ``key``'s bucket; False (and counted) when it is empty."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max_senders:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        bucket.suppressed += 1
        return False

    def report(self, label: str, now: float | None = None) -> list[tuple[int, int]]:
        """Every REPORT_EVERY seconds: log and return ``(key, suppressed)`` since last time."""
        now = time.monotonic() if now is None else now
        if now - self._last_report < REPORT_EVERY:
            return []
        self._last_report = now
        lines = [(key, b.suppressed) for key, b in self._buckets.items() if b.suppressed]
        for key, count in lines:
            log.warning("suppressed %d datagrams from %s %d (rate limit)", count, label, key)
            self._buckets[key].suppressed = 0
        return lines

    def prune_dead_pids(self) -> int:
        """Drop buckets of processes that no longer exist (pid keys). Returns how many."""
        dead = [pid for pid in self._buckets if not pid_alive(pid)]
        for pid in dead:
            del self._buckets[pid]
        return len(dead)

    def __len__(self) -> int:
        return len(self._buckets)


class Admission:
    """The receiver's admission policy built from the config."""

    def __init__(self, config: Config) -> None:
        self.uids = config.allowed_uids
        self.gids = config.allowed_gids
        rate = config.rate_per_second
        self.by_pid = config.rate_limit_by == "pid"
        self.limiter = RateLimiter(rate, config.burst) if rate else None

    @property
    def active(self) -> bool:
        """True when any check is configured (else the receiver skips admission)."""
        return bool(self.uids or self.gids) or self.limiter is not None

    def authorized(self, creds: tuple[int, int, int] | None) -> bool:
        """True if the sender passes the allow lists (no lists: everyone passes)."""
        if not self.uids and not self.gids:
            return True
        if creds is None:
            return False  # no credentials, no trust
        _, uid, gid = creds
        return (not self.uids or uid in self.uids) and (not self.gids or gid in self.gids)

    def within_rate(self, creds: tuple[int, int, int] | None) -> bool:
        """True if the sender has budget left (no rate limit: always)."""
        if self.limiter is None:
            return True
        key = -1 if creds is None else (creds[0] if self.by_pid else creds[1])
        return self.limiter.allow(key)

    def housekeeping(self) -> None:
        """Periodic: report suppressed senders, prune dead pids."""
        if self.limiter is None:
            return
        if self.limiter.report("pid" if self.by_pid else "uid") and self.by_pid:
            self.limiter.prune_dead_pids()

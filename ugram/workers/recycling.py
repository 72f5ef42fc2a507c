"""When a worker retires itself to be replaced by a fresh one: ``max_records`` handled, or
``max_rss`` MiB resident (the supervisor starts the successor, which resumes from the ring).
"""

from __future__ import annotations

import logging
import random
import sys
import time

from ..config import Config

log = logging.getLogger("ugram.worker")

# Memory is checked once at least this many records, or this long, passed since the last
# check (psutil costs ~20 µs): a batch handler or the C loop moves the record count in steps,
# so "a multiple of N" would rarely be hit exactly.
RSS_CHECK_EVERY = 1024
RSS_CHECK_SECONDS = 1.0


class Recycler:
    """Counts the records a worker handled and says when it is due for recycling.

    Attributes:
        records: handled by this process (the record loops add to it).
        active: False when neither limit is set: :meth:`due` is then never needed.
    """

    def __init__(self, index: int, config: Config) -> None:
        self.index = index
        self.record_limit = _jittered(config.max_records)
        self.max_rss = config.max_rss
        self.active = bool(self.record_limit or self.max_rss)
        self.records = 0
        self._rss_checked_at = 0  # records, and monotonic time, of the last memory check
        self._rss_checked_time = time.monotonic()

    def due(self) -> bool:
        """True when the record limit is reached or the process holds more than max_rss."""
        if self.record_limit and self.records >= self.record_limit:
            log.info("worker %d: recycling after %d records", self.index, self.records)
            return True
        if self.max_rss and self._rss_check_due():
            self._rss_checked_at, self._rss_checked_time = self.records, time.monotonic()
            rss = _resident_bytes()
            if rss > self.max_rss * 1024 * 1024:
                log.info(
                    "worker %d: recycling at %d MiB resident after %d records",
                    self.index,
                    rss >> 20,
                    self.records,
                )
                return True
        return False

    def allowance(self) -> int:
        """Records the C loop may handle before the recycling limits must be looked at."""
        if not self.active:
            return sys.maxsize
        room = sys.maxsize
        if self.record_limit:
            room = min(room, self.record_limit - self.records)
        if self.max_rss:
            room = min(room, RSS_CHECK_EVERY - (self.records - self._rss_checked_at))
        return max(1, room)

    def _rss_check_due(self) -> bool:
        since = self.records - self._rss_checked_at
        if since >= RSS_CHECK_EVERY:
            return True
        return since > 0 and time.monotonic() - self._rss_checked_time >= RSS_CHECK_SECONDS


def _resident_bytes() -> int:
    # Imported here: psutil adds ~1 MiB to every worker, and only max_rss needs it.
    import psutil

    rss: int = psutil.Process().memory_info().rss
    return rss


def _jittered(limit: int) -> int:
    # Up to 10% more, so workers started together do not all recycle at the same moment.
    return limit + random.randint(0, limit // 10) if limit else 0

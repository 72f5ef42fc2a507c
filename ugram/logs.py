"""Logging set-up shared by every process, and a rate limit for per-datagram warnings."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"


def configure(level: str, process_name: str) -> None:
    """Send ugram's logs to stderr at ``level``; called once in every process."""
    import multiprocessing

    multiprocessing.current_process().name = process_name
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level.upper())


class RateLimited:
    """Log at most ``burst`` messages per ``interval`` seconds, then say how many were held."""

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 10.0) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._window = 0.0
        self._count = 0
        self._suppressed = 0

    def warning(self, msg: str, *args: object, exc_info: bool = False) -> None:
        """Log a warning unless the budget for this interval is spent."""
        now = time.monotonic()
        if now - self._window >= self._interval:
            if self._suppressed:
                self._logger.warning(
                    "suppressed %d similar message(s) in the last %.0fs",
                    self._suppressed,
                    self._interval,
                )
            self._window, self._count, self._suppressed = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            self._logger.warning(msg, *args, exc_info=exc_info)
        else:
            self._suppressed += 1

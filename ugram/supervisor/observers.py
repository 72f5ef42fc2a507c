"""The metrics endpoint and the control socket of one supervisor, served from its threads.

Both get functions that return a fresh :class:`~ugram.observe.Report` (or its health
alone), never the supervisor: :mod:`ugram.metrics` and :mod:`ugram.control` know nothing of
it. They are bound once the shared memory exists, served once the children exist, and
closed before the shared memory they read is released.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from ..health import Health
from ..observe import Report
from .report import build_report, health_of
from .resources import Resources
from .state import ServerState

if TYPE_CHECKING:
    from .exports import ExportConsumer

log = logging.getLogger("ugram.supervisor")

SCRAPE_MAX_AGE = 0.1  # seconds one built report answers every /metrics scrape


class _Served(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


class Observers:
    """Binds, serves and closes the endpoints that read one supervisor's report."""

    def __init__(self, state: ServerState, res: Resources) -> None:
        """Bind the metrics endpoint (if configured) and the control socket (if enabled).

        Raises:
            SocketError: the metrics address cannot be bound, or the control socket's path
                is taken (see :meth:`ugram.control.ControlServer.bind_for`). A control
                socket path too long to bind is only logged: the server runs without
                ``ugram stats``.
        """
        self._state, self._res = state, res
        self._started = time.monotonic()
        self._served: list[_Served] = []
        self._scrape_lock = threading.Lock()
        self._scraped: tuple[float, Report] | None = None  # (when built, the report)
        self.metrics_url = ""
        self.exports: ExportConsumer | None = None
        try:
            self._bind()
        except BaseException:
            self.close()
            raise

    def _bind(self) -> None:
        cfg = self._state.config
        if cfg.metrics:
            from ..metrics import MetricsServer  # prometheus-client only where it is served
            from .exports import ExportConsumer

            if self._res.exports:
                self.exports = ExportConsumer(self._res.exports)
            server = MetricsServer(
                cfg.metrics,
                self._scrape,
                self.health,
                cfg.file_mode,
                cfg.gid,
                allow_unsafe=cfg.allow_unsafe_dir,
                collectors=[self.exports] if self.exports is not None else [],
            )
            self.metrics_url = server.url
            self._served.append(server)
        if cfg.control:
            from ..control import ControlServer

            control = ControlServer.bind_for(self._state.socket_path, self.report, cfg)
            if control is not None:
                self._served.append(control)

    def report(self) -> Report:
        """A fresh :class:`Report` (called from the serving threads)."""
        return build_report(self._state, self._res, self._started, self.metrics_url)

    def _scrape(self) -> Report:
        """The report for ``/metrics``: one built per :data:`SCRAPE_MAX_AGE` at most.

        Anyone who can reach the port (every local user, on loopback) may scrape in a
        loop from 8 threads at once; each build takes the supervisor's GIL from its own
        loop, so one report serves every scrape for a moment, as on the control socket.
        /metrics shows no memory: building it skips reading it.
        """
        with self._scrape_lock:
            now = time.monotonic()
            if self._scraped is None or now - self._scraped[0] >= SCRAPE_MAX_AGE:
                report = build_report(
                    self._state, self._res, self._started, self.metrics_url, memory=False
                )
                self._scraped = (now, report)
            return self._scraped[1]

    def health(self) -> Health:
        """The health check alone (cheaper than a report)."""
        return health_of(self._state, self._res)

    def start(self) -> None:
        """Serve each endpoint from its own daemon thread."""
        if self.exports is not None:
            self.exports.start()
        for served in self._served:
            served.start()
        if self.metrics_url:
            log.info("serving metrics on %s (and /healthz)", self.metrics_url)

    def close(self) -> None:
        """Stop serving (waits for a request in progress) and remove what was bound."""
        while self._served:
            self._served.pop().close()
        if self.exports is not None:
            self.exports.close()

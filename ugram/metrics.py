"""The Prometheus endpoint: ``/metrics`` and ``/healthz``, served from a supervisor thread.

``/metrics`` is prometheus-client's exposition of :class:`ServerCollector`, a custom
collector that turns one :class:`~ugram.observe.Report` (a lock-free reading of the shared
counters) into metric families at each scrape: nothing is formatted by hand and nothing is
cached, so a scrape always sees the counters as they are. ``/healthz`` answers 200 ``ok``
while the receiver and every active worker run and make progress, else 503 with the
reasons (see :mod:`ugram.health`).

The endpoint listens on ``HOST:PORT`` or on a unix stream socket (a path, or ``@name``).
The app is a plain WSGI callable, served by :class:`ugram.httpd.HttpServer`, which bounds
what a slow or hostile client may hold (:data:`~ugram.httpd.MAX_CONNECTIONS` connections,
deadlines for each request and response); what it turns away is counted here
(:class:`ConnectionCounters`) and exposed with the rest.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .errors import SocketError
from .exposition import buckets, handler_families
from .health import Health
from .httpd import (
    BACKLOG,
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    WRITE_TIMEOUT,
    App,
    HttpServer,
    StartResponse,
)
from .observe import Report
from .sockets import BoundSocket, bind_stream_socket, unlink_if_ours
from .stats import REJECT_REASONS

log = logging.getLogger("ugram.metrics")

LOG_INTERVAL = 60.0  # at most one warning a minute about refused and cut-off clients


@dataclass(frozen=True)
class MetricSpec:
    """One exposed metric family (the reference documentation is checked against these)."""

    name: str  # as exposed (counters with their _total suffix)
    kind: str  # counter, gauge, histogram, info
    labels: str
    help: str


# Server-wide counters: (metric name without _total, Snapshot field, help).
TOTALS: tuple[tuple[str, str, str], ...] = (
    ("ugram_received", "received", "Datagrams read from the socket, accepted or rejected."),
    ("ugram_received_bytes", "bytes", "Payload bytes of the datagrams that passed admission."),
    ("ugram_handled", "handled", "Records whose handler returned or raised."),
    ("ugram_handler_errors", "handler_errors", "Records whose handler raised."),
    ("ugram_replayed", "replayed", "Records read again after a worker died holding them."),
    ("ugram_quarantined", "quarantined", "Poison records moved to the dead-letter file."),
    (
        "ugram_reply_errors",
        "reply_errors",
        "Datagram.reply() calls that failed.",
    ),
    (
        "ugram_receiver_blocked_seconds",
        "blocked_seconds",
        "Seconds the receiver waited for ring space (backpressure on the senders).",
    ),
    ("ugram_restarts", "restarts", "Receiver and worker processes restarted after a crash."),
    (
        "ugram_lost",
        "lost",
        "Datagrams a killed receiver had read but not yet written, and records in a ring "
        "emptied because it was corrupt.",
    ),
    (
        "ugram_possibly_lost",
        "possibly_lost",
        "Receiver deaths that may have cost one datagram (killed inside recv).",
    ),
    ("ugram_worker_timeouts", "worker_timeouts", "Workers killed by the liveness check."),
    ("ugram_recycled", "recycled", "Workers replaced after max_records, max_rss or SIGHUP."),
    ("ugram_boot_failures", "boot_failures", "Workers that died before running."),
    (
        "ugram_fds_closed",
        "fds_closed",
        "File descriptors senders passed (SCM_RIGHTS) that the receiver closed unused.",
    ),
    (
        "ugram_corrupt_rings",
        "corrupt_rings",
        "Rings found corrupt and emptied (what they held is counted as lost).",
    ),
)

METRICS: tuple[MetricSpec, ...] = (
    *(MetricSpec(f"{name}_total", "counter", "", text) for name, _, text in TOTALS),
    MetricSpec(
        "ugram_rejected_total",
        "counter",
        "reason",
        "Datagrams rejected instead of handled, by reason: " + ", ".join(REJECT_REASONS) + ".",
    ),
    MetricSpec(
        "ugram_handling_latency_seconds",
        "histogram",
        "",
        "Time from the receiver reading a datagram to a worker finishing it (log-scale "
        "buckets, 1 us to ~537 s); counts every record a worker took, invalid ones included.",
    ),
    MetricSpec("ugram_workers_active", "gauge", "", "Workers the receiver routes to."),
    MetricSpec("ugram_up", "gauge", "process", "1 while the process runs, else 0."),
    MetricSpec("ugram_healthy", "gauge", "", "1 while /healthz answers 200, else 0."),
    MetricSpec("ugram_ring_depth", "gauge", "worker", "Records in a worker's ring, unacked."),
    MetricSpec("ugram_ring_bytes", "gauge", "worker", "Bytes in a worker's ring, unacked."),
    MetricSpec("ugram_ring_capacity_bytes", "gauge", "worker", "Size of a worker's ring."),
    MetricSpec(
        "ugram_worker_handled_total", "counter", "worker", "Records handled by a worker slot."
    ),
    MetricSpec(
        "ugram_uptime_seconds", "gauge", "", "Seconds since the supervisor started serving."
    ),
    MetricSpec("ugram_build_info", "info", "version, socket, handler, codec", "The server."),
    MetricSpec(
        "ugram_metrics_connections_refused_total",
        "counter",
        "",
        f"Connections to this endpoint closed at once (503): {MAX_CONNECTIONS} were already "
        "open, each past its request head.",
    ),
    MetricSpec(
        "ugram_metrics_connections_evicted_total",
        "counter",
        "",
        f"Connections to this endpoint cut off (503) to make room for a new one: {MAX_CONNECTIONS} "
        "were open, and this was the oldest still sending its request head.",
    ),
    MetricSpec(
        "ugram_metrics_connections_timed_out_total",
        "counter",
        "",
        f"Connections to this endpoint cut off: no complete request within {REQUEST_TIMEOUT:g} s "
        f"of connecting, or the response not read within {WRITE_TIMEOUT:g} s.",
    ),
)


_BUILT_IN = frozenset(spec.name.removesuffix("_total") for spec in METRICS)


# -- the collector ----------------------------------------------------------------------------


class ServerCollector:
    """A prometheus-client collector over the shared counters (one reading per scrape)."""

    def __init__(self, report: Callable[[], Report]) -> None:
        """Collect from ``report()`` at each scrape."""
        self._report = report

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of :data:`METRICS` from a fresh report."""
        report = self._report()
        yield from _totals(report)
        yield _latency(report)
        yield from _processes(report)
        yield from _rings(report)
        yield _info(report)
        yield from handler_families(report.handler_metrics, _BUILT_IN)


def _totals(report: Report) -> Iterator[Metric]:
    totals = report.totals
    for name, field, text in TOTALS:
        yield CounterMetricFamily(name, text, value=getattr(totals, field))
    rejected = CounterMetricFamily(
        "ugram_rejected", "Datagrams rejected instead of handled, by reason.", labels=["reason"]
    )
    for reason in REJECT_REASONS:
        rejected.add_metric([reason], getattr(totals, reason))
    yield rejected


def _latency(report: Report) -> Metric:
    lat = report.latency
    return HistogramMetricFamily(
        "ugram_handling_latency_seconds",
        "Time from the receiver reading a datagram to a worker finishing it.",
        buckets=buckets(lat.bounds, lat.counts),
        sum_value=lat.sum_seconds,
    )


def _processes(report: Report) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "ugram_workers_active", "Workers the receiver routes to.", value=report.active_workers
    )
    up = GaugeMetricFamily("ugram_up", "1 while the process runs, else 0.", labels=["process"])
    up.add_metric(["receiver"], 1.0 if report.receiver.pid else 0.0)
    for worker in report.workers:
        up.add_metric([f"worker {worker.index}"], 1.0 if worker.pid else 0.0)
    yield up
    yield GaugeMetricFamily(
        "ugram_healthy", "1 while /healthz answers 200, else 0.", value=report.health.ok
    )
    yield GaugeMetricFamily(
        "ugram_uptime_seconds", "Seconds since the supervisor started.", report.uptime_seconds
    )


def _rings(report: Report) -> Iterator[Metric]:
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "depth": GaugeMetricFamily(
            "ugram_ring_depth", "Records in a worker's ring, unacked.", labels=["worker"]
        ),
        "bytes": GaugeMetricFamily(
            "ugram_ring_bytes", "Bytes in a worker's ring, unacked.", labels=["worker"]
        ),
        "capacity": GaugeMetricFamily(
            "ugram_ring_capacity_bytes", "Size of a worker's ring.", labels=["worker"]
        ),
        "handled": CounterMetricFamily(
            "ugram_worker_handled", "Records handled by a worker slot.", labels=["worker"]
        ),
    }
    for w in report.workers:
        label = [str(w.index)]
        families["depth"].add_metric(label, w.ring_depth)
        families["bytes"].add_metric(label, w.ring_bytes)
        families["capacity"].add_metric(label, w.ring_capacity)
        families["handled"].add_metric(label, w.handled)
    yield from families.values()


def _info(report: Report) -> Metric:
    info = InfoMetricFamily("ugram_build", "The server.")
    cfg = report.config
    info.add_metric(
        [],
        {
            "version": report.version,
            "socket": report.socket,
            "handler": str(cfg.get("handler", "")),
            "codec": str(cfg.get("codec", "")),
        },
    )
    return info


# -- the WSGI app -----------------------------------------------------------------------------


def make_app(
    report: Callable[[], Report],
    health: Callable[[], Health],
    connections: ConnectionCounters | None = None,
    collectors: Sequence[Collector] = (),
) -> App:
    """The WSGI app: ``/metrics`` (prometheus-client), ``/healthz``, and an index at ``/``.

    ``/metrics`` includes the endpoint's own ``connections`` counters when given, and what
    ``collectors`` yield (the statsd exposition's application metrics).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(report))
    if connections is not None:
        registry.register(connections)
    for collector in collectors:
        registry.register(collector)
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _healthz(health, start_response)
        if path == "/":
            return _text(start_response, "200 OK", "ugram: see /metrics and /healthz\n")
        return _text(start_response, "404 Not Found", "not found: try /metrics or /healthz\n")

    return app


def _healthz(health: Callable[[], Health], start_response: StartResponse) -> list[bytes]:
    try:
        result = health()
    except RuntimeError as exc:  # the server is shutting down
        return _text(start_response, "503 Service Unavailable", f"unhealthy: {exc}\n")
    if result.ok:
        return _text(start_response, "200 OK", "ok\n")
    return _text(
        start_response, "503 Service Unavailable", f"unhealthy: {'; '.join(result.reasons)}\n"
    )


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


# -- addresses --------------------------------------------------------------------------------


def parse_address(value: str) -> tuple[str, int] | str:
    """Split a ``metrics`` value: ``(host, port)`` for TCP, or a unix path / ``@name``.

    Raises:
        SocketError: a TCP address without a valid port.
    """
    if value.startswith("@") or "/" in value:
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SocketError(f"metrics address {value!r} is not HOST:PORT, a path or @name")
    return host.strip("[]") or "0.0.0.0", int(port)


# -- what the endpoint turns away -------------------------------------------------------------


class ConnectionCounters:
    """Connections the endpoint refused or cut off, exposed on ``/metrics`` and logged.

    Written by the endpoint's event loop, read by the threads that answer scrapes (plain
    ints: a reader sees the old value or the new one).
    """

    def __init__(self) -> None:
        """Start at zero; the first event is logged at once, later ones once a minute."""
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self._quiet_until = -math.inf

    def note_refused(self) -> None:
        """Count a connection closed at once because too many were open."""
        self.refused += 1
        self._warn(f"refused a connection: {MAX_CONNECTIONS} already open, all past their head")

    def note_evicted(self) -> None:
        """Count a connection cut off before its request head to make room for a new one."""
        self.evicted += 1
        self._warn(
            f"cut off the oldest connection still sending its request: {MAX_CONNECTIONS} open"
        )

    def note_timed_out(self, why: str) -> None:
        """Count a connection cut off at a deadline (``why``: which one)."""
        self.timed_out += 1
        self._warn(f"cut off a connection: {why}")

    def collect(self) -> Iterator[Metric]:
        """The three counters, as metric families (a prometheus-client collector)."""
        yield CounterMetricFamily(
            "ugram_metrics_connections_refused",
            "Connections to the metrics endpoint closed at once: too many were open.",
            value=self.refused,
        )
        yield CounterMetricFamily(
            "ugram_metrics_connections_evicted",
            "Connections to the metrics endpoint cut off to make room for a new one: the "
            "oldest still sending its request.",
            value=self.evicted,
        )
        yield CounterMetricFamily(
            "ugram_metrics_connections_timed_out",
            "Connections to the metrics endpoint cut off: too slow to send a request or to "
            "read the response.",
            value=self.timed_out,
        )

    def _warn(self, what: str) -> None:
        # A hostile client can cause these at will: one line a minute, with the totals,
        # says enough without flooding the log.
        now = time.monotonic()
        if now < self._quiet_until:
            return
        self._quiet_until = now + LOG_INTERVAL
        log.warning(
            "metrics endpoint: %s (%d refused, %d evicted and %d timed out so far; at most one "
            "such warning a minute, see ugram_metrics_connections_*_total)",
            what,
            self.refused,
            self.evicted,
            self.timed_out,
        )


# -- the server -------------------------------------------------------------------------------


class MetricsServer(HttpServer):
    """``/metrics`` and ``/healthz`` over HTTP, served by an event loop in a daemon thread."""

    def __init__(
        self,
        address: str,
        report: Callable[[], Report],
        health: Callable[[], Health],
        mode: int = 0o660,
        gid: int = -1,
        allow_unsafe: bool = False,
        collectors: Sequence[Collector] = (),
    ) -> None:
        """Bind ``address`` (``HOST:PORT``, a unix path or ``@name``); unix sockets get
        ``mode`` and ``gid`` like the server socket (``allow_unsafe``: see
        ``allow_unsafe_dir``); ``collectors`` add families to ``/metrics``.

        Raises:
            SocketError: the address is malformed or cannot be bound.
        """
        where = parse_address(address)
        self._bound: BoundSocket | None = None
        if isinstance(where, tuple):
            sock = _tcp_socket(where, address)
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.url, name = f"http://{shown}:{port}/metrics", f"{host}:{port}"
        else:
            self._bound = bind_stream_socket(where, mode, gid, allow_unsafe=allow_unsafe)
            sock = self._bound.sock
            self.url, name = f"unix:{where}:/metrics", "localhost:0"
        self.connections = ConnectionCounters()
        app = make_app(report, health, self.connections, collectors)
        super().__init__(sock, app, self.connections, name)

    def close(self) -> None:
        """Stop serving (after the app calls in progress), close, remove a unix socket file."""
        super().close()
        if self._bound is not None:
            unlink_if_ours(self._bound)


def _tcp_socket(where: tuple[str, int], address: str) -> socket.socket:
    try:
        family = socket.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise SocketError(f"cannot serve metrics on {address}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As http.server does: a restart may bind again while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot serve metrics on {address}: {exc.strerror}") from None
    return sock

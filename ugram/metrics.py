"""The Prometheus endpoint: ``/metrics`` and ``/healthz``, served from a supervisor thread.

``/metrics`` is prometheus-client's exposition of :class:`ServerCollector`, a custom
collector that turns one :class:`~ugram.observe.Report` (a lock-free reading of the shared
counters) into metric families at each scrape: nothing is formatted by hand and nothing is
cached, so a scrape always sees the counters as they are. ``/healthz`` answers 200 ``ok``
while the receiver and every active worker run and make progress, else 503 with the
reasons (see :mod:`ugram.health`).

The endpoint listens on ``HOST:PORT`` or on a unix stream socket (a path, or ``@name``);
the app is a plain WSGI callable served by :mod:`wsgiref`, one request at a time.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString as _untyped_go_float

from .control import bind_stream_socket
from .errors import SocketError
from .health import Health
from .observe import Report
from .sockets import unlink_if_ours
from .stats import REJECT_REASONS

log = logging.getLogger("ugram.metrics")

REQUEST_TIMEOUT = 5.0  # a client that stalls mid-request cannot hold the endpoint longer


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
)


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
    cumulative, buckets = 0, []
    for bound, count in zip(lat.bounds, lat.counts, strict=False):
        cumulative += count
        buckets.append((_go_float(bound), float(cumulative)))
    buckets.append(("+Inf", float(lat.count)))
    return HistogramMetricFamily(
        "ugram_handling_latency_seconds",
        "Time from the receiver reading a datagram to a worker finishing it.",
        buckets=buckets,
        sum_value=lat.sum_seconds,
    )


def _go_float(value: float) -> str:
    text: str = _untyped_go_float(value)  # type: ignore[no-untyped-call]
    return text


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

StartResponse = Callable[..., Any]


def make_app(
    report: Callable[[], Report], health: Callable[[], Health]
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app: ``/metrics`` (prometheus-client), ``/healthz``, and an index at ``/``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(report))
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


# -- the HTTP server --------------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def setup(self) -> None:
        if not isinstance(self.client_address, tuple):  # AF_UNIX peers have no address
            self.client_address = ("unix", 0)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(WSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("metrics endpoint: error serving %s", client_address, exc_info=True)


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


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, served from a daemon thread."""

    def __init__(
        self,
        address: str,
        report: Callable[[], Report],
        health: Callable[[], Health],
        mode: int = 0o660,
        gid: int = -1,
    ) -> None:
        """Bind ``address`` (``HOST:PORT``, a unix path or ``@name``); unix sockets get
        ``mode`` and ``gid`` like the server socket.

        Raises:
            SocketError: the address is malformed or cannot be bound.
        """
        where = parse_address(address)
        self._bound = None
        if isinstance(where, tuple):
            self._server = _tcp_server(where, address)
            host, port = self._server.server_address[:2]
            host = host.decode() if isinstance(host, bytes) else str(host)
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{port}/metrics"
        else:
            self._bound = bind_stream_socket(where, mode, gid)
            self._server = _unix_server(self._bound.sock)
            self.url = f"unix:{where}:/metrics"
        self._server.set_app(make_app(report, health))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="ugram-metrics", daemon=True
        )

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving (after a request in progress), close, remove a unix socket file."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        if self._bound is not None:
            unlink_if_ours(self._bound)


def _tcp_server(where: tuple[str, int], address: str) -> _Server:
    try:
        family = socket.getaddrinfo(where[0], where[1], type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise SocketError(f"cannot serve metrics on {address}: {exc.strerror}") from None
    server_class = type("_FamilyServer", (_Server,), {"address_family": family})
    try:
        server: _Server = server_class(where, _Handler)
    except OSError as exc:
        raise SocketError(f"cannot serve metrics on {address}: {exc.strerror}") from None
    return server


def _unix_server(sock: socket.socket) -> _Server:
    server = _Server(("localhost", 0), _Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = "localhost", 0
    server.setup_environ()
    return server

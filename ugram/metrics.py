"""The Prometheus endpoint: ``/metrics`` and ``/healthz``, served from a supervisor thread.

``/metrics`` is prometheus-client's exposition of :class:`ServerCollector`, a custom
collector that turns one :class:`~ugram.observe.Report` (a lock-free reading of the shared
counters) into metric families at each scrape: nothing is formatted by hand and nothing is
cached, so a scrape always sees the counters as they are. ``/healthz`` answers 200 ``ok``
while the receiver and every active worker run and make progress, else 503 with the
reasons (see :mod:`ugram.health`).

The endpoint listens on ``HOST:PORT`` or on a unix stream socket (a path, or ``@name``).
The app is a plain WSGI callable; an event loop in a thread of its own reads requests and
writes responses (one HTTP/1.0 request a connection) and a few threads run the app, so a
slow or hostile client holds one connection, never the endpoint: each has deadlines for its
request and its response, and at most :data:`MAX_CONNECTIONS` are open. A new connection
past the cap cuts off the oldest one still sending its request head (clients that hold
connections open cannot lock out a scrape or a health check); only when every open one is
past its head is the new one refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from wsgiref.handlers import SimpleHandler

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
from .escaping import printable_bytes
from .health import Health
from .observe import Report
from .sockets import BoundSocket, unlink_if_ours
from .stats import REJECT_REASONS

log = logging.getLogger("ugram.metrics")

# What one client may hold of the endpoint.
MAX_CONNECTIONS = 64  # open at once; past it the oldest still sending its head is cut off
MAX_HANDLING = 8  # requests answered at once (the threads that run the app)
REQUEST_TIMEOUT = 5.0  # for the whole request head, however slowly it trickles in
WRITE_TIMEOUT = 5.0  # for the whole response: a client that does not read is cut off
MAX_HEAD_BYTES = 16384  # request line and headers; a scrape sends a few hundred
BACKLOG = 128
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
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def make_app(
    report: Callable[[], Report],
    health: Callable[[], Health],
    connections: ConnectionCounters | None = None,
) -> App:
    """The WSGI app: ``/metrics`` (prometheus-client), ``/healthz``, and an index at ``/``.

    ``/metrics`` includes the endpoint's own ``connections`` counters when given.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(report))
    if connections is not None:
        registry.register(connections)
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


# -- HTTP/1.0 over asyncio streams ------------------------------------------------------------


class _BadRequest(Exception):
    """A request the endpoint answers with an error status instead of the app."""

    def __init__(self, status: str, body: str) -> None:
        super().__init__(status)
        self.status, self.body = status, body


_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) (HTTP/1\.[01])")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")
_TOO_LARGE = _BadRequest("431 Request Header Fields Too Large", "request head too large\n")


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """The request line and header lines (line ends stripped); None if the client left first.

    Raises:
        _BadRequest: the head is longer than :data:`MAX_HEAD_BYTES`.
    """
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # one line longer than the reader's limit
            raise _TOO_LARGE from None
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise _TOO_LARGE
        if not line.endswith(b"\n"):
            return None  # end of stream before the blank line
        line = line.rstrip(b"\r\n")
        if line:
            lines.append(line)
        elif lines:
            return lines
        # else: an empty line before the request line, which RFC 9112 (2.2) lets us ignore


def _environ(lines: list[bytes], base: dict[str, Any]) -> dict[str, Any]:
    """The CGI part of a WSGI environ for a request head (wsgiref adds the ``wsgi.*`` keys).

    Raises:
        _BadRequest: the request line or a header line is malformed.
    """
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        raise _BadRequest("400 Bad Request", "expected an HTTP/1.x request line\n")
    method, target, version = (part.decode("latin-1") for part in request.groups())
    path, _, query = target.partition("?")
    environ = base | {
        "REQUEST_METHOD": method,
        "PATH_INFO": urllib.parse.unquote(path, "latin-1"),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": version,
    }
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            raise _BadRequest("400 Bad Request", "malformed header line\n")
        name, value = (part.decode("latin-1") for part in header.groups())
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class _Gateway(SimpleHandler):
    """wsgiref's HTTP/1.0 response writer, writing into memory (the socket is the loop's)."""

    server_software = "ugram"

    def __init__(self, out: io.BytesIO, environ: dict[str, Any]) -> None:
        super().__init__(io.BytesIO(), out, io.StringIO(), environ, multithread=True)
        self.os_environ = {}  # else wsgiref copies the supervisor's environment into each request

    def log_exception(self, exc_info: Any) -> None:
        log.warning("metrics endpoint: the app failed", exc_info=exc_info)


def _respond(app: App, environ: dict[str, Any]) -> bytes:
    """Run the app on one request: the whole response, status line to body (500 if it raised)."""
    out = io.BytesIO()
    _Gateway(out, environ).run(app)
    return out.getvalue()


def _plain(status: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def _close(writer: asyncio.StreamWriter) -> None:
    # close() would wait for the peer to read whatever is still buffered: never for a
    # client that does not read, so drop what is left instead.
    if writer.transport.get_write_buffer_size():
        writer.transport.abort()
    else:
        writer.close()


class _Endpoint:
    """The connections of one endpoint, on its event loop: read a request, answer, close.

    At most :data:`MAX_CONNECTIONS` are open: past it, the oldest connection still sending
    its request head is cut off for the new one (so holding connections open, or trickling
    bytes under the deadline, cannot lock a scrape out), and only when none is left to cut
    is the new one refused. A request head must arrive within :data:`REQUEST_TIMEOUT` and
    the response be read within :data:`WRITE_TIMEOUT`; the app runs in a pool of
    :data:`MAX_HANDLING` threads, so the loop itself never waits on it.
    """

    def __init__(
        self, app: App, pool: ThreadPoolExecutor, counters: ConnectionCounters, name: str
    ) -> None:
        """Answer with ``app`` run in ``pool``; ``name`` is the endpoint's ``host:port``."""
        self._app, self._pool, self.counters = app, pool, counters
        host, _, port = name.rpartition(":")
        self._base = {"SERVER_NAME": host, "SERVER_PORT": port, "SCRIPT_NAME": ""}
        self._open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}  # counted in the cap
        # The open connections still sending their request head, oldest first (dicts keep
        # insertion order): the ones a new connection may push out.
        self._reading: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # every connection task, evicted included

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection (the asyncio server's callback); never raises."""
        task = asyncio.current_task()
        assert task is not None  # the server runs each callback as a task
        if len(self._open) >= MAX_CONNECTIONS and not self._evict_oldest_reader():
            self.counters.note_refused()
            writer.write(_plain("503 Service Unavailable", "too many connections, try again\n"))
            _close(writer)
            return
        self._open[task] = self._reading[task] = writer
        self._tasks.add(task)
        writer.transport.set_write_buffer_limits(high=0)  # drain() waits for all of it
        try:
            await self._exchange(task, reader, writer)
        except OSError as exc:  # the client reset or left mid-way: nothing to answer
            log.debug("metrics endpoint: %s", exc)
        except Exception:
            log.warning("metrics endpoint: error serving a client", exc_info=True)
        finally:
            self._open.pop(task, None)
            self._reading.pop(task, None)
            self._tasks.discard(task)
            _close(writer)

    def _evict_oldest_reader(self) -> bool:
        """Cut off the oldest connection still sending its request head; False if none is.

        Its task sees the end of the stream and finishes as if the client had left.
        """
        if not self._reading:
            return False
        task, writer = next(iter(self._reading.items()))
        del self._reading[task], self._open[task]
        self.counters.note_evicted()
        writer.write(_plain("503 Service Unavailable", "too many connections, try again\n"))
        writer.transport.abort()  # at once: its room is what the new connection gets
        return True

    async def _exchange(
        self, task: asyncio.Task[Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        remote = peer[0] if isinstance(peer, tuple) else "unix"
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                lines = await _read_head(reader)
            if task not in self._reading:  # evicted while its last bytes arrived
                return
            del self._reading[task]
            if lines is None:
                return
            environ = _environ(lines, self._base | {"REMOTE_ADDR": remote})
        except TimeoutError:
            self.counters.note_timed_out(f"no complete request within {REQUEST_TIMEOUT:g}s")
            writer.write(_plain("408 Request Timeout", "no complete request in time\n"))
            return
        except _BadRequest as exc:
            writer.write(_plain(exc.status, exc.body))
            return
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._pool, _respond, self._app, environ)
        status = response[: response.find(b"\r\n")].decode("latin-1")
        log.debug('%s "%s" %s', remote, printable_bytes(lines[0]), status)
        await self._send(writer, response)

    async def _send(self, writer: asyncio.StreamWriter, response: bytes) -> None:
        writer.write(response)
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except TimeoutError:
            self.counters.note_timed_out(f"response not read within {WRITE_TIMEOUT:g}s")
            writer.transport.abort()

    async def close(self) -> None:
        """Cut off every open connection and wait until their tasks are done."""
        # Not task.cancel(): Python 3.11's asyncio logs a traceback for each cancelled
        # connection task. A reset connection ends its task as a client leaving would.
        for writer in self._open.values():
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the server -------------------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, served by an event loop in a daemon thread."""

    def __init__(
        self,
        address: str,
        report: Callable[[], Report],
        health: Callable[[], Health],
        mode: int = 0o660,
        gid: int = -1,
        allow_unsafe: bool = False,
    ) -> None:
        """Bind ``address`` (``HOST:PORT``, a unix path or ``@name``); unix sockets get
        ``mode`` and ``gid`` like the server socket (``allow_unsafe``: see
        ``allow_unsafe_dir``).

        Raises:
            SocketError: the address is malformed or cannot be bound.
        """
        where = parse_address(address)
        self._bound: BoundSocket | None = None
        if isinstance(where, tuple):
            self._sock = _tcp_socket(where, address)
            host, port = self._sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.url, name = f"http://{shown}:{port}/metrics", f"{host}:{port}"
        else:
            self._bound = bind_stream_socket(where, mode, gid, allow_unsafe=allow_unsafe)
            self._sock = self._bound.sock
            self.url, name = f"unix:{where}:/metrics", "localhost:0"
        self.connections = ConnectionCounters()
        self._pool = ThreadPoolExecutor(MAX_HANDLING, thread_name_prefix="ugram-metrics")
        app = make_app(report, health, self.connections)
        self._endpoint = _Endpoint(app, self._pool, self.connections, name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ugram-metrics", daemon=True)

    def start(self) -> None:
        """Serve from a daemon thread (its own event loop: the supervisor's never waits)."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving (after the app calls in progress), close, remove a unix socket file."""
        if self._thread.is_alive():
            self._ready.wait()
            if self._loop is not None and self._stop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sock.close()
        if self._bound is not None:
            unlink_if_ours(self._bound)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:  # a bug: say so, and let close() still work
            log.exception("metrics endpoint: stopped serving")

    async def _serve(self) -> None:
        try:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            server = await _listen(self._sock, self._endpoint.connection)
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await self._endpoint.close()


async def _listen(sock: socket.socket, connection: Connection) -> asyncio.Server:
    if sock.family == socket.AF_UNIX:
        # Python 3.13 would unlink the path on close; unlink_if_ours does it, with care.
        extra: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        return await asyncio.start_unix_server(
            connection, sock=sock, limit=MAX_HEAD_BYTES, backlog=BACKLOG, **extra
        )
    return await asyncio.start_server(connection, sock=sock, limit=MAX_HEAD_BYTES, backlog=BACKLOG)


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

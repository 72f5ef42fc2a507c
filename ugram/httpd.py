"""HTTP/1.0 for one WSGI app over asyncio streams: the metrics endpoint's server.

An event loop in a thread of its own reads requests and writes responses (one request a
connection) and a few threads run the app, so a slow or hostile client holds one
connection, never the endpoint: each has deadlines for its request and its response, and
at most :data:`MAX_CONNECTIONS` are open. A new connection past the cap cuts off the oldest
one still sending its request head (clients that hold connections open cannot lock out a
scrape or a health check); only when every open one is past its head is the new one
refused. What is turned away is counted through :class:`Counters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import socket
import sys
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from wsgiref.handlers import SimpleHandler

from .escaping import printable_bytes

log = logging.getLogger("ugram.metrics")

# What one client may hold of the endpoint.
MAX_CONNECTIONS = 64  # open at once; past it the oldest still sending its head is cut off
MAX_HANDLING = 8  # requests answered at once (the threads that run the app)
REQUEST_TIMEOUT = 5.0  # for the whole request head, however slowly it trickles in
WRITE_TIMEOUT = 5.0  # for the whole response: a client that does not read is cut off
MAX_HEAD_BYTES = 16384  # request line and headers; a scrape sends a few hundred
BACKLOG = 128

StartResponse = Callable[..., Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Counters(Protocol):
    """Where the server counts the connections it turns away."""

    def note_refused(self) -> None:
        """A connection closed at once: :data:`MAX_CONNECTIONS` open, all past their head."""

    def note_evicted(self) -> None:
        """A connection cut off before its request head to make room for a new one."""

    def note_timed_out(self, why: str) -> None:
        """A connection cut off at a deadline (``why``: which one)."""


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

    def __init__(self, app: App, pool: ThreadPoolExecutor, counters: Counters, name: str) -> None:
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


class HttpServer:
    """Serves ``app`` on a listening socket from an event loop in a daemon thread."""

    def __init__(self, sock: socket.socket, app: App, counters: Counters, name: str) -> None:
        """Serve ``app`` on ``sock`` (listening; owned from now on), counting what is turned
        away in ``counters``; ``name`` is the endpoint's ``host:port`` for the app."""
        self._sock = sock
        self._pool = ThreadPoolExecutor(MAX_HANDLING, thread_name_prefix="ugram-metrics")
        self._endpoint = _Endpoint(app, self._pool, counters, name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ugram-metrics", daemon=True)

    def start(self) -> None:
        """Serve from a daemon thread (its own event loop: the caller's never waits)."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving (after the app calls in progress) and close the socket."""
        if self._thread.is_alive():
            self._ready.wait()
            if self._loop is not None and self._stop is not None:
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sock.close()

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

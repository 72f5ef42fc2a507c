"""What :class:`~ugram.Client` and :class:`~ugram.AsyncClient` share, written once: options,
encoding, connecting with backoff, one send attempt, the policy's decisions, the ``buffer``
policy's queue, and every count.

A decision that may have to wait (for room in the server's queue, or for a missing server)
is a generator of *steps*: it yields a :class:`Wait` each time the policy says wait, and
returns its result. The sync client performs a step with ``poll`` or ``sleep``, the async
client by awaiting; neither decides anything, so both behave and count alike.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import socket
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Final, NamedTuple, TypeAlias, TypeVar

from .. import portable
from ..errors import (
    ClientClosedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from .endpoint import (
    GONE_ERRNOS,
    ReplyEndpoint,
    connect_to,
    fit_send_buffer,
    send_limit,
    server_address,
)
from .options import (
    DEFAULT_MAX_DATAGRAM,
    ClientCodec,
    Overflow,
    Payload,
    Policy,
    check_options,
    make_encoder,
    nbytes,
)
from .statistics import ClientStatistics, Counters

WAIT_SLICE: Final = 0.25  # longest single wait for room: a lost wake-up costs at most this
# macOS says "full" with ENOBUFS, and poll() cannot tell when room comes: retry after this.
NO_ROOM_PAUSE: Final = 0.002
CHUNK: Final = 1024  # send_many encodes and checks this many payloads before sending them

# What one send attempt came to.
SENT: Final = 0
FULL: Final = 1
GONE: Final = 2

T = TypeVar("T")


class Wait(NamedTuple):
    """One step of waiting: for room on ``sock`` at most ``seconds``, or, with no ``sock``,
    a pause of ``seconds`` (a missing server's backoff)."""

    sock: socket.socket | None
    seconds: float


Steps: TypeAlias = Generator[Wait, None, T]


class ClientCore:
    """The state and decisions of a client; a transport adds how to wait and the API."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: ClientCodec = "raw",
        policy: Policy = "block",
        timeout: float | None = None,
        buffer_size: int = 10_000,
        overflow: Overflow = "drop_oldest",
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        wait_for_server: float | None = None,
        backoff: float = 0.01,
        backoff_max: float = 1.0,
    ) -> None:
        """Create a client; it connects on first use, not here.

        Args:
            path: the server's socket path, or ``@name`` for a Linux abstract name.
            codec: how objects that are not bytes are encoded: ``raw`` (only bytes and str),
                ``json`` or ``msgpack``.
            policy: ``block``, ``block_with_timeout``, ``buffer`` or ``drop``.
            timeout: ``block_with_timeout``: longest a ``send`` (or ``send_many``) waits.
            buffer_size: ``buffer``: most datagrams held in memory.
            overflow: ``buffer``: which to drop when it is full, ``drop_oldest`` or
                ``drop_newest``.
            max_datagram: larger payloads raise :class:`PayloadTooLargeError` before
                sending; match the server's ``max_datagram``.
            wait_for_server: ``block``: longest a send waits for an absent server before
                raising :class:`ServerUnavailableError` (None: wait as long as it takes).
            backoff: first delay between attempts to reach a missing server; it doubles up
                to ``backoff_max``.
            backoff_max: longest delay between attempts to reach a missing server.

        Raises:
            ConfigError: an option is invalid.
        """
        check_options(codec, policy, timeout, buffer_size, overflow, max_datagram, backoff)
        self.path = os.fspath(path)
        self.codec = codec
        self.policy = policy
        self.timeout = timeout
        self.buffer_size = buffer_size
        self.overflow = overflow
        self.max_datagram = max_datagram
        self.wait_for_server = wait_for_server
        self._address = server_address(self.path)
        self._encode = make_encoder(codec)
        self._backoff = (backoff, max(backoff, backoff_max))
        self._delay = backoff
        self._retry_at = 0.0
        self._sock: socket.socket | None = None
        self._blocking = False
        self._closed = False
        self._queue: collections.deque[Payload] = collections.deque()
        self._counts = Counters()
        self._full_errnos = portable.current().full_errnos - {errno.EAGAIN}
        self._unpollable = False  # the last FULL was an ENOBUFS: poll() cannot tell room
        self._setup()

    def _setup(self) -> None:
        """Hook: the transport's own state, made once the options are checked."""

    def statistics(self) -> ClientStatistics:
        """The client's counters now (a frozen snapshot)."""
        return self._counts.snapshot(len(self._queue))

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self._sock else "not connected"
        return f"{type(self).__name__}({self.path!r}, policy={self.policy!r}, {state})"

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, obj: object) -> Payload:
        """The datagram ``send(obj)`` would send: bytes-like objects as they are, anything
        else encoded with the codec (``str`` as UTF-8 with the ``raw`` codec).

        Raises:
            PayloadTooLargeError: the payload is larger than ``max_datagram``.
            TypeError: the ``raw`` codec was given something that is not bytes or str, or
                msgspec cannot encode the object.
        """
        data: Payload
        if isinstance(obj, bytes | bytearray | memoryview):
            data = obj
        elif self._encode is not None:
            data = self._encode(obj)
        elif isinstance(obj, str):
            data = obj.encode()
        else:
            raise TypeError(
                f"the raw codec sends bytes or str, not {type(obj).__name__}; "
                "use codec='json' or 'msgpack' to encode objects"
            )
        size = nbytes(data)
        if size > self.max_datagram:
            raise PayloadTooLargeError(size, self.max_datagram)
        return data

    def _encoded_chunks(self, objs: Iterable[object]) -> Iterator[list[Payload]]:
        """``send_many``'s payloads, CHUNK at a time, each chunk encoded (and checked) whole.

        Raises:
            PayloadTooLargeError, TypeError: as :meth:`encode`.
        """
        chunk: list[object] = []
        for obj in objs:
            chunk.append(obj)
            if len(chunk) == CHUNK:
                yield [self.encode(item) for item in chunk]
                chunk = []
        if chunk:
            yield [self.encode(item) for item in chunk]

    # -- connecting -------------------------------------------------------------------------

    def _connect(self) -> socket.socket | None:
        """The connected socket, connecting first if needed; None while no server listens.

        A failed attempt is not repeated before the backoff delay has passed, so a client
        facing a missing server makes one attempt per delay, not one per datagram.

        Raises:
            ClientClosedError: the client is closed.
            OSError: connecting failed for another reason (e.g. PermissionError, or an
                UnsafePathError: the path crosses a symlink another user planted).
        """
        if self._closed:
            raise ClientClosedError(f"{type(self).__name__} for {self.path} is closed")
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(self._blocking)
        try:
            connect_to(sock, self._address)
        except OSError as exc:
            sock.close()
            if exc.errno not in GONE_ERRNOS:
                self._counts.errors += 1
                raise
            self._server_missing(now)
            return None
        self._server_found(now)
        fit_send_buffer(sock, self.max_datagram)
        self._sock = sock
        self._connected(sock)
        return sock

    def _connected(self, sock: socket.socket) -> None:
        """Hook: a new connection was made."""

    def _disconnect(self) -> None:
        """Forget the socket: its server is gone (or the client closes)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _server_missing(self, now: float) -> None:
        self._counts.server_missing(now)
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, self._backoff[1])

    def _server_found(self, now: float) -> None:
        self._counts.server_found(now)
        self._delay, self._retry_at = self._backoff[0], 0.0

    def _until_retry(self) -> float:
        return max(0.0, self._retry_at - time.monotonic())

    # -- one attempt ------------------------------------------------------------------------

    def _send_now(self, data: Payload) -> bool:
        """The fast path: True when the connected socket took ``data`` at once, nothing being
        buffered before it; False leaves every decision to the slow path."""
        sock = self._sock
        if sock is None or self._queue:
            return False
        try:
            sock.send(data)
        except OSError:
            return False  # the slow path looks again and decides
        self._counts.sent += 1
        return True

    def _try(self, sock: socket.socket, data: Payload) -> int:
        """Send ``data`` once: SENT, FULL (no room in the server's queue) or GONE.

        Raises:
            PayloadTooLargeError: the kernel's limit is lower than ``max_datagram``.
            OSError: anything unexpected (counted in ``errors``).
        """
        try:
            sock.send(data)
        except BlockingIOError:
            return FULL
        except OSError as exc:
            return self._failed(exc, data, sock)
        self._counts.sent += 1
        return SENT

    def _failed(self, exc: OSError, data: Payload, sock: socket.socket) -> int:
        if exc.errno in GONE_ERRNOS:
            self._disconnect()
            return GONE
        if exc.errno in self._full_errnos:  # macOS: ENOBUFS at once, even when blocking
            self._unpollable = True
            return FULL
        self._counts.errors += 1
        if exc.errno == errno.EMSGSIZE:
            raise self.too_large(sock, data) from None
        raise exc

    @classmethod
    @contextlib.contextmanager
    def refusing_too_large(cls, sock: socket.socket, data: Payload) -> Iterator[None]:
        """Turn the kernel's EMSGSIZE for ``data`` into :meth:`too_large`'s error."""
        try:
            yield
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise cls.too_large(sock, data) from None
            raise

    def _send_request(self, sock: socket.socket, data: Payload) -> None:
        """A request's one send, on its own endpoint.

        Raises:
            PayloadTooLargeError: the kernel refused it (EMSGSIZE).
        """
        with self.refusing_too_large(sock, data):
            sock.send(data)

    @staticmethod
    def too_large(sock: socket.socket, data: Payload) -> PayloadTooLargeError:
        """The error for ``data`` refused by the kernel (EMSGSIZE) on ``sock``: its size,
        the limit the send buffer sets, and what to raise."""
        sndbuf, limit = send_limit(sock)
        sysctls = portable.current().sndbuf_sysctls
        return PayloadTooLargeError(nbytes(data), None, sndbuf=(sndbuf, limit), sysctls=sysctls)

    def _send_run(self, sock: socket.socket, payloads: list[Payload], index: int) -> int:
        """Send ``payloads[index:]`` until one fails; returns the index of the first unsent.

        The fast path of ``send_many``: a tight loop, the first failure left to the caller's
        policy-aware slow path. (``sendmmsg`` through ctypes was measured against this loop,
        into a real server and into a bare reader: no reliable gain in throughput or sender
        CPU, because the kernel's per-datagram work and the 11-deep queue dominate.)
        """
        send, counts = sock.send, self._counts
        while index < len(payloads):
            try:
                send(payloads[index])
            except OSError:
                break
            index += 1
            counts.sent += 1  # per datagram: statistics() stays exact while blocked
        return index

    # -- the policy -------------------------------------------------------------------------

    def _send_steps(self, data: Payload) -> Steps[bool]:
        """``send`` after the fast path: True when sent (or buffered), False when dropped.

        Raises:
            The errors of :meth:`_delivery`.
        """
        if self.policy == "buffer":
            sent = self._offer(data)
            self._wake_flusher()
            return sent
        return (yield from self._delivery(data, self._deadline()))

    def _many_steps(self, payloads: list[Payload]) -> Steps[int]:
        """``send_many`` of one chunk: how many were sent (or buffered).

        Raises:
            The errors of :meth:`_delivery`.
        """
        if self.policy == "buffer":
            sent = sum(self._offer(data) for data in payloads)
            self._wake_flusher()
            return sent
        deadline = self._deadline()  # one timeout for the whole call, not one per datagram
        sent, index, count = 0, 0, len(payloads)
        while index < count:
            if self._sock is not None:
                start, index = index, self._send_run(self._sock, payloads, index)
                sent += index - start
            if index < count:
                sent += yield from self._delivery(payloads[index], deadline)
                index += 1
        return sent

    def _delivery(self, data: Payload, deadline: float | None) -> Steps[bool]:
        """Send ``data``, waiting as the policy says; False when it was dropped (counted).

        Raises:
            ServerUnavailableError, PayloadTooLargeError, ClientClosedError, OSError: as
                ``send`` documents.
        """
        since = time.monotonic()
        while True:
            sock = self._connect()
            outcome = GONE if sock is None else self._try(sock, data)
            if outcome == SENT:
                return True
            if outcome == GONE and sock is not None:
                continue  # the old server closed: a successor may already listen
            if self._give_up(outcome, deadline, since):
                return False
            yield self._next_wait(outcome, sock, deadline)

    def _give_up(self, outcome: int, deadline: float | None, since: float) -> bool:
        """After a failed attempt: True when the policy says drop now (and counts the drop).

        Raises:
            ServerUnavailableError: ``block`` policy, no server for ``wait_for_server``.
        """
        now = time.monotonic()
        if self.policy == "drop":
            self._counts.drop("full" if outcome == FULL else "unavailable")
            return True
        if deadline is not None and now >= deadline:
            self._counts.drop("timeout" if outcome == FULL else "unavailable")
            return True
        wait = self.wait_for_server
        if outcome != FULL and wait is not None and now - since >= wait:
            raise self._unavailable(wait)
        self._counts.retries += 1
        return False

    def _next_wait(self, outcome: int, sock: socket.socket | None, deadline: float | None) -> Wait:
        """How long to wait before the next attempt, and for what."""
        limit = WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
        if outcome == FULL and self._unpollable:
            self._unpollable = False
            return Wait(None, min(limit, NO_ROOM_PAUSE))
        if outcome == FULL and sock is not None:
            return Wait(sock, min(limit, WAIT_SLICE))
        return Wait(None, min(limit, self._until_retry()))

    def _deadline(self) -> float | None:
        if self.policy == "block_with_timeout" and self.timeout is not None:
            return time.monotonic() + self.timeout
        return None

    # -- the buffer policy ------------------------------------------------------------------

    def _wake_flusher(self) -> None:
        """Hook: make sure the transport's background sender drains what is buffered."""
        raise NotImplementedError

    def _buffer(self, data: Payload) -> bool:
        """Queue ``data`` behind what is buffered (the caller already tried to send it)."""
        if len(self._queue) >= self.buffer_size:
            if self.overflow == "drop_newest":
                self._counts.drop("overflow")
                return False
            self._queue.popleft()
            self._counts.drop("overflow")
        self._queue.append(data)
        self._counts.peak = max(self._counts.peak, len(self._queue))
        return True

    def _offer(self, data: Payload) -> bool:
        """``buffer`` policy: send now if nothing is queued and there is room, else queue."""
        if not self._queue:
            for _ in range(2):  # again after an old server closed: a successor may listen
                sock = self._connect()
                outcome = GONE if sock is None else self._try(sock, data)
                if outcome == SENT:
                    return True
                if outcome == FULL or sock is None:
                    break
        return self._buffer(data)

    def _drain(self) -> Wait | None:
        """One pass of the background sender: None once the buffer is empty, else how to
        wait before the next pass (counted as a retry).

        Raises:
            ClientClosedError: the client was closed.
        """
        outcome, sock = self._send_queued()
        if outcome == SENT:
            return None
        self._counts.retries += 1
        if outcome == FULL and sock is not None:
            return Wait(sock, WAIT_SLICE)
        return Wait(None, self._until_retry())

    def _send_queued(self) -> tuple[int, socket.socket | None]:
        """Send from the head of the buffer until it is empty (SENT), full (FULL) or gone.

        A datagram the kernel refuses for a reason other than room or absence is dropped and
        counted, so a bad one never wedges the buffer.
        """
        while self._queue:
            try:
                sock = self._connect()
                if sock is None:
                    return GONE, None
                outcome = self._try(sock, self._queue[0])
            except ClientClosedError:
                raise
            except (OSError, PayloadTooLargeError):
                self._queue.popleft()
                self._counts.drop("error")
                continue
            if outcome == SENT:
                self._queue.popleft()
            elif outcome == FULL:
                return FULL, sock
        return SENT, None

    def _shut(self) -> None:
        """Drop what is still buffered (counted as ``closed``), then close the socket."""
        if self._queue:
            self._counts.drop("closed", len(self._queue))
            self._queue.clear()
        self._closed = True
        self._disconnect()

    # -- requests ---------------------------------------------------------------------------

    def _reply_endpoint(self) -> ReplyEndpoint:
        endpoint = ReplyEndpoint(self._address)
        fit_send_buffer(endpoint.sock, self.max_datagram)
        return endpoint

    def _reply_connect(
        self, endpoint: ReplyEndpoint, deadline: float, timeout: float
    ) -> Steps[None]:
        """Connect a request's endpoint, backing off while no server listens.

        Raises:
            ServerUnavailableError: no server listened before ``deadline``.
        """
        delay, most = self._backoff
        while not endpoint.connect():
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._unavailable(timeout)
            yield Wait(None, min(delay, left))
            delay = min(delay * 2, most)

    def _request_timed_out(self, timeout: float) -> RequestTimeoutError:
        self._counts.request_timeouts += 1
        return RequestTimeoutError(f"no reply from {self.path} within {timeout:g}s")

    def _unavailable(self, timeout: float) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"no ugram server listens on {self.path} (waited {timeout:g}s)"
        )

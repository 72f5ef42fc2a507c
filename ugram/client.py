"""The sender side: :class:`Client` and :class:`AsyncClient`.

With Unix datagrams, loss happens at the sender. A full receive queue (11 datagrams by
default, shared by every sender) blocks a blocking sender or fails a non-blocking one with
EAGAIN, and most client libraries then drop silently. Here the caller picks what happens, and
every datagram not sent is counted by reason in :meth:`Client.statistics`:

* ``block`` (default): wait for room, and for an absent server, however long it takes.
* ``block_with_timeout``: wait at most ``timeout`` seconds, then drop.
* ``buffer``: keep up to ``buffer_size`` datagrams in memory, sent in order in the background
  as room appears; when the buffer is full, drop the oldest or the newest.
* ``drop``: never wait; drop at once when there is no room or no server.

A restarted server is survived: when the path disappears or is re-bound by a new server
(ENOENT, ECONNREFUSED), the client reconnects with exponential backoff instead of raising
on every call, and accounts the gap (``outages``, ``unavailable_seconds``).

The socket is connected once, so the kernel resolves the path once, and ``poll`` on it tells
when the *server's* queue has room again (an unconnected socket would always look writable).

A path is resolved by :func:`ugram.safefs.socket_target` before each connect: a symlink is
followed only if it is owned by root or the client's user in a directory nobody else may
change, so a link another user planted cannot send a privileged client's datagrams to a
socket of its choosing (:class:`~ugram.errors.UnsafePathError` instead).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Literal, Self, get_args

import msgspec

from . import safefs
from .errors import (
    ClientClosedError,
    ConfigError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerUnavailableError,
)

Policy = Literal["block", "block_with_timeout", "buffer", "drop"]
Overflow = Literal["drop_oldest", "drop_newest"]
ClientCodec = Literal["raw", "json", "msgpack"]
Payload = bytes | bytearray | memoryview

DEFAULT_MAX_DATAGRAM: Final = 65536  # the server's default max_datagram
MAX_REPLY: Final = 1 << 18  # larger than any AF_UNIX datagram the default wmem_max allows
WAIT_SLICE: Final = 0.25  # longest single wait for room: a lost wake-up costs at most this
CHUNK: Final = 1024  # send_many encodes and checks this many payloads before sending them

# The peer is gone (closed, or never there): reconnect, perhaps to a successor.
GONE_ERRNOS: Final = frozenset(
    {errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE}
)

# What one send attempt came to.
SENT: Final = 0
FULL: Final = 1
GONE: Final = 2


class Drops(msgspec.Struct, frozen=True, kw_only=True):
    """Datagrams a client did not send, by reason.

    Attributes:
        full: ``drop`` policy: the server's queue was full.
        timeout: ``block_with_timeout``: no room in the server's queue within the timeout.
        unavailable: no server listened (``drop`` at once; ``block_with_timeout`` once the
            timeout ran out).
        overflow: ``buffer`` policy: pushed out of the full buffer (oldest or newest).
        closed: ``buffer`` policy: still buffered when ``close()`` stopped waiting.
        error: ``buffer`` policy: the kernel refused it in the background (also in ``errors``).
    """

    full: int = 0
    timeout: int = 0
    unavailable: int = 0
    overflow: int = 0
    closed: int = 0
    error: int = 0

    @property
    def total(self) -> int:
        """Every datagram dropped, whatever the reason."""
        return (
            self.full + self.timeout + self.unavailable + self.overflow + self.closed + self.error
        )


DROP_REASONS: Final = tuple(Drops.__struct_fields__)


class ClientStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What a client has done since it was created.

    ``sent + dropped.total + buffered`` is every datagram handed to ``send``/``send_many``
    (plus the requests sent by ``request``).

    Attributes:
        sent: datagrams the kernel accepted (they are in the server's queue or handled).
        dropped: datagrams not sent, by reason.
        buffered: datagrams in the ``buffer`` policy's buffer right now.
        peak_buffered: the most that were ever buffered at once.
        retries: sends attempted again after a full queue or a missing server.
        errors: unexpected errors from the kernel (raised, or counted under ``dropped.error``).
        outages: times the server was found missing (ENOENT or ECONNREFUSED).
        unavailable_seconds: total time without a server, including an outage going on now.
        replies: replies received by ``request``.
        request_timeouts: requests that got no reply in time.
    """

    sent: int
    dropped: Drops
    buffered: int
    peak_buffered: int
    retries: int
    errors: int
    outages: int
    unavailable_seconds: float
    replies: int
    request_timeouts: int


def server_address(path: str | os.PathLike[str]) -> str | bytes:
    """The ``connect`` address of a server path, ``@name`` being a Linux abstract name.

    Raises:
        ConfigError: an abstract name on a platform without them.
    """
    text = os.fspath(path)
    if not text.startswith("@"):
        return text
    if not sys.platform.startswith("linux"):
        raise ConfigError(f"{text}: abstract socket names (@name) exist only on Linux")
    return b"\0" + text[1:].encode()


def connect_to(sock: socket.socket, address: str | bytes) -> None:
    """Connect ``sock`` to a server address from :func:`server_address`.

    An abstract name is connected as it is; a path through :func:`ugram.safefs.socket_target`,
    which follows no symlink another user could have planted.

    Raises:
        UnsafePathError: a component of the path is an untrusted symlink or not a directory
            (``errno`` ``ENOENT`` when a directory is missing).
        OSError: the connect failed (``ENOENT``, ``ECONNREFUSED``: no server there).
    """
    if isinstance(address, bytes):
        sock.connect(address)
        return
    with safefs.socket_target(address) as target:
        sock.connect(target)


def make_encoder(codec: ClientCodec) -> Callable[[Any], bytes] | None:
    """The encoder for objects that are not already bytes; None for ``raw``."""
    if codec == "json":
        return msgspec.json.Encoder().encode
    if codec == "msgpack":
        return msgspec.msgpack.Encoder().encode
    return None


def _nbytes(data: Payload) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


class _Core:
    """What both clients share: encoding, connecting with backoff, one send attempt, counters."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: ClientCodec,
        policy: Policy,
        timeout: float | None,
        buffer_size: int,
        overflow: Overflow,
        max_datagram: int,
        wait_for_server: float | None,
        backoff: float,
        backoff_max: float,
    ) -> None:
        _check_options(codec, policy, timeout, buffer_size, overflow, max_datagram, backoff)
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
        self._sent = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._peak = 0
        self._retries = 0
        self._errors = 0
        self._outages = 0
        self._down_since: float | None = None
        self._down_total = 0.0
        self._replies = 0
        self._request_timeouts = 0

    def statistics(self) -> ClientStatistics:
        """The client's counters now (a frozen snapshot)."""
        down = self._down_total
        if self._down_since is not None:
            down += time.monotonic() - self._down_since
        return ClientStatistics(
            sent=self._sent,
            dropped=Drops(**self._dropped),
            buffered=len(self._queue),
            peak_buffered=self._peak,
            retries=self._retries,
            errors=self._errors,
            outages=self._outages,
            unavailable_seconds=down,
            replies=self._replies,
            request_timeouts=self._request_timeouts,
        )

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
        size = _nbytes(data)
        if size > self.max_datagram:
            raise PayloadTooLargeError(size, self.max_datagram)
        return data

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
                self._errors += 1
                raise
            self._server_missing(now)
            return None
        self._server_found(now)
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
        if self._down_since is None:
            self._down_since = now
            self._outages += 1
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, self._backoff[1])

    def _server_found(self, now: float) -> None:
        if self._down_since is not None:
            self._down_total += now - self._down_since
            self._down_since = None
        self._delay, self._retry_at = self._backoff[0], 0.0

    def _until_retry(self) -> float:
        return max(0.0, self._retry_at - time.monotonic())

    # -- one attempt ------------------------------------------------------------------------

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
            return self._failed(exc, data)
        self._sent += 1
        return SENT

    def _failed(self, exc: OSError, data: Payload) -> int:
        if exc.errno in GONE_ERRNOS:
            self._disconnect()
            return GONE
        self._errors += 1
        if exc.errno == errno.EMSGSIZE:
            raise PayloadTooLargeError(_nbytes(data), None) from None
        raise exc

    def _give_up(self, outcome: int, deadline: float | None, since: float) -> bool:
        """After a failed attempt: True when the policy says drop now (and counts the drop).

        Raises:
            ServerUnavailableError: ``block`` policy, no server for ``wait_for_server``.
        """
        now = time.monotonic()
        if self.policy == "drop":
            self._drop("full" if outcome == FULL else "unavailable")
            return True
        if deadline is not None and now >= deadline:
            self._drop("timeout" if outcome == FULL else "unavailable")
            return True
        wait = self.wait_for_server
        if outcome != FULL and wait is not None and now - since >= wait:
            raise self._unavailable(wait)
        self._retries += 1
        return False

    def _deadline(self) -> float | None:
        if self.policy == "block_with_timeout" and self.timeout is not None:
            return time.monotonic() + self.timeout
        return None

    def _drop(self, reason: str, count: int = 1) -> None:
        self._dropped[reason] += count

    def _send_run(self, sock: socket.socket, payloads: list[Payload], index: int) -> int:
        """Send ``payloads[index:]`` until one fails; returns the index of the first unsent.

        The fast path of ``send_many``: a tight loop, the first failure left to the caller's
        policy-aware slow path. (``sendmmsg`` through ctypes was measured against this loop,
        into a real server and into a bare reader: no reliable gain in throughput or sender
        CPU, because the kernel's per-datagram work and the 11-deep queue dominate.)
        """
        send = sock.send
        while index < len(payloads):
            try:
                send(payloads[index])
            except OSError:
                break
            index += 1
            self._sent += 1  # per datagram: statistics() stays exact while blocked
        return index

    # -- the buffer policy ------------------------------------------------------------------

    def _buffer(self, data: Payload) -> bool:
        """Queue ``data`` behind what is buffered (the caller already tried to send it)."""
        if len(self._queue) >= self.buffer_size:
            if self.overflow == "drop_newest":
                self._drop("overflow")
                return False
            self._queue.popleft()
            self._drop("overflow")
        self._queue.append(data)
        self._peak = max(self._peak, len(self._queue))
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
                self._drop("error")
                continue
            if outcome == SENT:
                self._queue.popleft()
            elif outcome == FULL:
                return FULL, sock
        return SENT, None

    def _discard_queue(self) -> None:
        if self._queue:
            self._drop("closed", len(self._queue))
            self._queue.clear()

    # -- requests ---------------------------------------------------------------------------

    def _reply_endpoint(self) -> _ReplyEndpoint:
        return _ReplyEndpoint(self._address)

    def _request_timed_out(self, timeout: float) -> RequestTimeoutError:
        self._request_timeouts += 1
        return RequestTimeoutError(f"no reply from {self.path} within {timeout:g}s")

    def _unavailable(self, timeout: float) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"no ugram server listens on {self.path} (waited {timeout:g}s)"
        )


def _check_options(
    codec: str,
    policy: str,
    timeout: float | None,
    buffer_size: int,
    overflow: str,
    max_datagram: int,
    backoff: float,
) -> None:
    """Raises ConfigError naming the option, the value and what is allowed."""
    checks = [
        (codec in get_args(ClientCodec), "codec", codec, "raw, json or msgpack"),
        (
            policy in get_args(Policy),
            "policy",
            policy,
            "block, block_with_timeout, buffer or drop",
        ),
        (overflow in get_args(Overflow), "overflow", overflow, "drop_oldest or drop_newest"),
        (buffer_size >= 1, "buffer_size", buffer_size, "an integer >= 1"),
        (max_datagram >= 1, "max_datagram", max_datagram, "an integer >= 1"),
        (backoff > 0, "backoff", backoff, "a number of seconds > 0"),
        (
            policy != "block_with_timeout" or (timeout is not None and timeout >= 0),
            "timeout",
            timeout,
            "a number of seconds >= 0 with policy block_with_timeout",
        ),
    ]
    for ok, name, value, allowed in checks:
        if not ok:
            raise ConfigError(f"client option {name}={value!r} is invalid: expected {allowed}")


class _ReplyEndpoint:
    """A private bound address for one request: ``reply.sock`` in a fresh directory of its
    own, connected to the server, so only the server's replies are received.

    Not an abstract name: any local user may bind one once it is free, so a server refuses
    to reply to those by default. Until the socket is connected, the directory is 0700:
    nobody can queue a forged reply. Connected, the kernel takes datagrams for it from the
    server's socket only, and the directory (0711) and socket (0622) let a server that runs
    as another, unprivileged user reach it.
    """

    def __init__(self, server: str | bytes) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        try:
            self._dir = tempfile.mkdtemp(prefix="ugram-", dir=_reply_parent())
            self.path = os.path.join(self._dir, "reply.sock")
            self.sock.bind(self.path)
        except BaseException:
            self.close()
            raise

    def connect(self) -> bool:
        """Connect to the server; False while no server listens.

        Raises:
            OSError: connecting failed for another reason than a missing server.
        """
        try:
            connect_to(self.sock, self.server)
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                return False
            raise
        assert self._dir is not None
        os.chmod(self.path, 0o622)
        os.chmod(self._dir, 0o711)
        return True

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _reply_parent() -> str:
    """Where request sockets are made: the temporary directory, resolved (a server refuses
    to reply through a symlink), or ``/tmp`` when that would make a path too long."""
    parent = os.path.realpath(tempfile.gettempdir())
    # "/ugram-" + 8 random characters + "/reply.sock" must fit in sun_path with its NUL
    return parent if len(os.fsencode(parent)) + 26 <= 107 else "/tmp"


class Client(_Core):
    """Sends datagrams to a ugram server (or any AF_UNIX datagram socket).

    ``send`` takes bytes (sent as they are) or, with ``codec="json"``/``"msgpack"``, any
    object msgspec can encode. What happens when the server's queue is full, or no server
    listens, is the ``policy``'s choice (see the module docstring); nothing is lost silently:
    every drop is counted in :meth:`statistics`.

    A Client may be shared by threads. Use it as a context manager, or call :meth:`close`:
    with the ``buffer`` policy, closing first waits for the buffer to drain.

    Example::

        with ugram.Client("/run/app.sock", codec="json", policy="buffer") as client:
            client.send({"event": "login", "user": 42})
    """

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
        super().__init__(
            path,
            codec=codec,
            policy=policy,
            timeout=timeout,
            buffer_size=buffer_size,
            overflow=overflow,
            max_datagram=max_datagram,
            wait_for_server=wait_for_server,
            backoff=backoff,
            backoff_max=backoff_max,
        )
        # A blocking socket lets `block` wait inside the kernel: one system call per datagram
        # even when the queue is full (EAGAIN + poll + retry would be three).
        self._blocking = policy == "block"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._poller = select.poll()
        self._flusher: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------

    def send(self, obj: object) -> bool:
        """Send one datagram, as the policy says when the server's queue is full or absent.

        Returns:
            True when it was sent (``buffer`` policy: sent or buffered); False when it was
            dropped (counted in ``statistics().dropped``).

        Raises:
            PayloadTooLargeError: larger than ``max_datagram`` (or the kernel's limit).
            TypeError: the object cannot be encoded with the codec.
            ServerUnavailableError: ``block`` policy with ``wait_for_server``, and no server.
            ClientClosedError: the client is closed.
            OSError: the kernel refused for another reason, e.g. PermissionError.
        """
        data = self.encode(obj)
        with self._lock:
            sock = self._sock
            if sock is not None and not self._queue:
                try:
                    sock.send(data)
                except OSError:
                    pass  # the slow path looks again and decides
                else:
                    self._sent += 1
                    return True
            if self.policy == "buffer":
                sent = self._offer(data)
                self._wake_flusher()
                return sent
            return self._deliver(data, self._deadline())

    def send_many(self, objs: Iterable[object]) -> int:
        """Send each object as one datagram, in order, each as ``send`` would.

        Payloads are encoded and checked in chunks of 1024 before any of the chunk is sent,
        so an oversized one raises with the chunks before it sent and none of its own.

        Returns:
            How many were sent (``buffer`` policy: sent or buffered); the others were dropped
            and counted.

        Raises:
            The same as :meth:`send`.
        """
        done = 0
        for chunk in _chunks(objs, CHUNK):
            payloads = [self.encode(obj) for obj in chunk]
            with self._lock:
                done += self._deliver_many(payloads)
        return done

    def _deliver_many(self, payloads: list[Payload]) -> int:
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
                sent += self._deliver(payloads[index], deadline)
                index += 1
        return sent

    def _deliver(self, data: Payload, deadline: float | None) -> bool:
        """Send with the policy's waiting (lock held); False when dropped."""
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
            self._wait(outcome, sock, deadline)

    def _wait(self, outcome: int, sock: socket.socket | None, deadline: float | None) -> None:
        limit = WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
        if outcome == FULL and sock is not None:
            self._poll_writable(min(limit, WAIT_SLICE))
        else:
            time.sleep(min(limit, self._until_retry()))

    def _poll_writable(self, timeout: float) -> None:
        self._poller.poll(int(timeout * 1000) + 1)

    def _connected(self, sock: socket.socket) -> None:
        self._poller = select.poll()
        self._poller.register(sock, select.POLLOUT)

    # -- the buffer policy's background thread ----------------------------------------------

    def _wake_flusher(self) -> None:
        if not self._queue:
            return
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"ugram-client {self.path}", daemon=True
            )
            self._flusher.start()
        self._changed.notify_all()

    def _flush_loop(self) -> None:
        with self._changed:
            while not self._closed:
                if not self._queue:
                    self._changed.notify_all()  # flush() waiters
                    self._changed.wait()
                    continue
                try:
                    outcome, sock = self._send_queued()
                except ClientClosedError:
                    return
                if outcome == SENT:
                    continue
                self._retries += 1
                if outcome == FULL and sock is not None:
                    self._lock.release()  # let send() queue more while we wait for room
                    try:
                        self._poll_writable(WAIT_SLICE)
                    finally:
                        self._lock.acquire()
                else:
                    self._changed.wait(self._until_retry())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the ``buffer`` policy's buffer is empty.

        Returns:
            True when it is empty, False when ``timeout`` seconds passed first.
        """
        with self._changed:
            self._changed.notify_all()
            return self._changed.wait_for(lambda: not self._queue or self._closed, timeout)

    # -- requests ---------------------------------------------------------------------------

    def request(self, obj: object, timeout: float = 5.0) -> bytes:
        """Send one datagram from a private bound address and return the handler's reply.

        The handler answers with ``dgram.reply(...)``. The policy does not apply: a request
        waits for room, and for a missing server, up to ``timeout`` in all.

        Returns:
            The reply's payload.

        Raises:
            RequestTimeoutError: no reply within ``timeout`` seconds.
            ServerUnavailableError: no server listened during the whole ``timeout``.
            PayloadTooLargeError, TypeError, ClientClosedError: as for :meth:`send`.
        """
        data = self.encode(obj)
        if self._closed:
            raise ClientClosedError(f"Client for {self.path} is closed")
        deadline = time.monotonic() + timeout
        endpoint = self._reply_endpoint()
        try:
            self._request_connect(endpoint, deadline, timeout)
            sock = endpoint.sock
            try:
                sock.settimeout(max(0.0, deadline - time.monotonic()))
                sock.send(data)
                with self._lock:
                    self._sent += 1
                sock.settimeout(max(0.0, deadline - time.monotonic()))
                reply = sock.recv(MAX_REPLY)
            except TimeoutError:
                with self._lock:
                    raise self._request_timed_out(timeout) from None
            with self._lock:
                self._replies += 1
            return reply
        finally:
            endpoint.close()

    def _request_connect(self, endpoint: _ReplyEndpoint, deadline: float, timeout: float) -> None:
        delay = self._backoff[0]
        while not endpoint.connect():
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._unavailable(timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 2, self._backoff[1])

    # -- closing ----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Close the client; with the ``buffer`` policy, first wait up to ``timeout`` seconds
        for the buffer to drain (what is left is dropped and counted as ``closed``).

        Idempotent; ``send`` raises :class:`ClientClosedError` afterwards.
        """
        if self._closed:
            return
        if self._queue:
            self.flush(timeout)
        with self._changed:
            self._discard_queue()
            self._closed = True
            self._disconnect()
            self._changed.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()


class AsyncClient(_Core):
    """The asyncio (and uvloop) form of :class:`Client`: it never blocks the event loop.

    The socket is non-blocking; when the server's queue is full, ``send`` awaits
    writability with ``loop.add_writer`` (``block`` and ``block_with_timeout``), and the
    ``buffer`` policy drains in a background task. Same options, statistics and errors as
    :class:`Client`. Use it from one event loop; ``async with`` or ``await close()``.

    Example::

        async with ugram.AsyncClient("/run/app.sock", codec="json") as client:
            await client.send({"event": "login", "user": 42})
    """

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
        """Create a client; it connects on first use. The arguments are :class:`Client`'s.

        Raises:
            ConfigError: an option is invalid.
        """
        super().__init__(
            path,
            codec=codec,
            policy=policy,
            timeout=timeout,
            buffer_size=buffer_size,
            overflow=overflow,
            max_datagram=max_datagram,
            wait_for_server=wait_for_server,
            backoff=backoff,
            backoff_max=backoff_max,
        )
        self._writable: asyncio.Future[None] | None = None
        self._writer: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, obj: object) -> bool:
        """Send one datagram; waits (without blocking the loop) as the policy says.

        Returns:
            True when sent (``buffer``: sent or buffered), False when dropped and counted.

        Raises:
            The same as :meth:`Client.send`.
        """
        data = self.encode(obj)
        sock = self._sock
        if sock is not None and not self._queue:
            try:
                sock.send(data)
            except OSError:
                pass  # the slow path looks again and decides
            else:
                self._sent += 1
                return True
        if self.policy == "buffer":
            sent = self._offer(data)
            self._wake_flusher()
            return sent
        return await self._deliver(data, self._deadline())

    async def send_many(self, objs: Iterable[object]) -> int:
        """Send each object as one datagram, in order, as :meth:`Client.send_many` does.

        Returns:
            How many were sent (``buffer``: sent or buffered).

        Raises:
            The same as :meth:`Client.send`.
        """
        done = 0
        for chunk in _chunks(objs, CHUNK):
            payloads = [self.encode(obj) for obj in chunk]
            if self.policy == "buffer":
                done += sum(self._offer(data) for data in payloads)
                self._wake_flusher()
                continue
            deadline = self._deadline()
            index = 0
            while index < len(payloads):
                if self._sock is not None:
                    start, index = index, self._send_run(self._sock, payloads, index)
                    done += index - start
                if index < len(payloads):
                    done += await self._deliver(payloads[index], deadline)
                    index += 1
        return done

    async def _deliver(self, data: Payload, deadline: float | None) -> bool:
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
            limit = WAIT_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            if outcome == FULL and sock is not None:
                await self._wait_writable(sock, min(limit, WAIT_SLICE))
            else:
                await asyncio.sleep(min(limit, self._until_retry()))

    async def _wait_writable(self, sock: socket.socket, limit: float) -> None:
        """Wait until the server's queue has room, at most ``limit`` seconds: one writer per
        socket, shared by every task waiting on it."""
        future = self._writable
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._writable = loop.create_future()
            self._writer = (loop, sock.fileno())
            loop.add_writer(sock.fileno(), self._release_writer)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.shield(future)

    def _release_writer(self) -> None:
        if self._writer is not None:
            loop, fd = self._writer
            self._writer = None
            loop.remove_writer(fd)
        future, self._writable = self._writable, None
        if future is not None and not future.done():
            future.set_result(None)

    def _disconnect(self) -> None:
        self._release_writer()  # before the fd number can be reused
        super()._disconnect()

    # -- the buffer policy's background task ------------------------------------------------

    def _wake_flusher(self) -> None:
        if self._queue and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while self._queue and not self._closed:
            try:
                outcome, sock = self._send_queued()
            except ClientClosedError:
                return
            if outcome == SENT:
                return
            self._retries += 1
            if outcome == FULL and sock is not None:
                await self._wait_writable(sock, WAIT_SLICE)
            else:
                await asyncio.sleep(self._until_retry())

    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the ``buffer`` policy's buffer is empty.

        Returns:
            True when it is empty, False when ``timeout`` seconds passed first.
        """
        try:
            async with asyncio.timeout(timeout):
                while self._queue and not self._closed:
                    self._wake_flusher()
                    assert self._flusher is not None
                    await asyncio.shield(self._flusher)
        except TimeoutError:
            return False
        return not self._queue

    # -- requests ---------------------------------------------------------------------------

    async def request(self, obj: object, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        """Send one datagram from a private bound address and await the handler's reply.

        Returns:
            The reply's payload.

        Raises:
            The same as :meth:`Client.request`.
        """
        data = self.encode(obj)
        if self._closed:
            raise ClientClosedError(f"AsyncClient for {self.path} is closed")
        loop = asyncio.get_running_loop()
        endpoint = self._reply_endpoint()
        endpoint.sock.setblocking(False)
        connected = False
        try:
            async with asyncio.timeout(timeout):
                delay = self._backoff[0]
                while not endpoint.connect():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff[1])
                connected = True
                await loop.sock_sendall(endpoint.sock, data)
                self._sent += 1
                reply = await loop.sock_recv(endpoint.sock, MAX_REPLY)
        except TimeoutError:
            raise (
                self._request_timed_out(timeout) if connected else self._unavailable(timeout)
            ) from None
        finally:
            endpoint.close()
        self._replies += 1
        return reply

    # -- closing ----------------------------------------------------------------------------

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Close the client; with the ``buffer`` policy, first wait up to ``timeout`` seconds
        for the buffer to drain (what is left is dropped and counted as ``closed``).

        Idempotent; ``send`` raises :class:`ClientClosedError` afterwards.
        """
        if self._closed:
            return
        if self._queue:
            await self.flush(timeout)
        self._discard_queue()
        self._closed = True
        self._disconnect()
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher


def _chunks(objs: Iterable[object], size: int) -> Iterator[list[object]]:
    chunk: list[object] = []
    for obj in objs:
        chunk.append(obj)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

"""The blocking transport: :class:`Client` waits with ``poll`` and ``sleep``, under a lock."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from ..errors import ClientClosedError
from .core import ClientCore, Steps, T, Wait
from .endpoint import MAX_REPLY
from .options import Payload


class Client(ClientCore):
    """Sends datagrams to a ugram server (or any AF_UNIX datagram socket).

    ``send`` takes bytes (sent as they are) or, with ``codec="json"``/``"msgpack"``, any
    object msgspec can encode. What happens when the server's queue is full, or no server
    listens, is the ``policy``'s choice (see :mod:`ugram.client`); nothing is lost silently:
    every drop is counted in :meth:`statistics`.

    A Client may be shared by threads. Use it as a context manager, or call :meth:`close`:
    with the ``buffer`` policy, closing first waits for the buffer to drain.

    Example::

        with ugram.Client("/run/app.sock", codec="json", policy="buffer") as client:
            client.send({"event": "login", "user": 42})
    """

    def _setup(self) -> None:
        # A blocking socket lets `block` wait inside the kernel: one system call per datagram
        # even when the queue is full (EAGAIN + poll + retry would be three).
        self._blocking = self.policy == "block"
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
            return self._send_now(data) or self._drive(self._send_steps(data))

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
        for payloads in self._encoded_chunks(objs):
            with self._lock:
                done += self._drive(self._many_steps(payloads))
        return done

    def _drive(self, steps: Steps[T]) -> T:
        """Run a decision's steps to its result, waiting in this thread as each says."""
        while True:
            try:
                wait = next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
            if wait.sock is None:
                time.sleep(wait.seconds)
            else:
                self._poll_writable(wait.seconds)

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
                    wait = self._drain()
                except ClientClosedError:
                    return
                if wait is not None:
                    self._flush_wait(wait)

    def _flush_wait(self, wait: Wait) -> None:
        if wait.sock is None:
            self._changed.wait(wait.seconds)  # a close() wakes it
            return
        self._lock.release()  # let send() queue more while we wait for room
        try:
            self._poll_writable(wait.seconds)
        finally:
            self._lock.acquire()

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
            self._drive(self._reply_connect(endpoint, deadline, timeout))
            return self._exchange(endpoint.sock, data, deadline, timeout)
        finally:
            endpoint.close()

    def _exchange(
        self, sock: socket.socket, data: Payload, deadline: float, timeout: float
    ) -> bytes:
        """Send the request on its connected endpoint and receive the reply, by ``deadline``.

        Raises:
            RequestTimeoutError: the deadline passed first.
        """
        try:
            sock.settimeout(max(0.0, deadline - time.monotonic()))
            self._send_request(sock, data)
            with self._lock:
                self._counts.sent += 1
            sock.settimeout(max(0.0, deadline - time.monotonic()))
            reply = sock.recv(MAX_REPLY)
        except TimeoutError:
            with self._lock:
                raise self._request_timed_out(timeout) from None
        with self._lock:
            self._counts.replies += 1
        return reply

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
            self._shut()
            self._changed.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()

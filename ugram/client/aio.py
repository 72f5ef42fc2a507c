"""The asyncio transport: :class:`AsyncClient` waits by awaiting, never blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from ..errors import ClientClosedError
from .core import ClientCore, Steps, T, Wait
from .endpoint import MAX_REPLY


class AsyncClient(ClientCore):
    """The asyncio (and uvloop) form of :class:`~ugram.Client`: it never blocks the event loop.

    The socket is non-blocking; when the server's queue is full, ``send`` awaits
    writability with ``loop.add_writer`` (``block`` and ``block_with_timeout``), and the
    ``buffer`` policy drains in a background task. Same options, statistics and errors as
    :class:`~ugram.Client`. Use it from one event loop; ``async with`` or ``await close()``.

    Example::

        async with ugram.AsyncClient("/run/app.sock", codec="json") as client:
            await client.send({"event": "login", "user": 42})
    """

    def _setup(self) -> None:
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
        return self._send_now(data) or await self._drive(self._send_steps(data))

    async def send_many(self, objs: Iterable[object]) -> int:
        """Send each object as one datagram, in order, as :meth:`Client.send_many` does.

        Returns:
            How many were sent (``buffer``: sent or buffered).

        Raises:
            The same as :meth:`Client.send`.
        """
        done = 0
        for payloads in self._encoded_chunks(objs):
            done += await self._drive(self._many_steps(payloads))
        return done

    async def _drive(self, steps: Steps[T]) -> T:
        """Run a decision's steps to its result, awaiting as each says."""
        while True:
            try:
                wait = next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
            await self._wait(wait)

    async def _wait(self, wait: Wait) -> None:
        if wait.sock is None:
            await asyncio.sleep(wait.seconds)
        else:
            await self._wait_writable(wait.sock, wait.seconds)

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
                wait = self._drain()
            except ClientClosedError:
                return
            if wait is None:
                return
            await self._wait(wait)

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
                deadline = time.monotonic() + timeout
                await self._drive(self._reply_connect(endpoint, deadline, timeout))
                connected = True
                with self.refusing_too_large(endpoint.sock, data):
                    await loop.sock_sendall(endpoint.sock, data)
                self._counts.sent += 1
                reply = await loop.sock_recv(endpoint.sock, MAX_REPLY)
        except TimeoutError:
            raise (
                self._request_timed_out(timeout) if connected else self._unavailable(timeout)
            ) from None
        finally:
            endpoint.close()
        self._counts.replies += 1
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
        self._shut()
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

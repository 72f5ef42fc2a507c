"""What the supervisor holds for the server's whole life: the socket, the rings, the counters.

Because the supervisor keeps the bound socket and every ring, a dead receiver is replaced
on the same socket (the kernel keeps queued datagrams meanwhile) and a dead worker's
replacement resumes from the last acknowledged record. Everything is created before any
child starts and released once the last one is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

from .. import handler_stats, portable
from ..config import Config
from ..errors import SocketError, UnsupportedPlatformError
from ..receiver import mmsg
from ..receiver.admission import ANCILLARY_SIZE
from ..ring import Ring
from ..shm import create_shared_fd
from ..sockets import (
    BoundSocket,
    adopt_systemd,
    bind_socket,
    sender_limit_warning,
    size_receive_buffer,
    unlink_if_ours,
)
from ..spec import ChildSpec
from ..stats import RECEIVER_BLOCK, Stats, standby_block, supervisor_block, worker_block
from ..wake import make_wake, signal_wake

log = logging.getLogger("ugram.supervisor")


@dataclass(eq=False)
class Resources:
    """The bound socket and the shared memory every child is started with.

    Attributes:
        bound: the server socket.
        rings: one ring per worker slot SIGTTIN may use (an unused one costs only its
            control page: shared memory is allocated when touched).
        wakes: per ring, the (read, write) fds the receiver wakes its worker through.
        space: the (read, write) fds workers tell a blocked receiver of freed space through.
        stats: the shared counters: a block per worker slot, the receiver, the
            supervisor and a SIGHUP standby.
        scratch: the receiver's recvmmsg area (-1: none), held here so that a receiver's
            successor can place what it had read.
        control: the supervisor's own counter block (active workers, drain flag, ...).
        handlers: the counters handlers declare (:mod:`ugram.handler_stats`), a block per
            worker slot.
        exports: with ``metrics``, one export ring per worker slot that the worker produces
            into and the supervisor consumes (:mod:`ugram.builtin.export`); else empty.
        server_id: drawn once per start; the first part of every ``Datagram.id``.
    """

    bound: BoundSocket
    rings: list[Ring]
    wakes: list[tuple[int, int]]
    space: tuple[int, int]
    stats: Stats
    scratch: int
    control: memoryview
    handlers: handler_stats.Table
    exports: list[Ring] = field(default_factory=list)
    server_id: str = field(default_factory=lambda: secrets.token_hex(8))
    released: bool = False

    @classmethod
    def create(cls, config: Config, bound: BoundSocket) -> Resources:
        """Create the rings and the counters for ``config``, around ``bound``.

        Raises:
            OSError: shared memory could not be created. Everything made, ``bound``
                included, is released first.
        """
        slots = config.worker_slots
        rings: list[Ring] = []
        exports: list[Ring] = []
        wakes: list[tuple[int, int]] = []
        space, stats, scratch, handlers = (-1, -1), None, -1, None
        try:
            rings += (Ring.create(config.ring_size) for _ in range(slots))
            wakes += (make_wake() for _ in range(slots))
            space = make_wake()
            stats = Stats.create(slots + 3)  # + receiver, supervisor, standby
            scratch = _create_scratch(config)
            handlers = handler_stats.Table.create(slots)
            if config.metrics:  # the supervisor consumes them only where it serves /metrics
                exports += (Ring.create(config.ring_size) for _ in range(slots))
        except BaseException:
            _release(bound, rings + exports, [*wakes, space], stats, scratch, handlers)
            raise
        control = stats.block(supervisor_block(slots))
        return cls(bound, rings, wakes, space, stats, scratch, control, handlers, exports)

    @property
    def standby_at(self) -> int:
        """The stats block of a booting SIGHUP replacement."""
        return standby_block(len(self.rings))

    def worker(self, index: int) -> memoryview:
        """The counter block of worker slot ``index``."""
        return self.stats.block(worker_block(index))

    def receiver(self) -> memoryview:
        """The receiver's counter block."""
        return self.stats.block(RECEIVER_BLOCK)

    def spec(self, config: Config, role: str, index: int) -> ChildSpec:
        """What the receiver (``role`` ``"receiver"``) or worker ``index`` is started with."""
        if role == "receiver":
            rings = [ring.fd for ring in self.rings]
            wakes = [write for _, write in self.wakes]
            block, space = RECEIVER_BLOCK, self.space[0]
        else:
            rings, wakes = [self.rings[index].fd], [self.wakes[index][0]]
            block, space = worker_block(index), self.space[1]
        return ChildSpec(
            role=role,
            index=index,
            config=config,
            socket_fd=self.bound.sock.fileno(),
            ring_fds=rings,
            wake_fds=wakes,
            space_fd=space,
            stats_fd=self.stats.fd,
            stats_block=block,
            control_block=supervisor_block(len(self.rings)),
            scratch_fd=self.scratch if role == "receiver" else -1,
            server_id=self.server_id,
            handler_stats_fd=self.handlers.fd if role == "worker" else -1,
            export_fd=self.exports[index].fd if role == "worker" and self.exports else -1,
        )

    def close_rings(self) -> None:
        """Close every ring to new records and wake its worker to finish it."""
        for ring, (_, write_fd) in zip(self.rings, self.wakes, strict=True):
            ring.close_producer()
            signal_wake(write_fd)

    def reopen_rings(self) -> None:
        """Open every ring to new records again (a new receiver takes over)."""
        for ring in self.rings:
            ring.reopen()

    def release(self) -> None:
        """Unlink the socket file (if still ours), close it, and free the shared memory."""
        self.released = True
        self.control.release()
        _release(
            self.bound,
            self.rings + self.exports,
            [*self.wakes, self.space],
            self.stats,
            self.scratch,
            self.handlers,
        )


def _release(
    bound: BoundSocket,
    rings: list[Ring],
    wakes: list[tuple[int, int]],
    stats: Stats | None,
    scratch: int,
    handlers: handler_stats.Table | None,
) -> None:
    unlink_if_ours(bound)
    bound.sock.close()
    for ring in rings:
        ring.close()
        os.close(ring.fd)
    for read_fd, write_fd in set(wakes):
        for fd in {read_fd, write_fd} - {-1}:
            os.close(fd)
    if stats is not None:
        stats.close()
        os.close(stats.fd)
    if scratch >= 0:
        os.close(scratch)
    if handlers is not None:
        handlers.close()
        os.close(handlers.fd)


def bind(config: Config) -> BoundSocket:
    """The server socket: adopted from systemd, or bound as ``config`` says.

    Raises:
        SocketError: the socket cannot be bound, or (macOS) its receive buffer cannot hold
            a datagram of max_datagram bytes.
    """
    creds = config.wants_credentials
    bound = adopt_systemd(credentials=creds) or bind_socket(
        config.socket,
        config.file_mode,
        config.gid,
        mkdir=config.mkdir,
        credentials=creds,
        allow_unsafe=config.allow_unsafe_dir,
    )
    if bound.identity is None and (config.mode != "0660" or config.gid != -1):
        log.warning("mode and group do not apply to %s: %s", bound.path, _no_mode_why(bound))
    try:
        size_receive_buffer(bound.sock, config.max_datagram)
    except SocketError:
        unlink_if_ours(bound)
        bound.sock.close()
        raise
    warning = sender_limit_warning(config.max_datagram)
    if warning is not None:
        log.warning("%s", warning)
    return bound


def shut_reading(bound: BoundSocket) -> None:
    """New senders get ENOENT from now on, and connected ones EPIPE: what is queued stays
    readable. (Not on a socket systemd lent us: the shutdown would outlive us there.)"""
    unlink_if_ours(bound)
    if not bound.adopted:
        with contextlib.suppress(OSError):
            bound.sock.shutdown(socket.SHUT_RD)


def _create_scratch(config: Config) -> int:
    """The receiver's recvmmsg area, held here so a receiver's successor can recover it."""
    if config.receive_batch <= 1 or not mmsg.available():
        return -1
    control = ANCILLARY_SIZE if config.wants_credentials else 0
    return create_shared_fd(mmsg.scratch_size(config.max_datagram, control, config.receive_batch))


def check_platform(config: Config) -> None:
    """Fail at start-up, not later, when the platform lacks a feature the config needs.

    Raises:
        UnsupportedPlatformError: credentials where the kernel gives none (macOS, the
            portable profile; a validated config refuses them already).
    """
    here = portable.current()
    if config.wants_credentials and not here.has_credentials:
        raise UnsupportedPlatformError(
            "sender credentials (credentials, allow_uid, allow_gid, rate_limit): "
            + here.unavailable(portable.NO_CREDENTIALS)
        )


def _no_mode_why(bound: BoundSocket) -> str:
    """Why ``mode`` and ``group`` were not applied to a socket without a file of ours."""
    if bound.adopted and not bound.is_abstract:
        return (
            "the socket is systemd's: its mode and group come from the unit "
            "(SocketMode=, SocketGroup=)"
        )
    if bound.adopted:
        return "the socket is systemd's, and an abstract socket has no file"
    return "an abstract socket has no file"

"""What the supervisor tells a child process it starts: its role, config and inherited fds."""

from __future__ import annotations

import os
import sys

import msgspec

from .config import Config


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a receiver or worker needs; passed as JSON on its command line.

    Attributes:
        role: ``"receiver"`` or ``"worker"``.
        index: the worker's slot (0-based); 0 for the receiver.
        socket_fd: the bound server socket (receiver reads it, workers reply through it).
        ring_fds: shared-memory rings (all for the receiver, one for a worker).
        wake_fds: per-ring wake-up channels written by the receiver, read by the worker.
        space_fd: the channel workers write to tell a blocked receiver that space was freed.
        stats_fd: the shared counter table.
        stats_block: this process's block in the table.
        control_block: the supervisor's block (active worker count, ...).
        scratch_fd: the receiver's shared recvmmsg area (-1: none, one datagram per read).
        standby_block: a SIGHUP replacement's block while it boots (-1: an ordinary worker).
            It imports the handler and runs ``setup()`` reporting there, then waits for the
            supervisor to order it to take over ``stats_block`` and its ring (the worker it
            replaces has exited by then) or to exit.
        server_id: drawn at random once per server start; names the server's records
            (:attr:`ugram.Datagram.id`).
        handler_stats_fd: the table of counters handlers define (:mod:`ugram.handler_stats`;
            -1: none). A worker writes the block of its slot.
        export_fd: a worker slot's export ring (-1: none): the worker publishes there what
            the supervisor exposes on ``/metrics`` for it (:mod:`ugram.builtin.export`).
    """

    role: str
    index: int
    config: Config
    socket_fd: int
    ring_fds: list[int]
    wake_fds: list[int]
    space_fd: int
    stats_fd: int
    stats_block: int
    control_block: int
    scratch_fd: int = -1
    standby_block: int = -1
    server_id: str = ""
    handler_stats_fd: int = -1
    export_fd: int = -1

    def fds(self) -> list[int]:
        """Every fd the child must inherit."""
        fds = {self.socket_fd, *self.ring_fds, *self.wake_fds, self.space_fd, self.stats_fd}
        optional = (self.scratch_fd, self.handler_stats_fd, self.export_fd)
        return sorted(fds | {fd for fd in optional if fd >= 0})

    def argv(self) -> list[str]:
        """The command line that starts this child."""
        module = "ugram.receiver" if self.role == "receiver" else "ugram.workers"
        return [sys.executable, "-m", module, msgspec.json.encode(self).decode()]


def spec_from_argv(argv: list[str]) -> ChildSpec:
    """Decode the spec a child was started with.

    Raises:
        SystemExit: the command line holds no valid spec (the module was run by hand).
    """
    if len(argv) != 2:
        raise SystemExit(f"{argv[0]}: internal entry point; run `ugram serve` instead")
    return msgspec.json.decode(argv[1].encode(), type=ChildSpec)


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (even one we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parent_alive(original_ppid: int) -> bool:
    """True while the process that started us is still our parent."""
    return os.getppid() == original_ppid

"""The whole ugram exception hierarchy and the process exit codes.

Importable from anywhere without cycles: this module imports nothing from ugram.
"""

from __future__ import annotations

# Exit codes, distinct so that scripts and service managers can tell the causes apart and a
# supervisor never respawns a worker that cannot possibly boot (gunicorn's convention).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_WORKER_BOOT = 3
EXIT_HANDLER_IMPORT = 4
EXIT_UNHANDLED = 5


class UgramError(Exception):
    """Base class for all ugram errors."""


class ConfigError(UgramError, ValueError):
    """A configuration value is invalid; the message names the field, value and what is allowed."""


class HandlerImportError(UgramError, ImportError):
    """The handler named by ``module:attr`` cannot be imported or is not usable."""


class SocketError(UgramError, OSError):
    """The socket path cannot be bound, adopted or cleaned up safely."""


class SocketInUseError(SocketError):
    """Another live server already receives on the socket path."""


class NotASocketError(SocketError):
    """Something that is not a socket sits at the socket path; ugram refuses to touch it."""


class PathTooLongError(SocketError):
    """The socket path is longer than AF_UNIX allows (107 bytes on Linux, 103 on macOS)."""


class UnsafePathError(SocketError):
    """A path ugram would create or write is not safe: an untrusted symlink, a directory
    other users may write, or a file another user owns (see ``ugram.safefs``)."""


class UnsupportedPlatformError(UgramError, RuntimeError):
    """The platform lacks something ugram needs (memory ordering, memfd, SO_PASSCRED, ...)."""


class RingFullError(UgramError, BufferError):
    """A record does not fit in a ring even when it is empty (ring too small for max_datagram)."""


class RingCorruptError(UgramError, ValueError):
    """A shared-memory ring holds what no producer and consumer can have written (an
    impossible head or tail, a record length running past its end, a header that is not
    ugram's). The ring is marked corrupt, emptied by the supervisor and used again."""


class ReplyError(UgramError, OSError):
    """A reply could not be sent to the datagram's sender (unbound sender, queue full, gone)."""


class ShutdownTimeoutError(UgramError, TimeoutError):
    """Graceful shutdown ran past its timeout; ``unhandled`` records were left unhandled."""

    def __init__(self, unhandled: int, timeout: float) -> None:
        self.unhandled = unhandled
        self.timeout = timeout
        super().__init__(
            f"graceful shutdown timed out after {timeout:g}s: {unhandled} record(s) left unhandled"
        )


class ServerFailedError(UgramError, RuntimeError):
    """The server could not start serving (the handler cannot be imported, its ``setup()``
    keeps failing) and has stopped; ``exit_code`` is the code ``ugram serve`` exits with."""

    def __init__(self, exit_code: int, reason: str) -> None:
        self.exit_code = exit_code
        super().__init__(f"{reason} (exit code {exit_code})")


class ChildCrashedError(UgramError, RuntimeError):
    """A receiver or worker process exited unexpectedly (it is restarted)."""


class HandlerError(UgramError, RuntimeError):
    """The handler raised on one or more records (counted; the worker goes on)."""


class PayloadTooLargeError(UgramError, ValueError):
    """A client payload is larger than its ``max_datagram`` or the kernel's limit; not sent.

    Attributes:
        size: the payload's bytes.
        limit: the client's ``max_datagram`` it exceeds; None when the kernel refused it.
        kernel_limit: the largest datagram the socket's send buffer lets through, when the
            kernel refused it (None when unknown, or not the kernel's refusal).
    """

    def __init__(
        self,
        size: int,
        limit: int | None,
        *,
        sndbuf: tuple[int, int] | None = None,
        sysctls: tuple[str, str] = ("net.core.wmem_default", "net.core.wmem_max"),
    ) -> None:
        """``sndbuf``: the socket's SO_SNDBUF and the datagram size it allows; ``sysctls``:
        the system's default send buffer's setting and its ceiling's."""
        self.size = size
        self.limit = limit
        self.kernel_limit = sndbuf[1] if sndbuf else None
        if limit is not None:
            message = (
                f"payload of {size} bytes is larger than max_datagram={limit}; the server "
                "would reject it (raise max_datagram on both sides, or send less)"
            )
        elif sndbuf is None:
            message = (
                f"the kernel refused a {size}-byte datagram (EMSGSIZE): it is larger than the "
                f"socket's send buffer allows; send less, or raise {sysctls[0]}"
            )
        else:
            message = (
                f"the kernel refused a {size}-byte datagram (EMSGSIZE): this socket's send "
                f"buffer (SO_SNDBUF {sndbuf[0]} bytes) takes datagrams of at most {sndbuf[1]} "
                f"bytes; send less, or raise {sysctls[1]} (the most SO_SNDBUF a sender may "
                f"set; ugram.Client asks for max_datagram) or {sysctls[0]} (every sender's "
                "default)"
            )
        super().__init__(message)


class ServerUnavailableError(UgramError, ConnectionError):
    """No server listens on the client's path and the client was told not to wait any longer."""


class RequestTimeoutError(UgramError, TimeoutError):
    """``request()`` got no reply within its timeout."""


class ClientClosedError(UgramError, RuntimeError):
    """A client was used after ``close()``."""

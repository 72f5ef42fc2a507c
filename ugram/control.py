"""The control socket behind ``ugram stats``, and ``ugram stats`` itself.

The supervisor listens on an AF_UNIX stream socket next to the server socket
(``<socket>.ctl``, or ``@name.ctl`` for an abstract name), with the server socket's mode and
group, so whoever may send datagrams may also read the counters. Each connection gets one
JSON :class:`~ugram.observe.Report` and is closed: no request, no state.

The file gets the same care as the server socket: created with no wider permissions than
asked, a stale one replaced, anything that is not a socket refused, and only our own inode
removed at exit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

import msgspec

from .errors import PathTooLongError, SocketError, SocketInUseError, UgramError
from .safefs import owner_name
from .sockets import MAX_PATH_BYTES, BoundSocket, bind_path, refuse_rights, unlink_if_ours
from .stats import REJECT_REASONS

if TYPE_CHECKING:
    from .config import Config
    from .observe import Report

log = logging.getLogger("ugram.control")

CONTROL_SUFFIX = ".ctl"
CLIENT_TIMEOUT = 5.0


def control_path(socket_path: str) -> str:
    """Where the control socket of the server on ``socket_path`` lives."""
    if socket_path.startswith("@"):
        return socket_path + CONTROL_SUFFIX
    return os.path.abspath(socket_path) + CONTROL_SUFFIX


def _address(path: str) -> str | bytes:
    return b"\0" + path[1:].encode() if path.startswith("@") else path


# -- binding ----------------------------------------------------------------------------------


def bind_stream_socket(
    path: str, mode: int, gid: int = -1, *, allow_unsafe: bool = False
) -> BoundSocket:
    """Bind and listen on an AF_UNIX stream socket at ``path`` (or ``@name``).

    Like the server socket (:func:`ugram.sockets.bind_path`): created with exactly ``mode``
    and ``gid`` in a private directory and linked into place, a stale socket of ours
    replaced, anything else refused. Clients may not pass descriptors, where the kernel can
    refuse them (:func:`ugram.sockets.refuse_rights`).

    Raises:
        SocketInUseError: another process listens on the path (or holds an abstract name).
        UnsafePathError: the directory is unsafe, or a component an untrusted symlink.
        SocketError: the path is too long, not a socket, or cannot be bound.
    """
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise PathTooLongError(f"{path} is longer than AF_UNIX allows ({MAX_PATH_BYTES} bytes)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Connections inherit it: a client cannot leave descriptors whose close would block.
        refuse_rights(sock)
        identity = None
        if path.startswith("@"):
            _bind_abstract_stream(sock, path)
        else:
            path = os.path.abspath(path)
            identity = bind_path(sock, path, mode, gid, allow_unsafe=allow_unsafe)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        if isinstance(exc, SocketError):
            raise
        raise SocketError(f"cannot bind {path}: {exc.strerror}") from None
    return BoundSocket(sock, path, identity)


def _bind_abstract_stream(sock: socket.socket, path: str) -> None:
    try:
        sock.bind(_address(path))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SocketInUseError(f"{path} is already in use by another process") from None
        raise


# -- the server side ---------------------------------------------------------------------------


class _Server(socketserver.UnixStreamServer):
    answer: Callable[[], bytes]


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.request.settimeout(CLIENT_TIMEOUT)  # a client that does not read cannot wedge us
        try:
            self.request.sendall(self.server.answer())
        except Exception:
            log.exception("control socket: could not answer a client")


class ControlServer:
    """Answers every connection on the control socket with one JSON report."""

    def __init__(self, bound: BoundSocket, answer: Callable[[], bytes]) -> None:
        """Serve ``answer()`` on the listening socket in ``bound`` (owned from now on)."""
        self.bound = bound
        self._server = _Server(bound.path, _Handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = bound.sock
        self._server.answer = answer
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="ugram-control", daemon=True
        )

    @classmethod
    def bind_for(
        cls, socket_path: str, answer: Callable[[], bytes], config: Config
    ) -> ControlServer | None:
        """Bind ``<socket_path>.ctl``; return None when its path is too long.

        Raises:
            SocketError: the path is held by another process (a squatter would otherwise
                answer ``ugram stats`` in our name), is not a socket, or is unsafe. The
                operator can turn the control socket off (``control = false``).
        """
        if not socket_path:
            return None
        path = control_path(socket_path)
        try:
            bound = bind_stream_socket(
                path, config.file_mode, config.gid, allow_unsafe=config.allow_unsafe_dir
            )
        except PathTooLongError as exc:
            log.warning("no control socket (`ugram stats` will not work): %s", exc)
            return None
        except SocketError as exc:
            raise type(exc)(
                f"cannot serve the control socket: {exc} (stop what holds it, or run "
                "without one: --control=false)"
            ) from None
        return cls(bound, answer)

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving, close the socket, remove its file if it is still ours."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        unlink_if_ours(self.bound)


# -- the client side: `ugram stats` ------------------------------------------------------------


def fetch(socket_path: str) -> Report:
    """Read one report from the server on ``socket_path`` (its server socket, not .ctl).

    Raises:
        UgramError: no server answers on the control socket, or the answer is not a report.
    """
    from .observe import Report

    path = control_path(socket_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        try:
            sock.connect(_address(path))
            _check_peer(sock, socket_path, path)
            data = b"".join(iter(lambda: sock.recv(65536), b""))
        except (FileNotFoundError, ConnectionRefusedError):
            raise UgramError(
                f"no ugram server answers on {path}: is one running on {socket_path} "
                "(with control enabled)?"
            ) from None
        except OSError as exc:
            raise UgramError(f"cannot read {path}: {exc}") from None
    try:
        return msgspec.json.decode(data, type=Report)
    except msgspec.DecodeError as exc:
        raise UgramError(f"{path} answered something that is not a ugram report: {exc}") from None


def _check_peer(sock: socket.socket, socket_path: str, path: str) -> None:
    """Refuse a control socket served by someone other than the server socket's owner.

    Another user could bind ``<socket>.ctl`` first and answer with a forged report. The
    peer's uid (SO_PEERCRED, from the kernel) must be the owner of the server socket file;
    for an abstract name (no owner) or a missing file, root or the user running ``ugram
    stats``.

    Raises:
        UgramError: the peer is someone else.
    """
    if not hasattr(socket, "SO_PEERCRED"):
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    expected, owner = {0, os.geteuid()}, "root or you"
    if not socket_path.startswith("@"):
        with contextlib.suppress(FileNotFoundError):
            file_owner = os.lstat(os.path.abspath(socket_path)).st_uid
            expected, owner = {file_owner}, owner_name(file_owner)
    if uid not in expected:
        raise UgramError(
            f"{path} is served by {owner_name(uid)}, not by the server's owner ({owner}): "
            "refusing its report (another user may have taken the control socket's name)"
        )


def stats_command(
    socket_path: str,
    *,
    as_json: bool = False,
    watch: bool = False,
    interval: float = 1.0,
    count: int = 0,
    out: TextIO | None = None,
) -> int:
    """``ugram stats``: print the counters with per-second rates (two samples).

    Args:
        socket_path: the server's socket path (or ``@name``).
        as_json: print one report as JSON instead (no rates, no waiting).
        watch: refresh every ``interval`` seconds until interrupted (or ``count`` frames).
        interval: seconds between the two samples a rate is computed from.
        count: with ``watch``, stop after this many frames (0: never).
        out: where to print (default: stdout).

    Raises:
        UgramError: no server answers.
    """
    stream = out or sys.stdout
    if as_json:
        stream.write(msgspec.json.encode(fetch(socket_path)).decode() + "\n")
        return 0
    frames = 0
    clear = watch and stream.isatty()
    with contextlib.suppress(KeyboardInterrupt):
        for before, after in _samples(socket_path, interval):
            stream.write(("\x1b[H\x1b[2J" if clear else "") + render(before, after) + "\n")
            stream.flush()
            frames += 1
            if not watch or frames == count:
                break
    return 0


def _samples(socket_path: str, interval: float) -> Iterator[tuple[Report, Report]]:
    before = fetch(socket_path)
    while True:
        time.sleep(interval)
        after = fetch(socket_path)
        yield before, after
        before = after


# -- rendering --------------------------------------------------------------------------------


def _rows(report: Report) -> dict[str, float]:
    t = report.totals
    rows: dict[str, float] = {
        "received": t.received,
        "bytes": t.bytes,
        "handled": t.handled,
        "handler_errors": t.handler_errors,
        "rejected": t.rejected,
    }
    rows.update({f"  {reason}": getattr(t, reason) for reason in REJECT_REASONS})
    for name in ("replayed", "quarantined", "reply_errors", "blocked_seconds", "restarts"):
        rows[name] = getattr(t, name)
    for name in ("lost", "possibly_lost", "worker_timeouts", "recycled", "boot_failures"):
        rows[name] = getattr(t, name)
    rows["fds_closed"] = t.fds_closed
    return rows


def render(before: Report, after: Report) -> str:
    """Render the counters of ``after`` with per-second rates since ``before``."""
    elapsed = max(after.time - before.time, 1e-9)
    lines = [_headline(after), "", f"{'counter':<18}{'total':>16}{'per second':>14}"]
    old = _rows(before)
    for name, value in _rows(after).items():
        rate = (value - old[name]) / elapsed
        lines.append(f"{name:<18}{_number(value):>16}{rate:>14,.1f}")
    lines += ["", _latency_line(after), "", _worker_header()]
    handled_before = {w.index: w.handled for w in before.workers}
    for w in after.workers:
        rate = (w.handled - handled_before.get(w.index, w.handled)) / elapsed
        lines.append(
            f"{w.index:<7}{w.pid or '-':>8}  {w.state:<12}{w.ring_depth:>11,}"
            f"{w.ring_bytes:>13,}{w.handled:>14,}{rate:>12,.1f}"
        )
    return "\n".join(lines)


def _headline(report: Report) -> str:
    health = "healthy" if report.health.ok else "UNHEALTHY: " + "; ".join(report.health.reasons)
    return (
        f"ugram {report.version} on {report.socket}: pid {report.pid}, {report.phase}, "
        f"up {_duration(report.uptime_seconds)}, {report.active_workers} worker(s), "
        f"receiver {report.receiver.state} — {health}"
    )


def _latency_line(report: Report) -> str:
    lat = report.latency
    if not lat.count:
        return "latency: no records yet"
    parts = [f"p{int(q * 100)} <= {_seconds(lat.quantile(q))}" for q in (0.5, 0.9, 0.99)]
    mean = lat.sum_seconds / lat.count
    return f"latency (receipt to handled): {', '.join(parts)}, mean {_seconds(mean)}"


def _worker_header() -> str:
    return (
        f"{'worker':<7}{'pid':>8}  {'state':<12}{'ring depth':>11}{'ring bytes':>13}"
        f"{'handled':>14}{'handled/s':>12}"
    )


def _number(value: float) -> str:
    return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "> 537 s"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"

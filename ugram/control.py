"""The control socket behind ``ugram stats``, and ``ugram stats`` itself.

The supervisor listens on an AF_UNIX stream socket next to the server socket
(``<socket>.ctl``, or ``@name.ctl`` for an abstract name), with the server socket's mode and
group, so whoever may send datagrams may also read the counters. Each connection gets one
JSON :class:`~ugram.observe.Report` and is closed: no request, no state.

Whoever may connect may do so in a loop, and building a report costs the supervisor CPU
(under the GIL, which its lifecycle work shares), so the socket is served one connection at
a time and a report, once built, is the answer to every connection for
:data:`ANSWER_MAX_AGE` (longer when building it took long: see :class:`CachedAnswer`).

The file gets the same care as the server socket: created with no wider permissions than
asked, a stale one replaced, anything that is not a socket refused, and only our own inode
removed at exit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import msgspec

from . import safefs
from .errors import PathTooLongError, SocketError, UgramError, UnsafePathError
from .handler_stats import Reading
from .observe import Report
from .safefs import open_dir, owner_name, trusted_uids
from .sockets import BoundSocket, abstract_address, bind_stream_socket, unlink_if_ours
from .stats import REJECT_REASONS

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("ugram.control")

CONTROL_SUFFIX = ".ctl"
CLIENT_TIMEOUT = 5.0
MAX_REPORT_BYTES = 4 * 2**20  # what `ugram stats` reads at most; a report is a few KB
ANSWER_MAX_AGE = 0.1  # seconds one built report answers every connection
BUILD_SHARE = 0.1  # at most this share of the time goes to building reports, under a flood


def control_path(socket_path: str) -> str:
    """Where the control socket of the server on ``socket_path`` lives."""
    if socket_path.startswith("@"):
        return socket_path + CONTROL_SUFFIX
    return os.path.abspath(socket_path) + CONTROL_SUFFIX


# -- the server side ---------------------------------------------------------------------------


class CachedAnswer:
    """``build()`` at most once per :data:`ANSWER_MAX_AGE`: the same bytes in between.

    A build that takes long keeps its answer longer, so that under a flood of connections
    building takes at most :data:`BUILD_SHARE` of the time whatever the report's size. Not
    thread-safe: the control socket calls it from its one serving thread.
    """

    def __init__(
        self,
        build: Callable[[], bytes],
        max_age: float = ANSWER_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Answer with ``build()``, rebuilt once ``max_age`` seconds of ``clock`` passed."""
        self._build, self._max_age, self._clock = build, max_age, clock
        self._answer = b""
        self._fresh_until = -math.inf
        self.requests = 0  # answers given
        self.builds = 0  # reports built for them

    def __call__(self) -> bytes:
        """The answer: the last one built while it is fresh, else a new one."""
        self.requests += 1
        started = self._clock()
        if started >= self._fresh_until:
            self._answer = self._build()
            self.builds += 1
            done = self._clock()
            took = done - started
            self._fresh_until = done + max(self._max_age, took * (1 - BUILD_SHARE) / BUILD_SHARE)
        return self._answer


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
    """Answers every connection on the control socket with one JSON report.

    Connections are served one at a time (the rest wait in the listen backlog), each with
    the report of :class:`CachedAnswer`: a client that connects in a loop gets the same
    bytes again instead of making the supervisor build a report for each connection.
    """

    def __init__(
        self,
        bound: BoundSocket,
        report: Callable[[], Report],
        *,
        max_age: float = ANSWER_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Serve ``report()``, as JSON, on the listening socket in ``bound`` (owned from now
        on), built anew at most once per ``max_age`` seconds of ``clock``."""
        self.bound = bound
        self.answer = CachedAnswer(lambda: msgspec.json.encode(report()), max_age, clock)
        self._server = _Server(bound.path, _Handler, bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = bound.sock
        self._server.answer = self.answer
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="ugram-control", daemon=True
        )

    @classmethod
    def bind_for(
        cls, socket_path: str, report: Callable[[], Report], config: Config
    ) -> ControlServer | None:
        """Bind ``<socket_path>.ctl`` to serve ``report()``; None when its path is too long.

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
        return cls(bound, report)

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


def fetch(socket_path: str, expect_uid: int | None = None) -> Report:
    """Read one report from the server on ``socket_path`` (its server socket, not .ctl).

    Args:
        socket_path: the server's socket path (or ``@name``).
        expect_uid: the uid the server runs as (``--expect-user``); by default the owner of
            the server socket file where only trusted users could have put it there, else
            root or the user running this (see :func:`expected_peer`).

    Raises:
        UgramError: no server answers on the control socket, another user serves it, the
            answer is larger than :data:`MAX_REPORT_BYTES`, or it is not a report.
    """
    path = control_path(socket_path)
    expected = expected_peer(socket_path, expect_uid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        try:
            _connect(sock, path)
            _check_peer(sock, path, expected)
            data = _read_capped(sock, path)
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


def _connect(sock: socket.socket, path: str) -> None:
    """Connect to ``path`` following no symlink another user could have planted.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        OSError: the connection failed (UnsafePathError: an untrusted symlink on the way).
    """
    if path.startswith("@"):
        sock.connect(abstract_address(path))
        return
    with safefs.socket_target(path) as target:
        sock.connect(target)


def _read_capped(sock: socket.socket, path: str) -> bytes:
    """Everything the peer sends until it closes, at most :data:`MAX_REPORT_BYTES`.

    Raises:
        UgramError: the peer sent more (a real report is a few kilobytes).
        OSError: the connection failed or timed out.
    """
    chunks, size = [], 0
    while chunk := sock.recv(65536):
        size += len(chunk)
        if size > MAX_REPORT_BYTES:
            raise UgramError(
                f"{path} sent more than {MAX_REPORT_BYTES // 2**20} MiB: not a ugram report; "
                "refusing to read further"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class ExpectedPeer:
    """Who may serve a control socket: ``uids``, described as ``who`` in messages.

    ``doubt`` says why the server socket file's owner was not taken as the server's user
    ("" when it was, or when there is no file to own).
    """

    uids: frozenset[int]
    who: str
    doubt: str = ""


def expected_peer(socket_path: str, expect_uid: int | None = None) -> ExpectedPeer:
    """Who may answer on the control socket of the server on ``socket_path``.

    ``expect_uid`` (``--expect-user``) wins. Otherwise the owner of the server socket file,
    but only where nobody else could have put a file at that name: every directory on the
    way writable by its owner alone, and owned by root, you or that owner (a private
    directory, or the service user's own, such as a systemd ``RuntimeDirectory=``). In a
    shared directory such as ``/tmp`` anyone may own the file, so there, and for an
    abstract name (no owner), only root or the user running ``ugram stats``.
    """
    if expect_uid is not None:
        return ExpectedPeer(frozenset({expect_uid}), f"{owner_name(expect_uid)}, as expected")
    anyone = ExpectedPeer(trusted_uids(), "root or you")
    if socket_path.startswith("@"):
        return anyone
    owner, doubt = _trusted_owner(os.path.abspath(socket_path))
    if owner is None:
        return ExpectedPeer(anyone.uids, anyone.who, doubt)
    return ExpectedPeer(frozenset({owner}), f"the owner of {socket_path}, {owner_name(owner)}")


def _trusted_owner(path: str) -> tuple[int | None, str]:
    """The owner of the socket file at ``path`` if only trusted users could have put it there.

    Returns:
        The owner (or None), and why it is not trusted ("" when it is, or the file is gone).
    """
    directory, name = os.path.split(path)
    try:
        guess = os.lstat(path).st_uid
    except OSError:
        return None, ""
    # The walk re-checks what the path led to: the owner must hold every directory on the
    # way (with root and you), and the file it finds there must still be that owner's.
    trusted = trusted_uids() | {guess}
    try:
        with open_dir(directory, allow_unsafe=True, what="socket directory", trusted=trusted) as d:
            info = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
            kind, reason = d.kind, d.reason
    except (UnsafePathError, OSError) as exc:
        return None, f"its directory cannot be checked ({exc})"
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != guess:
        return None, f"{path} is not a socket"
    if kind != "private":
        where = reason if reason.startswith("/") else f"{directory} is {reason}"
        return None, f"{where}, so any user may own {name}"
    return info.st_uid, ""


def _check_peer(sock: socket.socket, path: str, expected: ExpectedPeer) -> None:
    """Refuse a control socket served by a user ``expected`` does not allow.

    Another user could bind ``<socket>.ctl`` first (and, in a shared directory, the server
    socket too) and answer with a forged report. The peer's uid comes from the kernel
    (SO_PEERCRED).

    Raises:
        UgramError: the peer is someone else.
    """
    if not hasattr(socket, "SO_PEERCRED"):
        return
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid in expected.uids:
        return
    doubt = f" ({expected.doubt})" if expected.doubt else ""
    raise UgramError(
        f"{path} is served by {owner_name(uid)}, not by {expected.who}{doubt}: refusing its "
        "report (another user may have taken the server's names); if the server really runs "
        f"as that user, pass --expect-user {_user_name(uid)}"
    )


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def stats_command(
    socket_path: str,
    *,
    as_json: bool = False,
    watch: bool = False,
    interval: float = 1.0,
    count: int = 0,
    expect_uid: int | None = None,
    out: TextIO | None = None,
) -> int:
    """``ugram stats``: print the counters with per-second rates (two samples).

    Whatever the report holds is printed with its control characters escaped: a hostile
    server cannot move the cursor, clear the screen or forge lines on the terminal.

    Args:
        socket_path: the server's socket path (or ``@name``).
        as_json: print one report as JSON instead (no rates, no waiting).
        watch: refresh every ``interval`` seconds until interrupted (or ``count`` frames).
        interval: seconds between the two samples a rate is computed from.
        count: with ``watch``, stop after this many frames (0: never).
        expect_uid: the uid the server must run as (see :func:`fetch`).
        out: where to print (default: stdout).

    Raises:
        UgramError: no server answers, or not one :func:`fetch` accepts.
    """
    stream = out or sys.stdout
    if as_json:
        encoded = msgspec.json.encode(fetch(socket_path, expect_uid)).decode()
        stream.write(json_escaped(encoded) + "\n")
        return 0
    frames = 0
    clear = watch and stream.isatty()
    with contextlib.suppress(KeyboardInterrupt):
        for before, after in _samples(socket_path, interval, expect_uid):
            stream.write(("\x1b[H\x1b[2J" if clear else "") + render(before, after) + "\n")
            stream.flush()
            frames += 1
            if not watch or frames == count:
                break
    return 0


def _samples(
    socket_path: str, interval: float, expect_uid: int | None
) -> Iterator[tuple[Report, Report]]:
    before = fetch(socket_path, expect_uid)
    while True:
        time.sleep(interval)
        after = fetch(socket_path, expect_uid)
        yield before, after
        before = after


def json_escaped(text: str) -> str:
    """JSON text with every character a terminal might act on written as a ``\\u`` escape.

    msgspec escapes C0 controls but writes DEL, C1 controls (``U+009B`` is a CSI on some
    terminals) and format characters such as bidi overrides as they are. In JSON text made
    by an encoder such characters can only sit inside strings, where the escape means the
    same character.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters past the BMP
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def printable(text: str) -> str:
    """``text`` with each character that is not printable (controls, newlines, bidi
    overrides) written as a Python escape such as ``\\x1b``: safe to put on a terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


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
    lines += ["", _latency_line(after), _memory_line(after), "", _worker_header()]
    handled_before = {w.index: w.handled for w in before.workers}
    for w in after.workers:
        rate = (w.handled - handled_before.get(w.index, w.handled)) / elapsed
        lines.append(
            f"{w.index:<7}{w.pid or '-':>8}  {printable(w.state):<12}{w.ring_depth:>11,}"
            f"{w.ring_bytes:>13,}{w.handled:>14,}{rate:>12,.1f}{_mib(w.uss_bytes):>12}"
        )
    return "\n".join(lines + _handler_lines(before, after, elapsed))


def _handler_lines(before: Report, after: Report, elapsed: float) -> list[str]:
    """The counters and gauges handlers declared (a histogram: its count and mean)."""
    if not after.handler_metrics:
        return []
    old = {_metric_key(r): r.value for r in before.handler_metrics}
    lines = ["", f"{'handler metric':<52}{'value':>16}{'per second':>14}"]
    for r in after.handler_metrics:
        key = _metric_key(r)
        if r.kind == "histogram":
            count = sum(r.counts)
            mean = _seconds(r.sum / count) if count else "-"
            lines.append(printable(f"{key:<52}{count:>16,}  mean {mean}"))
            continue
        rate = ""
        if r.kind == "counter":
            rate = f"{(r.value - old.get(key, r.value)) / elapsed:>14,.1f}"
        lines.append(printable(f"{key:<52}{_number(_whole(r.value)):>16}{rate}"))
    return lines


def _metric_key(reading: Reading) -> str:
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(reading.labels.items()))
    return f"{reading.name}{{{labels}}}" if labels else reading.name


def _whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def _headline(report: Report) -> str:
    # Every string of the report is the server's to choose: a forged one must not write
    # escape sequences or line breaks to the terminal.
    health = "healthy" if report.health.ok else "UNHEALTHY: " + "; ".join(report.health.reasons)
    return printable(
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


def _memory_line(report: Report) -> str:
    workers = sum(w.uss_bytes for w in report.workers)
    return (
        f"private memory (USS): supervisor {_mib(report.uss_bytes)}, "
        f"receiver {_mib(report.receiver.uss_bytes)}, workers {_mib(workers)} in all"
    )


def _worker_header() -> str:
    return (
        f"{'worker':<7}{'pid':>8}  {'state':<12}{'ring depth':>11}{'ring bytes':>13}"
        f"{'handled':>14}{'handled/s':>12}{'private':>12}"
    )


def _mib(size: int) -> str:
    """A process's private memory in MiB; ``-`` when unknown (0: not running, unreadable)."""
    return f"{size / 2**20:,.1f} MiB" if size > 0 else "-"


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

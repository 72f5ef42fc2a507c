"""``ugram doctor``: check the machine's settings that matter to ugram and print advice.

Each check returns a :class:`Finding`; only a ``fail`` (something that would stop the server
from starting or running safely) makes the command exit 1.
"""

from __future__ import annotations

import os
import platform
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from . import ordering, portable, safefs, shm, speedups
from .config import Config
from .errors import SocketError, UnsafePathError, UnsupportedPlatformError
from .ring import CONTROL_SIZE
from .sockets import max_path_bytes, probe

QLEN_FILE = "/proc/sys/net/unix/max_dgram_qlen"
QLEN_ADVISED = 512
MiB = 1024 * 1024
INDENT, WIDTH = 8, 96


@dataclass(frozen=True)
class Finding:
    """The outcome of one check."""

    level: str  # "ok", "info", "warn" or "fail"
    title: str
    detail: str = ""
    advice: str = ""


def check_qlen(path: str = QLEN_FILE) -> Finding:
    """The kernel's AF_UNIX datagram queue length (default 10: tiny)."""
    try:
        with open(path) as file:
            qlen = int(file.read().strip())
    except (OSError, ValueError):
        return Finding("info", "net.unix.max_dgram_qlen: unknown", f"{path} is not readable")
    title = f"net.unix.max_dgram_qlen = {qlen}"
    if qlen >= QLEN_ADVISED:
        return Finding("ok", title, f"the socket queue holds {qlen + 1} datagrams")
    return Finding(
        "warn",
        title + (" (the kernel default)" if qlen == 10 else ""),
        f"the socket queue holds only {qlen + 1} datagrams, shared by all senders: bursts "
        "block the senders (or give non-blocking ones EAGAIN) while the receiver catches "
        "up. Raising it to 512 gave +25-70% throughput end to end.",
        f"sysctl -w net.unix.max_dgram_qlen={QLEN_ADVISED}  (as root; the setting is per "
        "network namespace: run it inside the server's container or namespace; persist it "
        f"with 'net.unix.max_dgram_qlen = {QLEN_ADVISED}' in /etc/sysctl.d/90-ugram.conf)",
    )


def read_sysctl(name: str) -> int | None:
    """A numeric sysctl: from /proc/sys on Linux, from ``sysctl -n`` elsewhere (macOS)."""
    try:
        if os.path.isdir("/proc/sys"):
            with open("/proc/sys/" + name.replace(".", "/")) as file:
                return int(file.read().split()[0])
        done = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True
        )
        return int(done.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def check_local_dgram(config: Config, read: Callable[[str], int | None] = read_sysctl) -> Finding:
    """macOS's datagram socket buffers, which stand where Linux has max_dgram_qlen."""
    recvspace = read("net.local.dgram.recvspace")
    maxdgram = read("net.local.dgram.maxdgram")
    if recvspace is None or maxdgram is None:
        return Finding("info", "net.local.dgram.recvspace / maxdgram: unknown")
    title = f"net.local.dgram.recvspace = {recvspace}, net.local.dgram.maxdgram = {maxdgram}"
    detail = (
        f"a datagram socket queues {recvspace} bytes by default, all senders together (ugram "
        "raises its own receive buffer to fit max_datagram), and a full queue gives senders "
        "ENOBUFS at once, not a wait (ugram.Client retries). maxdgram is every sender's "
        f"default send buffer: a datagram over {maxdgram} bytes fails with EMSGSIZE unless "
        "the sender raises SO_SNDBUF (ugram.Client does)."
    )
    if maxdgram >= config.max_datagram:
        return Finding("ok", title, detail)
    return Finding(
        "warn",
        title,
        detail + f" max_datagram={config.max_datagram} is larger.",
        f"sysctl -w net.local.dgram.maxdgram={config.max_datagram}  (as root; persist it in "
        "/etc/sysctl.conf), or have every sender raise SO_SNDBUF, or lower max_datagram",
    )


def check_queue(config: Config) -> Finding:
    """The kernel's datagram queue: max_dgram_qlen on Linux, the socket buffers on macOS."""
    if portable.current().system == "darwin":
        return check_local_dgram(config)
    return check_qlen()


def check_profile() -> Finding:
    """Which of Linux's paths ugram takes here, and which portable ones instead."""
    here = portable.current()
    if not here.portable:
        return Finding("ok", f"platform: {here.describe()}", ", ".join(here.paths()))
    detail = ", ".join(here.paths())
    if here.forced:
        detail += f"; unset {portable.ENV} for Linux's own paths"
    return Finding("info", f"platform: {here.name}, portable paths", detail)


def check_memory_order() -> Finding:
    """Which memory ordering the rings and counters run with here, or why they cannot run."""
    machine = platform.machine()
    try:
        name = ordering.check_memory_ordering()
    except UnsupportedPlatformError as exc:
        return Finding("fail", f"memory ordering: none safe on {machine}", str(exc))
    if name == ordering.TSO:
        detail = (
            f"{machine} keeps stores in program order: plain stores publish ring records "
            "and counters in order"
        )
    else:
        detail = (
            f"{machine}: every shared head, tail and counter is a release store and an "
            "acquire load in ugram._speedups, the sleep/wake handshake fenced"
        )
    return Finding("ok", f"memory ordering: {name}", detail)


def check_speedups(config: Config) -> Finding:
    """Whether the receiver's and workers' per-datagram loops run compiled."""
    title = f"per-datagram loops: {speedups.describe(config.speedups)}"
    if config.speedups and speedups.NATIVE is None:
        return Finding(
            "warn",
            title,
            "the pure-Python loops cost about twice the CPU per datagram.",
            "install a C compiler and the Python headers, then reinstall ugram "
            "(pip install --force-reinstall --no-deps ugram)",
        )
    return Finding("ok" if config.speedups else "info", title)


def check_parsers(config: Config) -> Finding:
    """Whether the syslog, statsd and lines codecs parse compiled (ugram._parsers)."""
    from .codecs import native

    if not config.speedups:
        return Finding("info", "codec parsers: pure Python (speedups = false)")
    if native.PARSERS is None:
        return Finding(
            "warn",
            "codec parsers: pure Python (ugram._parsers is missing or stale)",
            "the pure-Python syslog and statsd parsers cost about 7 times the CPU per line.",
            "install a C compiler and the Python headers, then reinstall ugram "
            "(pip install --force-reinstall --no-deps ugram)",
        )
    return Finding("ok", "codec parsers: compiled (ugram._parsers)")


def check_shared_memory(config: Config) -> list[Finding]:
    """memfd availability, and room for the rings (in memory, or in /dev/shm without memfd)."""
    need = config.worker_slots * (config.ring_size + CONTROL_SIZE)
    sizing = (
        f"rings need up to {need / MiB:.0f} MiB ({config.worker_slots} slots x ring_size "
        f"{config.ring_size / MiB:.1f} MiB), allocated as pages are touched"
    )
    memfd = _memfd_works()
    where = shm.backing_directory()
    findings = [
        Finding("ok", "memfd: available", "rings are nameless memfd files: " + sizing)
        if memfd
        else Finding(
            "info",
            "memfd: " + ("not used (portable profile)" if portable.current().forced else "none"),
            f"rings are files in {where}, unlinked before any worker starts: " + sizing,
        )
    ]
    findings.append(_shm_room(need, memfd, where))
    return findings


def _memfd_works() -> bool:
    if not portable.current().has_memfd:
        return False
    try:
        os.close(os.memfd_create("ugram-doctor", 0))
    except OSError:
        return False
    return True


def _shm_room(need: int, memfd: bool, where: str = "/dev/shm") -> Finding:
    try:
        vfs = os.statvfs(where)
    except OSError:
        return Finding("info", f"{where}: absent")
    free = vfs.f_bavail * vfs.f_frsize
    title = f"{where}: {free / MiB:.0f} MiB free"
    if free >= need:
        return Finding("ok", title)
    if memfd:
        return Finding("info", title, "small, but memfd rings do not live in /dev/shm")
    return Finding(
        "warn",
        title,
        f"less than the {need / MiB:.0f} MiB the rings may use (containers often get 64 MiB)",
        "lower ring_size or max_workers, or give the container more /dev/shm (--shm-size)",
    )


def check_socket_path(config: Config) -> list[Finding]:
    """The socket directory's permissions and what sits at the path now."""
    path = config.socket
    if path.startswith("@"):
        return [
            Finding(
                "info",
                f"socket {path}: abstract name",
                "no file, so no permissions: any process in this network namespace can send",
                "restrict senders with allow_uid / allow_gid, or use a path in a private directory",
            )
        ]
    path = os.path.abspath(path)
    size = len(os.fsencode(path))
    if size > max_path_bytes():
        why = portable.current().path_too_long(path, size)
        return [Finding("fail", f"socket {path}: too long", why)]
    directory = os.path.dirname(path)
    try:
        opened = safefs.open_dir(directory, allow_unsafe=True, what="socket directory")
    except UnsafePathError as exc:
        if "does not exist" in str(exc) and config.mkdir:
            return [Finding("info", f"socket directory {directory}: will be created (mkdir)")]
        advice = "create it, or pass --mkdir" if "does not exist" in str(exc) else ""
        return [Finding("fail", f"socket directory {directory}: unusable", str(exc), advice)]
    with opened:
        finding = _directory_finding(opened, os.fstat(opened.fd), config.allow_unsafe_dir)
    return [finding, _path_finding(path)]


def _directory_finding(opened: safefs.Dir, info: os.stat_result, accepted: bool) -> Finding:
    directory = opened.path
    mode = stat.S_IMODE(info.st_mode)
    owner = safefs.owner_name(info.st_uid)
    title = f"socket directory {directory}: {stat.filemode(info.st_mode)} ({mode:04o}, {owner})"
    if not os.access(directory, os.W_OK | os.X_OK):
        return Finding("fail", title, "this user cannot create the socket file there")
    if opened.kind == "unsafe":
        return Finding(
            "warn" if accepted else "fail",
            title,
            f"unsafe: {opened.reason}; another user could replace the socket file"
            + (" (accepted with allow_unsafe_dir)" if accepted else ": the server refuses it"),
            "use a directory only the service's user can write (systemd RuntimeDirectory=)",
        )
    if opened.kind == "shared":
        return Finding(
            "warn",
            title,
            f"shared: {opened.reason}; another user could take the name first",
            "prefer a private directory such as /run/<app>/ (systemd RuntimeDirectory=)",
        )
    return Finding("ok", title, "private: only root and the server's user can change it")


def _path_finding(path: str) -> Finding:
    try:
        state = probe(path)
    except SocketError as exc:
        return Finding("fail", f"socket {path}: unusable", str(exc))
    detail = {
        "missing": "free: the server will create it",
        "stale": "a leftover socket nobody receives on: the server will replace it",
        "live": "a server is already running on it: a second one will be refused",
        "unknown": "a socket this user may not connect to: the server will refuse it",
    }[state]
    level = "warn" if state in ("live", "unknown") else "ok"
    return Finding(level, f"socket {path}: {state}", detail)


def check_passcred(config: Config) -> Finding:
    """SO_PASSCRED: kernel-verified sender pid/uid/gid."""
    here = portable.current()
    option = getattr(socket, "SO_PASSCRED", None) if here.has_credentials else None
    if option is not None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, option, 1)
            return Finding("ok", "SO_PASSCRED: supported", "sender credentials can be collected")
        except OSError as exc:
            why = str(exc)
    else:
        why = here.unavailable(portable.NO_CREDENTIALS)
    level = "fail" if config.wants_credentials else "info"
    return Finding(
        level,
        "SO_PASSCRED: not supported",
        why + ": credentials, allow_uid, allow_gid and rate_limit cannot work",
    )


def check_sndbuf(config: Config) -> list[Finding]:
    """A sender's SO_SNDBUF bounds its in-flight bytes and its largest datagram (on macOS,
    :func:`check_local_dgram` says it)."""
    if portable.current().system == "darwin":
        return []
    return [_wmem(config)]


def _wmem(config: Config) -> Finding:
    try:
        with open("/proc/sys/net/core/wmem_default") as file:
            default = int(file.read())
        with open("/proc/sys/net/core/wmem_max") as file:
            maximum = int(file.read())
    except (OSError, ValueError):
        return Finding("info", "SO_SNDBUF defaults: unknown")
    title = f"net.core.wmem_default = {default}, wmem_max = {maximum}"
    detail = "queued datagrams count against the sender's SO_SNDBUF (not the server's SO_RCVBUF)"
    if config.max_datagram + 512 > default:
        return Finding(
            "info",
            title,
            f"{detail}; datagrams near max_datagram={config.max_datagram} need a larger one",
            "senders: setsockopt(SOL_SOCKET, SO_SNDBUF, n) up to wmem_max, or raise "
            "net.core.wmem_default",
        )
    return Finding("ok", title, detail)


CHECKS: tuple[Callable[[Config], Finding | list[Finding]], ...] = (
    lambda config: check_profile(),
    check_queue,
    lambda config: check_memory_order(),
    check_shared_memory,
    check_socket_path,
    check_speedups,
    check_parsers,
    check_passcred,
    check_sndbuf,
)


def diagnose(config: Config) -> list[Finding]:
    """Run every check for ``config``."""
    findings: list[Finding] = []
    for check in CHECKS:
        result = check(config)
        findings.extend(result if isinstance(result, list) else [result])
    return findings


def _wrap(text: str, first: str) -> str:
    return (
        textwrap.fill(text, WIDTH, initial_indent=first, subsequent_indent=" " * len(first)) + "\n"
    )


def run_checks(config: Config, out: TextIO | None = None) -> int:
    """Print every finding and the advice; return 1 if one is fatal, else 0."""
    stream = out or sys.stdout
    findings = diagnose(config)
    stream.write(f"ugram doctor: socket {config.socket}, {config.workers} worker(s)\n\n")
    for finding in findings:
        stream.write(f"[{finding.level}]".ljust(INDENT) + finding.title + "\n")
        if finding.detail:
            stream.write(_wrap(finding.detail, " " * INDENT))
        if finding.advice:
            stream.write(_wrap(finding.advice, " " * INDENT + "-> "))
    counts = {level: sum(f.level == level for f in findings) for level in ("warn", "fail")}
    stream.write(f"\n{counts['warn']} warning(s), {counts['fail']} fatal\n")
    return 1 if counts["fail"] else 0

"""What this platform gives ugram, in one place: every Linux-only path asks here.

ugram takes Linux's fast or safe paths where the kernel has them (``recvmmsg``, memfd rings,
eventfd wake-ups, SO_PASSCRED credentials, abstract ``@names``) and a portable path
elsewhere: one ``recvfrom`` per datagram, rings in unlinked files of a private directory,
pipes, and a clear refusal, at config time, of what cannot exist (macOS gives no credentials
for datagram sockets). :func:`current` says which, from ``sys.platform`` and the *portable
profile*: ``UGRAM_PORTABLE=1`` makes Linux take every portable path and apply macOS's
limits, so that those paths run end to end in CI (``docs/portable.md``).

A child process inherits the variable, so the supervisor, the receiver, the workers and a
client in the same environment all see the same profile.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .errors import ConfigError

ENV = "UGRAM_PORTABLE"
_ON = frozenset(("1", "true", "yes", "on"))
_OFF = frozenset(("", "0", "false", "no", "off"))

NO_CREDENTIALS = "the kernel gives no credentials for datagram sockets"
NO_ABSTRACT = "abstract socket names (@name) exist only on Linux; use a socket path"


@dataclass(frozen=True)
class Platform:
    """The capabilities ugram's Linux-only paths depend on, and the limits that differ.

    Attributes:
        system: ``"linux"``, ``"darwin"``, or another ``sys.platform``, as the kernel is.
        forced: the portable profile was asked for (``UGRAM_PORTABLE=1``) where the system
            has more: every capability below is then off and macOS's limits apply.
        has_recvmmsg: the receiver may read a batch per system call.
        has_memfd: rings may be nameless memfd files.
        has_eventfd: wake-ups may be eventfds (else pipes).
        has_credentials: SO_PASSCRED/SCM_CREDENTIALS give each datagram its sender's
            pid/uid/gid.
        has_abstract: abstract socket names (``@name``) exist.
        sun_path_max: the longest socket path, in bytes without its NUL (sun_path is 108
            bytes on Linux, 104 on macOS and the BSDs).
        dgram_overhead: bytes of the send buffer a datagram takes beyond its payload: a
            datagram larger than SO_SNDBUF minus this fails with EMSGSIZE.
        sndbuf_sysctls: the default send buffer's sysctl, then its ceiling's (what to raise
            when datagrams are too large for the senders).
        default_dgram_limit: the largest datagram a sender's default SO_SNDBUF allows where
            that is small and fixed (macOS: 2048, ``net.local.dgram.maxdgram``); None where
            it is measured (Linux: ``net.core.wmem_default``, some 200 KiB).
        rcvbuf_holds_queue: the server's SO_RCVBUF holds its whole queue (macOS:
            ``net.local.dgram.recvspace``, 4 KiB by default): it must be raised for large
            datagrams to arrive at all. On Linux the queue is counted in datagrams
            (``net.unix.max_dgram_qlen``) and SO_RCVBUF does not matter.
        rcvbuf_sysctls: the default receive buffer's sysctl, then its ceiling's.
        full_errnos: what a sender's ``send`` fails with when the server's queue is full
            (macOS: ENOBUFS, at once, even on a blocking socket).
    """

    system: str
    forced: bool
    has_recvmmsg: bool
    has_memfd: bool
    has_eventfd: bool
    has_credentials: bool
    has_abstract: bool
    sun_path_max: int
    dgram_overhead: int
    sndbuf_sysctls: tuple[str, str]
    default_dgram_limit: int | None
    rcvbuf_holds_queue: bool
    rcvbuf_sysctls: tuple[str, str]
    full_errnos: frozenset[int]

    @property
    def name(self) -> str:
        """The system as a person says it: ``Linux``, ``macOS``, or ``sys.platform``."""
        return {"linux": "Linux", "darwin": "macOS"}.get(self.system, self.system)

    @property
    def portable(self) -> bool:
        """True where every Linux-only path is off (not Linux, or the forced profile)."""
        return self.forced or self.system != "linux"

    def describe(self) -> str:
        """One line: the system and, where they are taken, which portable paths."""
        if not self.portable:
            return self.name
        profile = f"{self.name}, portable profile ({ENV}=1)" if self.forced else self.name
        return f"{profile}: {', '.join(self.paths())}"

    def paths(self) -> list[str]:
        """The paths taken where Linux has faster or safer ones, each in a few words."""
        return [
            "recvmmsg" if self.has_recvmmsg else "one recvfrom per datagram",
            "memfd rings" if self.has_memfd else "rings in unlinked files",
            "eventfd wake-ups" if self.has_eventfd else "pipe wake-ups",
            "credentials" if self.has_credentials else "no sender credentials",
            "abstract names" if self.has_abstract else "no abstract names",
            f"socket paths up to {self.sun_path_max} bytes",
        ]

    def unavailable(self, why: str) -> str:
        """``not available on <system>: <why>``, and how the profile was forced, if it was."""
        text = f"not available on {self.refusing}: {why}"
        return text + f"; {ENV}=1 applies macOS's limits" if self.forced else text

    @property
    def refusing(self) -> str:
        """The system whose limits apply: macOS under the forced profile."""
        return "macOS" if self.forced else self.name

    def path_too_long(self, path: str, size: int) -> str:
        """The message for a socket path longer than ``sun_path`` allows here."""
        return (
            f"socket path {path} is {size} bytes; AF_UNIX allows at most {self.sun_path_max} "
            f"on {self.refusing} (sun_path holds {self.sun_path_max + 1} with its NUL): use a "
            "shorter path"
        )

    def dgram_limit(self, sndbuf: int) -> int:
        """The largest datagram a socket with send buffer ``sndbuf`` can send."""
        return max(0, sndbuf - self.dgram_overhead)


def _linux(forced: bool) -> Platform:
    """Linux; ``forced``: every Linux-only path off and macOS's limits applied where a Linux
    kernel lets them be (the socket path's length, sizing the receive buffer, ENOBUFS as a
    full queue), while what the kernel itself does (send buffers, sysctls) stays Linux's."""
    linux = not forced
    return Platform(
        system="linux",
        forced=forced,
        has_recvmmsg=linux,  # the C library may still lack it: ugram.receiver.mmsg checks
        has_memfd=linux and hasattr(os, "memfd_create"),
        has_eventfd=linux and hasattr(os, "eventfd"),
        has_credentials=linux and hasattr(socket, "SO_PASSCRED"),
        has_abstract=linux,
        sun_path_max=107 if linux else 103,
        dgram_overhead=32,  # unix_dgram_sendmsg: len > sk_sndbuf - 32 is EMSGSIZE
        sndbuf_sysctls=("net.core.wmem_default", "net.core.wmem_max"),
        default_dgram_limit=None,
        rcvbuf_holds_queue=forced,
        rcvbuf_sysctls=("net.core.rmem_default", "net.core.rmem_max"),
        full_errnos=frozenset((errno.EAGAIN, errno.ENOBUFS) if forced else (errno.EAGAIN,)),
    )


def for_system(system: str, *, forced: bool = False) -> Platform:
    """The capabilities of ``system`` (a ``sys.platform`` value), as :func:`current` would
    compute them there: how tests see macOS from Linux (``for_system("darwin")``).

    ``forced`` is the portable profile (meaningful on Linux only: elsewhere every portable
    path is taken anyway).
    """
    if system.startswith("linux"):
        return _linux(forced)
    darwin = system == "darwin"
    return Platform(
        system="darwin" if darwin else system,
        forced=False,
        has_recvmmsg=False,
        has_memfd=False,
        has_eventfd=False,
        has_credentials=False,
        has_abstract=False,
        sun_path_max=103,
        dgram_overhead=0,  # sosend: a datagram larger than so_snd.sb_hiwat is EMSGSIZE
        sndbuf_sysctls=("net.local.dgram.maxdgram", "kern.ipc.maxsockbuf"),
        default_dgram_limit=2048 if darwin else None,
        rcvbuf_holds_queue=darwin,
        rcvbuf_sysctls=("net.local.dgram.recvspace", "kern.ipc.maxsockbuf"),
        full_errnos=frozenset((errno.EAGAIN, errno.ENOBUFS)),
    )


def forced_by(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for the portable profile (``UGRAM_PORTABLE``).

    Raises:
        ConfigError: the variable holds something other than 1/0, true/false, yes/no, on/off.
    """
    value = environ.get(ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(
        f"invalid value for {ENV}: {environ.get(ENV)!r} (allowed: 1 to force the portable "
        "profile, 0 or empty for none)"
    )


@functools.lru_cache(maxsize=4)
def _computed(system: str, forced: bool) -> Platform:
    return for_system(system, forced=forced)


_OVERRIDE: list[Platform] = []


def current() -> Platform:
    """The platform ugram runs on now: computed once per (``sys.platform``, profile).

    Raises:
        ConfigError: ``UGRAM_PORTABLE`` holds an unknown value.
    """
    if _OVERRIDE:
        return _OVERRIDE[-1]
    return _computed(sys.platform, forced_by(os.environ))


@contextlib.contextmanager
def simulate(platform: Platform) -> Iterator[Platform]:
    """Make :func:`current` return ``platform`` in this process (tests: macOS on Linux)."""
    _OVERRIDE.append(platform)
    try:
        yield platform
    finally:
        _OVERRIDE.remove(platform)

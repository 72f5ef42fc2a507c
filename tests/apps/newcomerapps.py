"""Handlers of every codec, for the testing helpers (run_server, Harness)."""

from __future__ import annotations

from ugram.codecs import Line, Metric, SyslogMessage


def take_lines(line: str) -> None:
    """One line of a ``--codec lines`` datagram."""
    assert isinstance(line, str)


def take_syslog(message: SyslogMessage) -> None:
    """One RFC 5424/3164 message."""
    assert message.message


def take_statsd(line: Line) -> None:
    """One DogStatsD line (here: metrics only)."""
    assert isinstance(line, Metric)


def take_raw(data: bytes) -> None:
    """The payload as it came."""
    assert data


BY_CODEC = {"lines": take_lines, "syslog": take_syslog, "statsd": take_statsd, "raw": take_raw}

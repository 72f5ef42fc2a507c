"""``ugram send``: datagrams from the command line, through :class:`ugram.Client`."""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

import msgspec

from .client import (
    DEFAULT_MAX_DATAGRAM,
    DROP_REASONS,
    GONE_ERRNOS,
    Client,
    ClientCodec,
    ClientStatistics,
    Policy,
    connect_to,
    server_address,
)
from .errors import ServerUnavailableError


def send_command(
    path: str,
    data: Sequence[str],
    *,
    stdin: Iterable[bytes] = (),
    codec: ClientCodec = "raw",
    policy: Policy = "block",
    timeout: float | None = None,
    count: int | None = None,
    rate: float = 0.0,
    wait: float = 0.0,
    max_datagram: int = DEFAULT_MAX_DATAGRAM,
    report: TextIO | None = None,
) -> int:
    """``ugram send``: send DATA (or stdin lines, or ``count`` generated datagrams).

    With ``codec`` json or msgpack, each DATA is parsed as a JSON value (text that is not
    JSON is taken as a string) and sent encoded. With ``count``, that many datagrams are sent,
    cycling through DATA, or numbered 0, 1, ... when there is none; ``rate`` paces them.
    A summary goes to ``report`` (stderr) with ``count``, or when anything was dropped.

    Returns:
        0 (what was dropped is in the summary).

    Raises:
        ServerUnavailableError: no server listened within ``wait`` seconds.
        ConfigError: an invalid option.
        PayloadTooLargeError: a payload is larger than ``max_datagram``.
    """
    client = Client(
        path,
        codec=codec,
        policy=policy,
        timeout=timeout,
        max_datagram=max_datagram,
        wait_for_server=wait,
    )
    _await_server(path, wait)
    payloads = _command_payloads(data, stdin, codec, count)
    started = time.monotonic()
    with client:
        if rate > 0:
            for index, payload in enumerate(payloads):
                time.sleep(max(0.0, started + index / rate - time.monotonic()))
                client.send(payload)
        else:
            client.send_many(payloads)
    stats = client.statistics()
    if count is not None or stats.dropped.total:
        print(_summary(stats, time.monotonic() - started), file=report or sys.stderr)
    return 0


def _await_server(path: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        while True:
            try:
                connect_to(probe, server_address(path))
                return
            except OSError as exc:
                if exc.errno not in GONE_ERRNOS:
                    raise
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(f"no ugram server is listening on {path}")
            time.sleep(0.05)


def _command_payloads(
    data: Sequence[str], stdin: Iterable[bytes], codec: ClientCodec, count: int | None
) -> Iterator[object]:
    def value(item: str | bytes) -> object:
        if codec == "raw":
            return os.fsencode(item) if isinstance(item, str) else item
        try:
            return msgspec.json.decode(item)
        except msgspec.DecodeError:
            return os.fsdecode(item)  # not JSON: the text itself, as a string

    if count is None:
        yield from map(value, data or stdin)
    elif data:
        values = [value(item) for item in data]
        yield from itertools.islice(itertools.cycle(values), count)
    else:
        yield from (str(i).encode() if codec == "raw" else i for i in range(count))


def _summary(stats: ClientStatistics, elapsed: float) -> str:
    reasons = ", ".join(
        f"{reason}={getattr(stats.dropped, reason)}"
        for reason in DROP_REASONS
        if getattr(stats.dropped, reason)
    )
    rate = stats.sent / elapsed if elapsed > 0 else 0.0
    dropped = f"dropped {stats.dropped.total}" + (f" ({reasons})" if reasons else "")
    return f"ugram send: sent {stats.sent} in {elapsed:.2f}s ({rate:.0f}/s); {dropped}"

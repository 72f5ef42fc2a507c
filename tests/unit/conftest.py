"""Fixtures the unit tests share."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A bound, non-blocking datagram socket (what a receiver reads), and its path."""
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()

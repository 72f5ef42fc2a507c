"""Scraping a StatsdAggregator server's /metrics, and the DogStatsD floods the tests send."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.scrape import Samples, scrape


def lines_total(samples: Samples) -> float:
    """The metric lines the exposition aggregated so far, every type."""
    return sum(v for k, v in samples.items() if k.startswith("ugram_statsd_lines_total{"))


def scrape_when(
    url: str, ready: Callable[[Samples], bool], what: str, timeout: float = 30.0
) -> Samples:
    """The first scrape for which ``ready`` holds; the test fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ready(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last scrape: {samples}")
        time.sleep(0.05)


def send_lines(path: Path, datagrams: list[bytes]) -> None:
    """Send each datagram from one blocking socket (a stalled server fails the test)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(30.0)
        for datagram in datagrams:
            sock.sendto(datagram, str(path))


def own(samples: Samples, name: str, **labels: str) -> float:
    """One of the ``ugram_statsd_*`` samples (0 when absent)."""
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return samples.get(f"ugram_statsd_{name}{{{text}}}", 0.0)

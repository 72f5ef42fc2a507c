"""Scraping a StatsdAggregator server's /metrics, and the DogStatsD floods the tests send."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, wait_for

Samples = dict[str, float]


def metrics_url(server: Server) -> str:
    """The URL the server announced (it was started with ``--metrics 127.0.0.1:0``)."""
    found: list[str] = []

    def announced() -> bool:
        found[:] = re.findall(r"serving metrics on (http://\S+)", server.stderr)
        return bool(found) or server.proc.poll() is not None

    wait_for(announced, what="the metrics endpoint")
    assert found, server.stderr
    return found[0]


def fetch(url: str, accept: str = "") -> str:
    """The body of one scrape."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def parse(text: str) -> Samples:
    """Every sample, keyed ``name{label="value",...}`` (labels sorted)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def scrape(url: str) -> Samples:
    """Every sample of one scrape (it must parse: a failed scrape fails the test)."""
    return parse(fetch(url))


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

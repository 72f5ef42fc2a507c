"""Reading a real server's /metrics: where it announced it, and every sample of a scrape."""

from __future__ import annotations

import re
import urllib.request

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

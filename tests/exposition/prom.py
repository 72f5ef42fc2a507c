"""A real Prometheus (Debian's ``prometheus`` package) scraping a ugram server each second,
and its HTTP API (``/api/v1/query``)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PROMETHEUS = shutil.which("prometheus") or ""
Vector = dict[frozenset[tuple[str, str]], float]  # labels (with __name__) -> value


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """One Prometheus process; :meth:`query` asks its API."""

    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base, self.proc, self.log = base, proc, log

    def query(self, expr: str) -> Vector:
        """An instant query's vector (the test fails on an API error)."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body: dict[str, Any] = json.load(response)
        assert body["status"] == "success", body
        return {
            frozenset(item["metric"].items()): float(item["value"][1])
            for item in body["data"]["result"]
        }

    def wait(self, expr: str, ready: Callable[[Vector], bool], timeout: float = 30.0) -> Vector:
        """The first answer to ``expr`` that ``ready`` accepts (scrapes are 1 s apart)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.query(expr)
            if ready(found):
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"Prometheus: {expr} is {found}; log:\n{self.log.read_text()}")
            time.sleep(0.2)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    """Starts Prometheus scraping ``127.0.0.1:<port>/metrics`` each second (stopped after
    the test, whatever happens); skips where the binary is missing."""
    if not PROMETHEUS:
        pytest.skip("no prometheus binary (Debian: apt-get install prometheus; .ci/run does)")
    started: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: ugram\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        port, log = free_port(), tmp_path / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return prom
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"Prometheus did not start; log:\n{log.read_text()}")
            time.sleep(0.1)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""What a real Prometheus scrapes from ugram's exposition: exact counter totals, gauge
values, histogram counts and label sets, from raw DogStatsD datagrams and the ``datadog``
client, without and with a statsd_exporter mapping file."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_server
from tests.exposition.helpers import send_lines
from tests.exposition.prom import Prometheus, Vector, free_port, prometheus
from tests.exposition.test_exposition import AGGREGATOR, serve_env

__all__ = ["prometheus"]  # the fixture, used by name

N = 300


def raw_flood() -> list[bytes]:
    """``N`` datagrams of four lines each (see the expectations in the tests)."""
    return [
        (
            f"shop.orders:1|c|#region:eu\nshop.orders:2|c|@0.5|#region:us\n"
            f"shop.temp:{i}|g|#room:a\nshop.lat:{i % 10}|ms"
        ).encode()
        for i in range(N)
    ]


def client_flood(socket_path: Path) -> int:
    """What the real DogStatsD client sends; returns its metric lines."""
    datadog = pytest.importorskip("datadog")
    client: Any = datadog.DogStatsd(
        socket_path=str(socket_path),
        disable_telemetry=True,
        disable_buffering=True,
        disable_aggregation=True,  # each call one line (newer clients sum them first)
        socket_timeout=None,  # blocking: a busy server slows it, never drops
    )
    for i in range(100):
        client.increment("client.views", tags=["env:prod", "page:home"])
        client.histogram("client.size", i % 20)
    client.gauge("client.level", 7, tags=["env:prod"])
    client.flush()
    client.close_socket()
    return 201


def by_labels(vector: Vector, *drop: str) -> dict[tuple[tuple[str, str], ...], float]:
    """A vector keyed by its sorted labels, less Prometheus' job and instance and ``drop``."""
    skip = {"job", "instance", *drop}
    return {
        tuple(sorted((k, v) for k, v in labels if k not in skip)): value
        for labels, value in vector.items()
    }


def settle(prom: Prometheus, lines: float) -> None:
    """Wait until Prometheus scraped a view with every line aggregated."""
    prom.wait("sum(ugram_statsd_lines_total)", lambda v: sum(v.values()) == lines, timeout=30)


def test_prometheus_scrapes_exact_values(
    sock_dir: Path, prometheus: Callable[[int], Prometheus]
) -> None:
    path, port = sock_dir / "s.sock", free_port()
    env = serve_env(timer_type="histogram")
    args = ("--codec", "statsd", "--workers", "2", "--metrics", f"127.0.0.1:{port}")
    with run_server(AGGREGATOR, path, *args, env=env):
        prom = prometheus(port)
        send_lines(path, raw_flood())
        lines = 4 * N + client_flood(path)
        settle(prom, lines)
        orders = by_labels(prom.query("shop_orders_total"))
        temp = by_labels(prom.query("shop_temp"))
        lat = by_labels(prom.query("shop_lat_bucket"))
        lat_count = prom.query("shop_lat_count")
        lat_sum = prom.query("shop_lat_sum")
        views = by_labels(prom.query("client_views_total"))
        size_count = prom.query("client_size_count")
        size_le_5 = prom.query('client_size_bucket{le="5.0"}')
        level = by_labels(prom.query("client_level"))
        up = prom.query('up{job="ugram"}')
    assert list(up.values()) == [1.0]
    assert orders == {
        (("__name__", "shop_orders_total"), ("region", "eu")): N,
        (("__name__", "shop_orders_total"), ("region", "us")): 4 * N,  # 2 at @0.5
    }
    assert temp == {(("__name__", "shop_temp"), ("room", "a")): N - 1}
    values = [i % 10 / 1000 for i in range(N)]
    for le, count in (("0.005", 6 * N // 10), ("0.01", N), ("+Inf", N)):
        assert lat[(("__name__", "shop_lat_bucket"), ("le", le))] == count
    assert list(lat_count.values()) == [N]
    assert list(lat_sum.values()) == [pytest.approx(math.fsum(values))]
    labels = (("__name__", "client_views_total"), ("env", "prod"), ("page", "home"))
    assert views == {labels: 100}
    assert list(size_count.values()) == [100]
    assert list(size_le_5.values()) == [30]  # 0..5 of each 20 histogram values (not ms)
    assert level == {(("__name__", "client_level"), ("env", "prod")): 7}


MAPPING = """
mappings:
  - match: "shop.*.orders"
    name: "shop_orders_total"
    labels:
      region: "$1"
  - match: "shop.*.latency"
    observer_type: histogram
    histogram_options:
      buckets: [0.05, 0.5]
    name: "shop_latency_seconds"
    labels:
      region: "$1"
  - match: "shop.debug.*"
    action: drop
  - match: 'job\\.([a-z]+)\\.last_run'
    match_type: regex
    name: "job_last_run"
    labels:
      job: "$1"
"""


def test_prometheus_scrapes_a_mapped_flood(
    sock_dir: Path, prometheus: Callable[[int], Prometheus]
) -> None:
    path, port, mapping = sock_dir / "s.sock", free_port(), sock_dir / "mapping.yml"
    mapping.write_text(MAPPING)
    env = serve_env(mapping=str(mapping))
    args = ("--codec", "statsd", "--workers", "2", "--metrics", f"127.0.0.1:{port}")
    flood = [
        f"shop.eu.orders:1|c\nshop.us.orders:3|c\nshop.eu.latency:{10 * (i % 100)}|ms\n"
        f"shop.debug.x:1|c\njob.backup.last_run:{i}|g"
        for i in range(N)
    ]
    with run_server(AGGREGATOR, path, *args, env=env):
        prom = prometheus(port)
        send_lines(path, [line.encode() for line in flood])
        settle(prom, 4 * N)
        orders = by_labels(prom.query("shop_orders_total"))
        buckets = by_labels(prom.query("shop_latency_seconds_bucket"), "__name__")
        last_run = by_labels(prom.query("job_last_run"))
        dropped = prom.query("ugram_statsd_dropped_lines_total")
        debug = prom.query('{__name__=~"shop_debug.*"}')
    assert orders == {
        (("__name__", "shop_orders_total"), ("region", "eu")): N,
        (("__name__", "shop_orders_total"), ("region", "us")): 3 * N,
    }
    # 0, 10, ..., 990 ms: 6 of each 100 at most 50 ms, 51 at most 500 ms
    assert buckets == {
        (("le", "0.05"), ("region", "eu")): 6 * N // 100,
        (("le", "0.5"), ("region", "eu")): 51 * N // 100,
        (("le", "+Inf"), ("region", "eu")): N,
    }
    # Prometheus renames a scraped "job" label (its own target label) to exported_job
    assert last_run == {(("__name__", "job_last_run"), ("exported_job", "backup")): N - 1}
    assert list(dropped.values()) == [N]
    assert debug == {}

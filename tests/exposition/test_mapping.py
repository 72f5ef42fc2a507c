"""StatsdAggregator's ``mapping`` option: a statsd_exporter mapping file names, labels,
drops and shapes the exposed series; a bad file stops the server at start-up."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_server
from tests.exposition.helpers import lines_total, own, scrape_when, send_lines
from tests.exposition.test_exposition import AGGREGATOR, serve_env
from tests.scrape import Samples, metrics_url

MAPPING = """
defaults:
  observer_type: summary
mappings:
  - match: "api.*.requests"
    name: "api_requests_total"
    labels:
      service: "$1"
      team: web
  - match: "api.*.latency"
    observer_type: histogram
    histogram_options:
      buckets: [0.1, 1]
    name: "api_latency_seconds"
    labels:
      service: "$1"
  - match: "debug.*"
    action: drop
  - match: "empty.*"
    name: "${1}"
  - match: "short.*"
    name: "short_${1}"
    ttl: 1s
  - match: 'job\\.([a-z]+)\\.done'
    match_type: regex
    name: "jobs_done"
    labels:
      job: "$1"
"""

LINES = [
    b"api.users.requests:1|c|#env:prod",
    b"api.users.requests:2|c|#env:prod",
    b"api.orders.requests:5|c",
    b"api.users.latency:50|ms",
    b"api.users.latency:500|ms",
    b"api.users.latency:5000|ms",
    b"debug.noise:1|c",
    b"empty.:1|c",
    b"short.lived:1|g",
    b"job.backup.done:1|c",
    b"job.backup.done:1|c",
    b"plain.name-here:3|c",
    b"rt:20|ms",
]


def settled(samples: Samples) -> bool:
    """Every line of LINES aggregated, dropped or refused."""
    done = lines_total(samples) + own(samples, "dropped_lines_total")
    return done + own(samples, "refused_lines_total", reason="empty_name") >= len(LINES)


def test_a_mapping_file_names_labels_drops_and_shapes_series(sock_dir: Path) -> None:
    path, mapping = sock_dir / "s.sock", sock_dir / "mapping.yml"
    mapping.write_text(MAPPING)
    env = serve_env(mapping=str(mapping))
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, LINES)
        samples = scrape_when(url, settled, "every line")
        expired = scrape_when(url, lambda s: "short_lived{}" not in s, "the 1s ttl")
    assert samples['api_requests_total{env="prod",service="users",team="web"}'] == 3
    assert samples['api_requests_total{service="orders",team="web"}'] == 5
    assert samples['api_latency_seconds_bucket{le="0.1",service="users"}'] == 1
    assert samples['api_latency_seconds_bucket{le="1.0",service="users"}'] == 2
    assert samples['api_latency_seconds_bucket{le="+Inf",service="users"}'] == 3
    assert samples['api_latency_seconds_sum{service="users"}'] == 5.55
    assert samples['jobs_done_total{job="backup"}'] == 2
    assert samples["plain_name_here_total{}"] == 3  # unmapped: escaped
    assert samples["short_lived{}"] == 1
    assert samples["rt_count{}"] == 1  # the defaults' observer_type: a summary
    assert 'rt{quantile="0.5"}' in samples
    assert not [k for k in samples if k.startswith("debug")]
    assert own(samples, "dropped_lines_total") == 1
    assert own(samples, "refused_lines_total", reason="empty_name") == 1
    assert own(expired, "expired_series_total") == 1
    assert expired['jobs_done_total{job="backup"}'] == 2  # no ttl: kept


def test_a_bad_mapping_file_stops_the_server_naming_the_problem(sock_dir: Path) -> None:
    path, mapping = sock_dir / "s.sock", sock_dir / "mapping.yml"
    mapping.write_text('mappings:\n  - match: "a.*"\n    name: a\n    max_age: 30s\n')
    args = ("--codec", "statsd", "--metrics", "127.0.0.1:0")
    env = serve_env(mapping=str(mapping))
    with run_server(AGGREGATOR, path, *args, env=env, wait=False) as server:
        assert server.proc.wait(60) != 0
    assert str(mapping) in server.stderr
    assert "'max_age'" in server.stderr
    assert "not supported" in server.stderr


def test_a_missing_mapping_file_stops_the_server(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    args = ("--codec", "statsd", "--metrics", "127.0.0.1:0")
    env = serve_env(mapping=str(sock_dir / "nope.yml"))
    with run_server(AGGREGATOR, path, *args, env=env, wait=False) as server:
        assert server.proc.wait(60) != 0
    assert "cannot read the mapping file" in server.stderr
    assert "nope.yml" in server.stderr

"""StatsdAggregator's exposition on a real server: exact totals on /metrics, merged across
workers, through SIGKILLs, SIGHUP, caps, TTL and conflicts (issue #17)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import Server, child_env, run_server, wait_for
from tests.exposition.helpers import lines_total, own, scrape_when, send_lines
from tests.scrape import Samples, fetch, metrics_url, parse, scrape

AGGREGATOR = "ugram.builtin:StatsdAggregator"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def serve_env(out_dir: Path | None = None, **options: str) -> dict[str, str]:
    """The server's environment with ``UGSTATSD_<NAME>`` options."""
    return child_env(out_dir, **{f"UGSTATSD_{k.upper()}": v for k, v in options.items()})


def flood(n: int) -> list[bytes]:
    """``n`` datagrams of seven lines each (see :func:`expected`)."""
    return [
        (
            f"app.hits:1|c|#env:prod\napp.hits:2|c|@0.5|#env:dev,canary\napp.temp:{i}|g\n"
            f"app.queue:+1|g\napp.lat:{i % 50}|ms|#route:/x\napp.size:{i % 10}|h\n"
            f"app.users:u{i % 13}|s"
        ).encode()
        for i in range(n)
    ]


FLOOD_LINES = 7


def expected(n: int) -> dict[str, float]:
    """What a flood of ``n`` datagrams must expose (timers and histograms as histograms)."""
    out = {
        'app_hits_total{env="prod"}': float(n),
        'app_hits_total{env="dev"}': 4.0 * n,  # 2 at @0.5; the bare tag dropped
        "app_temp{}": float(n - 1),  # the last value received
        "app_queue{}": float(n),
    }
    lat = [i % 50 / 1000 for i in range(n)]
    size = [float(i % 10) for i in range(n)]
    for name, values, labels in (("app_lat", lat, {"route": "/x"}), ("app_size", size, {})):
        for bound in (*BUCKETS, math.inf):
            le = "+Inf" if bound == math.inf else repr(bound)
            count = sum(1 for v in values if v <= bound)
            out[key(f"{name}_bucket", **labels, le=le)] = float(count)
        out[key(f"{name}_count", **labels)] = float(n)
        out[key(f"{name}_sum", **labels)] = math.fsum(values)
    return out


def key(name: str, **labels: str) -> str:
    """A sample's key as :func:`parse` makes it."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def assert_exposes(samples: Samples, truth: dict[str, float]) -> None:
    for key, value in truth.items():
        assert key in samples, (key, sorted(samples))
        assert samples[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def reload_workers(server: Server, workers: int = 2) -> None:
    """SIGHUP the server and wait until ``workers`` new workers replaced the old ones."""
    old = {p.pid for p in workers_of(server.proc.pid)}
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_for(
        lambda: (
            not old & {p.pid for p in workers_of(server.proc.pid)}
            and len(workers_of(server.proc.pid)) == workers
        ),
        what=f"{workers} new workers",
    )


def workers_of(pid: int) -> list[psutil.Process]:
    """The server's live worker processes (not a killed one waiting to be reaped)."""
    found = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie, meanwhile
            continue
    return found


def live_workers(pid: int, dead: set[int]) -> list[psutil.Process]:
    """The server's worker processes, but those in ``dead`` (killed, perhaps not reaped)."""
    return [p for p in workers_of(pid) if p.pid not in dead]


def both_live_workers(pid: int, dead: set[int]) -> list[psutil.Process]:
    """The server's two workers, once both are up (a killed one restarted)."""
    found: list[psutil.Process] = []

    def ready() -> bool:
        found[:] = live_workers(pid, dead)
        return len(found) == 2

    wait_for(ready, what="two live workers")
    return found


def settled(samples: Samples, sent: int) -> bool:
    """Whether the receiver has read ``sent`` datagrams, every ring is drained, and every
    worker runs (healthy: none is booting after a kill)."""
    read = sum(v for k, v in samples.items() if k.startswith("ugram_received_total{"))
    depth = sum(v for k, v in samples.items() if k.startswith("ugram_ring_depth{"))
    return read >= sent and depth == 0 and samples.get("ugram_healthy{}") == 1


def kill_during_flood(server: Server, path: Path, datagrams: list[bytes], kills: int) -> int:
    """Send ``datagrams`` in ``kills`` chunks, SIGKILLing a worker (each of the two in turn)
    the moment each chunk is in; returns how many distinct workers were killed.

    Each victim is chosen once all sent is read, every ring drained and the server healthy
    (a restarted worker that inherited records has run them): a worker still booting, or one
    done with the chunk, would hold nothing to replay.
    """
    url, chunk = metrics_url(server), len(datagrams) // kills
    dead: set[int] = set()
    for turn, start in enumerate(range(0, len(datagrams), chunk)):
        scrape_when(url, lambda s, m=start: settled(s, m), "both workers idle")
        victim = both_live_workers(server.proc.pid, dead)[turn % 2]
        send_lines(path, datagrams[start : start + chunk])
        victim.kill()
        dead.add(victim.pid)
    return len(dead)


def test_two_workers_expose_exact_totals(sock_dir: Path) -> None:
    path, n = sock_dir / "s.sock", 3000
    env = serve_env(timer_type="histogram")
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, flood(n))
        samples = scrape_when(url, lambda s: lines_total(s) >= n * FLOOD_LINES, "the flood")
        text = fetch(url, "application/openmetrics-text; version=1.0.0")
    assert_exposes(samples, expected(n))
    assert lines_total(samples) == n * FLOOD_LINES
    assert own(samples, "lines_total", type="set") == n
    assert own(samples, "dropped_tags_total") == n  # "canary": a tag without a value
    assert own(samples, "series") == 7
    assert not [k for k in samples if k.startswith("ugram_statsd_refused") and samples[k]]
    parse(text.replace("# EOF\n", ""))  # OpenMetrics served too (and it parses)
    assert text.endswith("# EOF\n")


def test_summaries_count_exactly_and_quantiles_within_one_percent(sock_dir: Path) -> None:
    path, n = sock_dir / "s.sock", 2000
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=serve_env(quantiles="0.5,0.9")) as server:
        url = metrics_url(server)
        send_lines(path, [f"rt:{1 + i % 100}|ms".encode() for i in range(n)])
        samples = scrape_when(url, lambda s: lines_total(s) >= n, "the flood")
    values = sorted((1 + i % 100) / 1000 for i in range(n))
    assert samples["rt_count{}"] == n
    assert samples["rt_sum{}"] == pytest.approx(math.fsum(values))
    for q in (0.5, 0.9):
        exact = values[math.ceil(q * n) - 1]  # the sample of rank q * n
        assert samples[f'rt{{quantile="{q}"}}'] == pytest.approx(exact, rel=0.011)


def test_a_set_exposes_the_distinct_members_of_the_last_interval(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=serve_env(flush_interval="1")) as server:
        url = metrics_url(server)
        wait_for(lambda: time.time() % 1 < 0.2, what="the start of an interval")
        send_lines(path, [f"uniq:m{i % 17}|s".encode() for i in range(300)])
        samples = scrape_when(url, lambda s: s.get("uniq{}") == 17, "the interval's members")
        assert own(samples, "lines_total", type="set") == 300
        scrape_when(url, lambda s: s.get("uniq{}") == 0, "an interval without members")


@pytest.mark.parametrize("point", ["after-publish", "before-publish"])
def test_a_worker_killed_around_its_publish_counts_each_record_once(
    sock_dir: Path, out_dir: Path, point: str
) -> None:
    """After its delta is published and before the batch is acknowledged, the replayed
    batch must be skipped; before, it must count. Exact either way."""
    path, n = sock_dir / "s.sock", 400
    env = serve_env(out_dir, timer_type="histogram")
    env.update(UGTEST_KILL_AT=point, UGTEST_KILL_AFTER="5")
    args = ("--codec", "statsd", "--workers", "1", "--batch-size", "8")
    args += ("--metrics", "127.0.0.1:0")
    with run_server("statsdkill:KillingAggregator", path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, flood(n))
        samples = scrape_when(url, lambda s: lines_total(s) >= n * FLOOD_LINES, "the flood")
        time.sleep(0.3)  # anything counted twice would show by now
        samples = scrape(url)
        assert (out_dir / "killed").exists()
        assert "replaying" in server.stderr
    assert_exposes(samples, expected(n))
    assert lines_total(samples) == n * FLOOD_LINES
    skipped = own(samples, "skipped_records_total")
    assert skipped > 0 if point == "after-publish" else skipped == 0


def test_sigkills_mid_flood_lose_nothing_and_count_nothing_twice(sock_dir: Path) -> None:
    """Six SIGKILLs, each of a running worker right after a chunk of the flood went in (the
    workers busy with it, records in hand unacknowledged): every line counts exactly once.
    The workers hold each batch 5 ms (SlowAggregator), so that a kill finds one in hand."""
    path, n, kills = sock_dir / "s.sock", 12_000, 6
    env = serve_env(timer_type="histogram")
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    args += ("--batch-size", "32")
    with run_server("statsdkill:SlowAggregator", path, *args, env=env) as server:
        url = metrics_url(server)
        killed = kill_during_flood(server, path, flood(n), kills)
        samples = scrape_when(url, lambda s: lines_total(s) >= n * FLOOD_LINES, "the flood")
        time.sleep(0.3)  # anything counted twice would show by now
        samples = scrape(url)
        replays = server.stderr.count("replaying")
        assert server.stop() == 0, server.stderr
    assert killed == kills
    assert replays >= 1, server.stderr  # at least one kill left records to replay
    assert_exposes(samples, expected(n))
    assert lines_total(samples) == n * FLOOD_LINES


def test_sighup_keeps_every_series(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=serve_env()) as server:
        url = metrics_url(server)
        send_lines(path, [f"c{i % 5}:1|c\ng{i % 3}:{i}|g".encode() for i in range(100)])
        before = scrape_when(url, lambda s: lines_total(s) >= 200, "the first lines")
        reload_workers(server)
        after = scrape(url)
        app = {k: v for k, v in before.items() if not k.startswith("ugram_")}
        assert {k: after[k] for k in app} == app  # every series, every value
        send_lines(path, [f"c{i % 5}:1|c".encode() for i in range(100)])
        later = scrape_when(url, lambda s: lines_total(s) >= 300, "the later lines")
    assert [later[f"c{i}_total{{}}"] for i in range(5)] == [40.0] * 5


def refused_total(samples: Samples) -> float:
    return sum(v for k, v in samples.items() if k.startswith("ugram_statsd_refused_lines_total"))


def test_caps_and_conflicts_are_counted_never_a_failed_scrape(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    env = serve_env(max_series="7", max_series_per_metric="3", timer_type="histogram")
    first = [
        *(f"wide:1|c|#id:{i}" for i in range(5)),  # 3 fit the family's cap
        "mixed:1|c|#a:x",
        "mixed:1|c|#b:y",  # another label set of a family: exposed as it is
        "thing:1|c",
        "lat:1|h",  # 7 series: the global cap
    ]
    then = [
        "thing:1|g",  # the name is a counter's: a type conflict
        "lat_count:1|g",  # a sample name the histogram exposes: a name conflict
        "more:1|c",
        "more2:1|c",  # past max_series
        "ugram_received:1|c",  # ugram's own prefix
        "neg:-1|c",
    ]
    args = ("--codec", "statsd", "--workers", "1", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, [line.encode() for line in first])
        scrape_when(url, lambda s: lines_total(s) + refused_total(s) >= 9, "the first lines")
        send_lines(path, [line.encode() for line in then])
        samples = scrape_when(url, lambda s: lines_total(s) + refused_total(s) >= 15, "every line")
        text = fetch(url, "application/openmetrics-text; version=1.0.0")
    assert [k for k in samples if k.startswith("wide_total")] == [
        f'wide_total{{id="{i}"}}' for i in range(3)
    ]
    assert samples['mixed_total{a="x"}'] == samples['mixed_total{b="y"}'] == 1
    assert own(samples, "mixed_label_families") == 1
    assert samples["thing_total{}"] == 1
    assert "thing{}" not in samples
    assert samples['lat_bucket{le="1.0"}'] == 1
    assert "lat_count{}" in samples
    reasons = ("max_series_per_metric", "type_conflict", "name_conflict", "max_series")
    reasons += ("reserved_name", "negative_counter")
    refused = {r: own(samples, "refused_lines_total", reason=r) for r in reasons}
    assert refused == {
        "max_series_per_metric": 2,
        "type_conflict": 1,
        "name_conflict": 1,
        "max_series": 2,
        "reserved_name": 1,
        "negative_counter": 1,
    }
    assert own(samples, "refused_series_total", reason="max_series") == 2
    assert own(samples, "series") == 7
    assert "ugram_received_total{}" in samples  # ugram's own, untouched
    parse(text.replace("# EOF\n", ""))


def test_ttl_drops_idle_series_and_frees_their_place(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    env = serve_env(ttl="1", max_series="2")
    args = ("--codec", "statsd", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, [b"old:5|c", b"kept:1|g"])
        scrape_when(url, lambda s: lines_total(s) >= 2, "the first lines")
        send_lines(path, [b"new:1|c"])  # no room
        scrape_when(url, lambda s: own(s, "refused_lines_total", reason="max_series") == 1, "cap")
        samples = scrape_when(url, lambda s: "old_total{}" not in s, "the series to expire")
        assert own(samples, "expired_series_total") == 2
        send_lines(path, [b"new:1|c", b"old:1|c"])
        samples = scrape_when(url, lambda s: "old_total{}" in s, "the series to come back")
    assert samples["new_total{}"] == 1
    assert samples["old_total{}"] == 1  # an expired series starts again from zero


def test_a_scrape_during_a_flood_sees_whole_batches(sock_dir: Path) -> None:
    """Both lines of a datagram are applied together: no scrape may see one alone."""
    path, n = sock_dir / "s.sock", 20_000
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=serve_env()) as server:
        url = metrics_url(server)
        sender = threading.Thread(target=send_lines, args=(path, [b"p.a:1|c\np.b:1|c"] * n))
        sender.start()
        seen = []
        while sender.is_alive() or not seen or seen[-1] < n:
            samples = scrape(url)
            a, b = samples.get("p_a_total{}", 0.0), samples.get("p_b_total{}", 0.0)
            assert a == b
            seen.append(a)
        sender.join()
    assert seen == sorted(seen)
    assert len(set(seen)) > 2  # scraped while it moved


def test_prometheus_output_needs_a_metrics_endpoint(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(
        AGGREGATOR, path, "--codec", "statsd", env=serve_env(output="prometheus"), wait=False
    ) as server:
        assert server.proc.wait(60) == 4
    assert "UGSTATSD_OUTPUT=prometheus" in server.stderr
    assert "--metrics" in server.stderr


@pytest.mark.parametrize("output", ["jsonl", None])
def test_a_mapping_without_an_exposition_stops_the_server(
    sock_dir: Path, output: str | None
) -> None:
    """A mapping file shapes the exposed series only: with the jsonl output (set, or the
    default without --metrics) it would be ignored, so the server refuses to start."""
    path, mapping = sock_dir / "s.sock", sock_dir / "map.yml"
    mapping.write_text('mappings:\n  - match: "a.*"\n    name: "b"\n')
    options = {"mapping": str(mapping), "dir": str(sock_dir / "agg")}
    if output is not None:
        options["output"] = output
    with run_server(
        AGGREGATOR, path, "--codec", "statsd", env=serve_env(**options), wait=False
    ) as server:
        assert server.proc.wait(60) == 4
    assert f"UGSTATSD_MAPPING={mapping}" in server.stderr
    assert "--metrics" in server.stderr


def test_both_outputs_at_once(sock_dir: Path) -> None:
    path, out = sock_dir / "s.sock", sock_dir / "agg"
    env = serve_env(output="both", dir=str(out), flush_interval="1")
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, [b"both:1|c"] * 50)
        samples = scrape_when(url, lambda s: lines_total(s) >= 50, "the lines")
        assert server.stop() == 0
    assert samples["both_total{}"] == 50
    totals = (out / "totals.json").read_text()
    assert '"value":50.0' in totals.replace(" ", "")


def test_sigkills_mid_flood_lose_nothing_in_the_jsonl_output(sock_dir: Path) -> None:
    """The jsonl output under the same six SIGKILLs: each worker journals a batch before it
    is acknowledged, and its successor recovers what it had not written out yet; after the
    graceful stop, totals.json holds every line exactly once."""
    path, out, n, kills = sock_dir / "s.sock", sock_dir / "agg", 6000, 6
    env = serve_env(output="jsonl", dir=str(out), flush_interval="2")
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    args += ("--batch-size", "32")
    with run_server("statsdkill:SlowAggregator", path, *args, env=env) as server:
        url = metrics_url(server)
        assert kill_during_flood(server, path, flood(n), kills) == kills
        scrape_when(url, lambda s: settled(s, n), "the flood handled")
        assert server.stop() == 0, server.stderr
    totals = json.loads((out / "totals.json").read_bytes())
    assert totals["lines"] == n * FLOOD_LINES
    counters = {(c["name"], tuple(c["tags"])): c["value"] for c in totals["counters"]}
    assert counters == {("app.hits", ("env:prod",)): n, ("app.hits", ("canary", "env:dev")): 4 * n}
    timers = {t["name"]: (t["count"], t["sum"]) for t in totals["timers"]}
    assert timers == {"app.lat": (n, sum(i % 50 for i in range(n)))}
    histograms = {h["name"]: (h["count"], h["sum"]) for h in totals["histograms"]}
    assert histograms == {"app.size": (n, sum(i % 10 for i in range(n)))}
    assert [(s["name"], s["value"]) for s in totals["sets"]] == [("app.users", 13)]
    gauges = {g["name"]: g["value"] for g in totals["gauges"]}
    assert gauges["app.temp"] == n - 1  # the last received, whichever worker had it
    assert gauges["app.queue"] == n  # "+1" each: changes add up, across workers and kills
    assert not list((out / "journal").glob("*/*.log"))  # all written out at the stop
    assert server.stderr.count("recovered") >= 1, server.stderr  # a kill left work to recover


def test_sighup_keeps_every_line_in_the_jsonl_output(sock_dir: Path) -> None:
    """A SIGHUP's replacement takes the slot's journal only once the worker it replaces is
    done with it: nothing is lost, nothing counted twice."""
    path, out = sock_dir / "s.sock", sock_dir / "agg"
    env = serve_env(output="jsonl", dir=str(out), flush_interval="1")
    args = ("--codec", "statsd", "--workers", "2", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, [f"c{i % 5}:1|c".encode() for i in range(200)])
        scrape_when(url, lambda s: settled(s, 200), "the first lines")
        reload_workers(server)
        send_lines(path, [f"c{i % 5}:1|c".encode() for i in range(300)])
        scrape_when(url, lambda s: settled(s, 500), "the later lines")
        assert server.stop() == 0, server.stderr
    totals = json.loads((out / "totals.json").read_bytes())
    assert {c["name"]: c["value"] for c in totals["counters"]} == {f"c{i}": 100 for i in range(5)}
    assert totals["lines"] == 500


def test_a_successor_that_gets_no_batch_still_writes_out_what_it_inherits(
    sock_dir: Path,
) -> None:
    """Killed after acknowledging everything, before its interval ended: the replacement
    receives nothing, and a stop right away still writes every line out."""
    path, out = sock_dir / "s.sock", sock_dir / "agg"
    env = serve_env(output="jsonl", dir=str(out), flush_interval="600")
    args = ("--codec", "statsd", "--workers", "1", "--metrics", "127.0.0.1:0")
    with run_server(AGGREGATOR, path, *args, env=env) as server:
        url = metrics_url(server)
        send_lines(path, [b"c:1|c"] * 100)
        scrape_when(url, lambda s: settled(s, 100), "the lines handled")
        (victim,) = live_workers(server.proc.pid, set())
        victim.kill()
        scrape_when(
            url, lambda s: settled(s, 100) and s["ugram_restarts_total{}"] == 1, "a new worker"
        )
        assert server.stop() == 0, server.stderr
    totals = json.loads((out / "totals.json").read_bytes())
    assert totals["lines"] == 100
    assert [(c["name"], c["value"]) for c in totals["counters"]] == [("c", 100.0)]

"""Real, unmodified clients against real servers: Python's SysLogHandler, util-linux logger,
socat, and the datadog package's DogStatsd; plus how multi-message codecs count and deliver."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import logging.handlers
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import child_env, read_records, run_server, send, wait_for

SINK = "ugram.builtin:LogSink"


def sink_records(path: Path) -> list[dict[str, Any]]:
    """Every JSON line the log sink wrote to ``path`` (and its rotated files), oldest first."""
    files = sorted(path.parent.glob(path.name + ".*[0-9]"), key=lambda p: -int(p.suffix[1:]))
    records = []
    for file in [*files, path]:
        with contextlib.suppress(FileNotFoundError):  # rotated away meanwhile
            records += [json.loads(line) for line in file.read_text().splitlines()]
    return records


def sink_env(sink: Path, **extra: str) -> dict[str, str]:
    return child_env(None, UGSINK_PATH=str(sink), **extra)


# -- syslog -------------------------------------------------------------------------------------


@pytest.fixture
def syslog_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("ugram-interop")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def test_python_sysloghandler_gives_severity_facility_and_message(
    sock_dir: Path, syslog_logger: logging.Logger
) -> None:
    path, sink = sock_dir / "log.sock", sock_dir / "log.jsonl"
    with run_server(SINK, path, "--codec", "syslog", "--workers", "2", env=sink_env(sink)) as srv:
        handler = logging.handlers.SysLogHandler(
            address=str(path), facility=logging.handlers.SysLogHandler.LOG_LOCAL4
        )
        syslog_logger.addHandler(handler)
        syslog_logger.warning("disk %d%% full", 91)
        syslog_logger.error("caf\u00e9 down")
        handler.ident = "billing: "
        syslog_logger.debug("tick")
        wait_for(lambda: len(sink_records(sink)) == 3, what="3 syslog records")
        assert srv.stop() == 0

    got = {r["data"]["message"]: r["data"] for r in sink_records(sink)}
    assert set(got) == {"disk 91% full", "caf\u00e9 down", "billing: tick"}
    assert {m: (d["facility"], d["severity"]) for m, d in got.items()} == {
        "disk 91% full": (20, 4),
        "caf\u00e9 down": (20, 3),
        "billing: tick": (20, 7),
    }
    assert got["billing: tick"]["app_name"] is None  # no tag is guessed without a header
    assert srv.summary()["handled"] == 3
    assert srv.summary()["invalid"] == 0


def _logger_supports_unix_datagrams() -> bool:
    if shutil.which("logger") is None:
        return False
    usage = subprocess.run(["logger", "--help"], capture_output=True, text=True).stdout
    return "--socket" in usage and "--udp" in usage and "--rfc5424" in usage


needs_logger = pytest.mark.skipif(
    not _logger_supports_unix_datagrams(),
    reason="util-linux logger with -u/--socket, -d and --rfc5424 is not installed",
)


@needs_logger
def test_util_linux_logger_bsd_and_rfc5424(sock_dir: Path) -> None:
    path, sink = sock_dir / "log.sock", sock_dir / "log.jsonl"
    logger = ["logger", "--socket-errors=on", "-u", str(path), "-d"]
    with run_server(SINK, path, "--codec", "syslog", env=sink_env(sink)) as srv:
        subprocess.run([*logger, "-t", "app", "-p", "local3.err", "--id=4242", "bsd"], check=True)
        five = ["--rfc5424", "-t", "app5", "-p", "user.info", "--msgid", "ID47"]
        sd = ["--sd-id", "ex@32473", "--sd-param", 'k="v \\"q\\""']
        subprocess.run([*logger, *five, *sd, "five four two four"], check=True)
        wait_for(lambda: len(sink_records(sink)) == 2, what="2 syslog records")
        assert srv.stop() == 0

    bsd, rfc5424 = sorted((r["data"] for r in sink_records(sink)), key=lambda d: d["version"])
    assert (bsd["facility"], bsd["severity"], bsd["app_name"]) == (19, 3, "app")
    assert (bsd["procid"], bsd["message"], bsd["hostname"]) == ("4242", "bsd", None)
    assert bsd["timestamp"] is not None
    assert (rfc5424["facility"], rfc5424["severity"], rfc5424["version"]) == (1, 6, 1)
    assert (rfc5424["app_name"], rfc5424["msgid"]) == ("app5", "ID47")
    assert rfc5424["message"] == "five four two four"
    assert rfc5424["structured_data"]["ex@32473"] == {"k": 'v "q"'}
    assert rfc5424["timestamp"] is not None


def test_garbage_and_empty_syslog_datagrams(sock_dir: Path) -> None:
    path, sink = sock_dir / "log.sock", sock_dir / "log.jsonl"
    with run_server(SINK, path, "--codec", "syslog", env=sink_env(sink)) as srv:
        send(path, b"", b"\x00\n", b"no pri at all", b"<999>too big", b"\xff\xfe<13>x").close()
        wait_for(lambda: len(sink_records(sink)) == 3, what="3 syslog records")
        assert srv.stop() == 0

    assert sorted(r["data"]["message"] for r in sink_records(sink)) == [
        "<999>too big",
        "no pri at all",
        "\ufffd\ufffd<13>x",
    ]
    assert {(r["data"]["facility"], r["data"]["severity"]) for r in sink_records(sink)} == {(1, 5)}
    assert srv.summary()["invalid"] == 2  # the empty ones


# -- socat and the lines codec ------------------------------------------------------------------

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")


def socat(path: Path, data: bytes) -> None:
    subprocess.run(["socat", "-u", "-", f"UNIX-SENDTO:{path}"], input=data, check=True, timeout=10)


@needs_socat
def test_socat_datagram_of_lines_calls_the_handler_once_per_line(sock_dir: Path) -> None:
    path, sink = sock_dir / "lines.sock", sock_dir / "lines.jsonl"
    with run_server(SINK, path, "--codec", "lines", "--workers", "2", env=sink_env(sink)) as srv:
        socat(path, b"one\ntwo\r\n\nthree\n")
        socat(path, "caf\u00e9".encode())
        socat(path, b"\n\r\n")  # no line at all: invalid
        wait_for(lambda: len(sink_records(sink)) == 4, what="4 line records")
        assert srv.stop() == 0

    assert sorted(r["text"] for r in sink_records(sink)) == ["caf\u00e9", "one", "three", "two"]
    summary = srv.summary()
    assert (summary["received"], summary["handled"], summary["invalid"]) == (3, 2, 1)


def test_a_raising_line_does_not_stop_the_others(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "lines.sock"
    with run_server("interopapps:lines_raising", path, "--codec", "lines", out_dir=out_dir) as srv:
        send(path, b"a\nboom\nc", b"d").close()
        wait_for(lambda: len(read_records(out_dir)) == 3, what="3 lines")
        assert srv.stop() == 0

    assert read_records(out_dir) == ["a", "c", "d"]
    summary = srv.summary()
    assert (summary["handled"], summary["handler_errors"]) == (2, 1)


def test_text_lines_and_batches_of_lines(sock_dir: Path, out_dir: Path) -> None:
    path = sock_dir / "lines.sock"
    with run_server("interopapps:lines_text", path, "--codec", "lines", out_dir=out_dir) as srv:
        send(path, b"x\ny\n\xff\xfe", bind=str(sock_dir / "client")).close()
        wait_for(lambda: len(read_records(out_dir)) == 2, what="2 lines")
        assert srv.stop() == 0
    assert read_records(out_dir) == [f"x {sock_dir}/client", f"y {sock_dir}/client"]
    assert srv.summary()["invalid"] == 0  # a bad line is skipped, not the datagram

    batch_dir = out_dir / "batch"
    batch_dir.mkdir()
    args = ("--codec", "lines", "--workers", "1")
    with run_server("interopapps:LinesBatch", path, *args, out_dir=batch_dir) as srv:
        send(path, b"1\n2", b"3", b"4\n5\n6").close()
        wait_for(lambda: _lines_in_batches(batch_dir) == 6, what="6 lines in batches")
        assert srv.stop() == 0
    assert ",".join(r.split(":")[1] for r in read_records(batch_dir)) == "1,2,3,4,5,6"
    assert srv.summary()["handled"] == 3


def _lines_in_batches(out: Path) -> int:
    return sum(int(record.split(":")[0]) for record in read_records(out))


# -- the log sink as a logging daemon: rotation with several workers ----------------------------


def test_log_sink_rotates_by_size_without_losing_or_splitting_lines(sock_dir: Path) -> None:
    path, sink = sock_dir / "log.sock", sock_dir / "app.jsonl"
    env = sink_env(sink, UGSINK_MAX_BYTES="4096", UGSINK_BACKUPS="100", UGSINK_FSYNC="always")
    payloads = [f"line {i:04d} ".encode() + b"x" * 40 for i in range(600)]
    with run_server(SINK, path, "--workers", "2", env=env) as srv:
        send(path, *payloads).close()
        wait_for(lambda: len(sink_records(sink)) == 600, what="600 records")
        assert srv.stop() == 0

    assert sorted(r["text"].encode() for r in sink_records(sink)) == payloads
    rotated = list(sock_dir.glob("app.jsonl.*[0-9]"))
    assert len(rotated) >= 5
    assert all(p.stat().st_size <= 4096 for p in [*rotated, sink])


def test_bad_sink_option_stops_the_server_with_a_message(sock_dir: Path) -> None:
    path = sock_dir / "log.sock"
    env = sink_env(sock_dir / "x.jsonl", UGSINK_FSYNC="sometimes")
    with run_server(SINK, path, env=env, wait=False) as srv:
        assert srv.proc.wait(30) == 4
    assert "invalid value for UGSINK_FSYNC" in srv.stderr
    assert "fsync" in srv.stderr


# -- DogStatsD ----------------------------------------------------------------------------------

AGGREGATOR = "ugram.builtin:StatsdAggregator"


class Sampling:
    """Stands in for ``random()`` in the datadog client, so the test knows which sampled
    metrics were sent: both sampled calls of an even iteration of ``send_metrics`` (0.1 is
    kept at rate 0.5), none of an odd one (0.9 is dropped)."""

    def __init__(self) -> None:
        self._draws = itertools.cycle([0.1, 0.1, 0.9, 0.9])

    def __call__(self) -> float:
        return next(self._draws)


@pytest.fixture
def dogstatsd(monkeypatch: pytest.MonkeyPatch) -> Any:
    datadog = pytest.importorskip("datadog")
    monkeypatch.setattr("datadog.dogstatsd.base.random", Sampling())
    return datadog.DogStatsd


def send_metrics(client: Any, offset: int) -> None:
    """What each client sends (``offset`` makes the two clients' values differ)."""
    for i in range(50):
        client.increment("page.views", tags=["env:prod", "page:home"])
        client.increment("sampled.hits", value=3, sample_rate=0.5)  # even i sent, each counts 6
        client.gauge("temperature", offset + i, tags=["room:a"])
        client.histogram("latency", offset + i)
        client.histogram("sampled.latency", i, sample_rate=0.5)  # i = 0, 2, 4, ... sent
        client.distribution("payload.size", 10 * i)
        client.timing("db.query", i % 7)
        client.set("users.unique", f"user{i % 13}")
    client.decrement("queue.depth", 5, tags=["q:jobs"])
    client.event("deploy", "v1.2\nall good", alert_type="success", tags=["svc:api"])
    client.service_check("api.up", 1, message="slow")


def test_dogstatsd_client_totals_are_exact(sock_dir: Path, dogstatsd: Any) -> None:
    path, out = sock_dir / "dsd.sock", sock_dir / "statsd"
    env = child_env(None, UGSTATSD_DIR=str(out), UGSTATSD_FLUSH_INTERVAL="0.5")
    with run_server(AGGREGATOR, path, "--codec", "statsd", "--workers", "2", env=env) as srv:
        options = {"socket_path": str(path), "disable_telemetry": True, "socket_timeout": None}
        one = dogstatsd(disable_buffering=True, disable_aggregation=True, **options)
        send_metrics(one, 0)
        one.close_socket()
        wait_for(lambda: (out / "totals.json").exists(), what="a first flush")
        buffered = dogstatsd(disable_buffering=False, disable_aggregation=True, **options)
        send_metrics(buffered, 1000)
        buffered.flush()
        buffered.close_socket()
        assert srv.stop() == 0

    totals = json.loads((out / "totals.json").read_text())
    by_name = {
        (kind, entry["name"]): entry
        for kind in ("counters", "gauges", "sets", "histograms", "distributions", "timers")
        for entry in totals[kind]
    }
    assert by_name["counters", "page.views"]["value"] == 100
    assert by_name["counters", "page.views"]["tags"] == ["env:prod", "page:home"]
    assert by_name["counters", "sampled.hits"]["value"] == 50 * 3 / 0.5
    assert by_name["counters", "queue.depth"]["value"] == -10
    assert by_name["gauges", "temperature"]["value"] == 1049
    assert by_name["sets", "users.unique"]["value"] == 13
    latency = by_name["histograms", "latency"]
    assert (latency["count"], latency["min"], latency["max"]) == (100, 0, 1049)
    assert latency["sum"] == sum(range(50)) + sum(range(1000, 1050))
    sampled = by_name["histograms", "sampled.latency"]
    assert (sampled["count"], sampled["sum"]) == (100, 2 * 2 * sum(range(0, 50, 2)))
    assert by_name["distributions", "payload.size"]["count"] == 100
    assert by_name["timers", "db.query"]["sum"] == 2 * sum(i % 7 for i in range(50))
    assert (totals["events"], totals["service_checks"], totals["invalid_lines"]) == (2, 2, 0)
    assert totals["lines"] == 2 * (50 * 6 + 25 * 2 + 3)

    intervals = [json.loads(line) for line in (out / "statsd.jsonl").read_text().splitlines()]
    assert len(intervals) == totals["flushes"] >= 2
    assert sum(r["lines"] for r in intervals) == totals["lines"]
    assert (
        sum(c["value"] for r in intervals for c in r["counters"] if c["name"] == "page.views")
        == 100
    )
    assert srv.summary()["invalid"] == 0
    assert not list((out / "partials").iterdir())

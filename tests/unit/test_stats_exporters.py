"""Exporters of the counters, without a server: Prometheus collector and app, the control
socket, logging set-up, callbacks and the doctor's checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ugram import control as control_module
from ugram import httpd, logs
from ugram.config import make_config
from ugram.control import (
    MAX_REPORT_BYTES,
    ControlServer,
    control_path,
    fetch,
    render,
)
from ugram.doctor import check_qlen, check_socket_path, run_checks
from ugram.errors import ConfigError, NotASocketError, SocketError, UgramError
from ugram.events import Callbacks, ConnState
from ugram.health import Health
from ugram.metrics import (
    METRICS,
    ConnectionCounters,
    MetricsServer,
    ServerCollector,
    make_app,
    parse_address,
)
from ugram.observe import ProcessInfo, Report, WorkerInfo
from ugram.sockets import BoundSocket, bind_stream_socket, unlink_if_ours
from ugram.stats import LATENCY_BOUNDS, Latency, Snapshot


def make_report(healthy: bool = True, **totals: float) -> Report:
    """A report as a running server with two workers would give."""
    fields = {f.name: 0 for f in msgspec.structs.fields(Snapshot)} | totals
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    counts[3], counts[9], counts[-1] = 4, 1, 1
    return Report(
        version="0.0.test",
        time=1000.0,
        pid=1,
        socket="/tmp/x.sock",
        phase="running",
        uptime_seconds=12.5,
        active_workers=2,
        worker_slots=4,
        totals=Snapshot(**fields),
        receiver=ProcessInfo(pid=2, state="running"),
        workers=[
            WorkerInfo(
                index=i,
                pid=10 + i,
                state="running",
                ring_depth=i,
                ring_bytes=100 * i,
                ring_capacity=65536,
                handled=5 * i,
                handler_errors=0,
                invalid=0,
                replayed=0,
                quarantined=0,
            )
            for i in range(2)
        ],
        latency=Latency(bounds=list(LATENCY_BOUNDS), counts=counts, sum_seconds=0.25),
        health=Health(ok=healthy, reasons=[] if healthy else ["worker 1 (pid 11) is booting"]),
        metrics="",
        config={"handler": "app:handle", "codec": "json"},
    )


def scrape(report: Report) -> dict[str, Any]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(lambda: report))
    registry.register(ConnectionCounters())  # the endpoint's own counters, as MetricsServer adds
    text = generate_latest(registry).decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# -- Prometheus -----------------------------------------------------------------------------------


def test_collector_exposes_exactly_the_documented_metrics() -> None:
    samples = scrape(make_report())
    names = {key.split("{")[0] for key in samples}
    expected = set()
    for spec in METRICS:
        if spec.kind == "histogram":
            expected |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
        else:
            expected.add(spec.name)
    assert names == expected


def test_collector_values_come_from_the_report() -> None:
    samples = scrape(
        make_report(received=20, handled=15, oversized=3, invalid=2, bytes=99, fds_closed=7)
    )

    assert samples["ugram_received_total{}"] == 20
    assert samples["ugram_received_bytes_total{}"] == 99
    assert samples["ugram_handled_total{}"] == 15
    assert samples['ugram_rejected_total{"reason": "oversized"}'] == 3
    assert samples['ugram_rejected_total{"reason": "invalid"}'] == 2
    assert samples['ugram_rejected_total{"reason": "shed"}'] == 0
    assert samples["ugram_fds_closed_total{}"] == 7
    assert samples['ugram_ring_bytes{"worker": "1"}'] == 100
    assert samples['ugram_worker_handled_total{"worker": "1"}'] == 5
    assert samples['ugram_up{"process": "worker 0"}'] == 1
    assert samples["ugram_healthy{}"] == 1
    assert samples["ugram_handling_latency_seconds_count{}"] == 6
    assert samples["ugram_handling_latency_seconds_sum{}"] == 0.25
    buckets = sorted(
        (float(json.loads(k[k.index("{") :])["le"]), v)
        for k, v in samples.items()
        if k.startswith("ugram_handling_latency_seconds_bucket")
    )
    assert [v for _, v in buckets][:4] == [0, 0, 0, 4]  # cumulative
    assert buckets[-1] == (float("inf"), 6)


def _call(app: Any, path: str) -> tuple[str, str]:
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers: status.append(s)))
    return status[0], body.decode()


def test_app_routes_metrics_healthz_and_nothing_else() -> None:
    app = make_app(make_report, lambda: Health(ok=True, reasons=[]))
    assert _call(app, "/healthz") == ("200 OK", "ok\n")
    status, body = _call(app, "/metrics")
    assert status == "200 OK"
    assert "ugram_received_total 0.0" in body
    assert _call(app, "/nope")[0] == "404 Not Found"


def test_healthz_is_503_with_the_reasons() -> None:
    sick = Health(ok=False, reasons=["receiver is not running", "worker 1 (pid 7) is booting"])
    app = make_app(make_report, lambda: sick)
    status, body = _call(app, "/healthz")
    assert status == "503 Service Unavailable"
    assert body == "unhealthy: receiver is not running; worker 1 (pid 7) is booting\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("0.0.0.0", 9100)),
        ("[::1]:0", ("::1", 0)),
        ("/run/app/metrics.sock", "/run/app/metrics.sock"),
        ("@ugram-metrics", "@ugram-metrics"),
    ],
)
def test_metrics_addresses(value: str, expected: object) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["9100", "host:", "host:99999"])
def test_bad_metrics_addresses_are_refused(value: str) -> None:
    with pytest.raises(SocketError):
        parse_address(value)
    with pytest.raises(ConfigError, match="invalid value for metrics"):
        make_config(metrics=value)


def test_metrics_server_over_tcp_serves_and_stops() -> None:
    server = MetricsServer("127.0.0.1:0", make_report, lambda: Health(ok=True, reasons=[]))
    server.start()
    try:
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert b"ugram_handled_total" in response.read()
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(server.url, timeout=2)


def _http_over_unix(path: str, target: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


def test_metrics_server_over_a_unix_path_keeps_the_mode_and_cleans_up(sock_dir: Path) -> None:
    path = sock_dir / "m.sock"
    server = MetricsServer(str(path), make_report, lambda: Health(ok=True, reasons=[]), 0o600)
    server.start()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert _http_over_unix(str(path), "/healthz").endswith("\r\n\r\nok\n")
        assert "ugram_received_total" in _http_over_unix(str(path), "/metrics")
    finally:
        server.close()
    assert not path.exists()


def _big_report(workers: int) -> Report:
    """A report with many worker slots: a /metrics response larger than socket buffers."""
    base = make_report()
    slot = base.workers[0]
    return msgspec.structs.replace(
        base, workers=[msgspec.structs.replace(slot, index=i) for i in range(workers)]
    )


def test_a_client_that_does_not_read_is_cut_off_without_holding_others(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpd, "WRITE_TIMEOUT", 2.0)
    path = str(sock_dir / "m.sock")
    big = _big_report(2000)  # ~400 kB of /metrics: twice what a unix socket buffers
    server = MetricsServer(path, lambda: big, lambda: Health(ok=True, reasons=[]))
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
            stalled.connect(path)
            stalled.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")  # and never read
            assert select.select([stalled], [], [], 10)[0], "no response started"
            healthz = _http_over_unix(path, "/healthz")
            cut_while_answering = server.connections.timed_out
            _wait(lambda: server.connections.timed_out == 1, "the stalled client to be cut off")
            stalled.settimeout(5)
            received = b"".join(iter(lambda: stalled.recv(65536), b""))
        full = _http_over_unix(path, "/metrics")
    finally:
        server.close()
    assert healthz.endswith("\r\n\r\nok\n")
    assert cut_while_answering == 0  # /healthz did not wait for the stalled response
    assert 0 < len(received) < len(full)


def test_past_the_cap_a_connection_is_refused_only_when_none_is_still_sending_its_head(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpd, "MAX_CONNECTIONS", 2)
    release = threading.Event()

    def slow_health() -> Health:
        release.wait(20)
        return Health(ok=True, reasons=[])

    path = str(sock_dir / "m.sock")
    server = MetricsServer(path, make_report, slow_health)
    server.start()
    busy = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for sock in busy:  # two whole requests, answered only once released
            sock.connect(path)
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        endpoint = server._endpoint
        _wait(lambda: len(endpoint._open) == 2 and not endpoint._reading, "both heads read")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as third:
            third.settimeout(5)
            third.connect(path)
            refused = b"".join(iter(lambda: third.recv(65536), b""))
        release.set()
        answers = [b"".join(iter(lambda s=sock: s.recv(65536), b"")) for sock in busy]
    finally:
        release.set()
        for sock in busy:
            sock.close()
        server.close()
    assert refused.startswith(b"HTTP/1.0 503 "), refused
    assert all(answer.endswith(b"\r\n\r\nok\n") for answer in answers)
    assert (server.connections.refused, server.connections.evicted) == (1, 0)


BAD_REQUESTS = [
    (b"garbage\r\n\r\n", b"HTTP/1.0 400 "),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", b"HTTP/1.0 400 "),  # TLS, say
    (b"GET /healthz HTTP/1.0\r\nno colon here\r\n\r\n", b"HTTP/1.0 400 "),
    (b"GET /healthz HTTP/2.0\r\n\r\n", b"HTTP/1.0 400 "),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.0\r\n\r\n", b"HTTP/1.0 431 "),
    (b"GET / HTTP/1.0\r\n" + b"X-Pad: 0123456789\r\n" * 1000 + b"\r\n", b"HTTP/1.0 431 "),
    (b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.0 200 "),
]


def test_garbage_gets_an_error_status_and_clients_that_leave_are_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    big = _big_report(2000)
    server = MetricsServer("127.0.0.1:0", lambda: big, lambda: Health(ok=True, reasons=[]))
    server.start()
    where = server.url.removeprefix("http://").removesuffix("/metrics").rpartition(":")
    address = (where[0], int(where[2]))
    try:
        answers = [_exchange(address, request) for request, _ in BAD_REQUESTS]
        for request in (b"", b"GET /metr", b"GET /metrics HTTP/1.0\r\n\r\n"):
            with socket.create_connection(address, timeout=5) as leaving:
                leaving.sendall(request)
                # Reset rather than close: the server's write fails (broken pipe, reset).
                leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        idle = [socket.create_connection(address, timeout=5) for _ in range(3)]
        healthz = _exchange(address, b"GET /healthz HTTP/1.0\r\n\r\n")
    finally:
        server.close()  # with three idle connections open: cut off, not waited for
    left_open = [_exchange_closed(sock) for sock in idle]

    assert [a[:13] for a in answers] == [expected for _, expected in BAD_REQUESTS]
    assert healthz.endswith(b"\r\n\r\nok\n")
    assert left_open == [b""] * 3
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


def _exchange(address: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            return b"".join(iter(lambda: sock.recv(65536), b""))
    return b""


def _exchange_closed(sock: socket.socket) -> bytes:
    with sock, contextlib.suppress(ConnectionResetError):
        return sock.recv(65536)
    return b""


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the control socket ---------------------------------------------------------------------------


def test_control_path_sits_next_to_the_socket() -> None:
    assert control_path("/run/app/x.sock") == "/run/app/x.sock.ctl"
    assert control_path("@app") == "@app.ctl"
    assert control_path("rel.sock") == os.path.abspath("rel.sock") + ".ctl"


def test_stream_socket_gets_its_mode_and_replaces_only_stale_sockets(sock_dir: Path) -> None:
    path = str(sock_dir / "c.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listening, closed: stale
    bound = bind_stream_socket(path, 0o640)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
        with pytest.raises(SocketError, match="in use"):
            bind_stream_socket(path, 0o640)
    finally:
        bound.sock.close()
        unlink_if_ours(bound)


def test_stream_socket_refuses_a_regular_file_and_leaves_it(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    path.write_text("keep me")
    with pytest.raises(NotASocketError):
        bind_stream_socket(str(path), 0o600)
    assert path.read_text() == "keep me"


@pytest.fixture
def control(sock_dir: Path) -> Iterator[tuple[str, ControlServer]]:
    socket_path = str(sock_dir / "s.sock")
    server = ControlServer.bind_for(socket_path, make_report, make_config(mode="0600"))
    assert server is not None
    server.start()
    yield socket_path, server
    server.close()


def test_control_socket_answers_a_report_and_is_removed(
    control: tuple[str, ControlServer],
) -> None:
    socket_path, server = control
    assert fetch(socket_path) == make_report()
    assert stat.S_IMODE(os.lstat(socket_path + ".ctl").st_mode) == 0o600
    server.close()
    assert not os.path.exists(socket_path + ".ctl")


def test_control_socket_leaves_a_successors_file_alone(
    control: tuple[str, ControlServer],
) -> None:
    socket_path, server = control
    os.unlink(socket_path + ".ctl")
    Path(socket_path + ".ctl").write_text("a successor's")
    server.close()
    assert Path(socket_path + ".ctl").read_text() == "a successor's"


def test_control_socket_builds_a_report_at_most_once_per_max_age(sock_dir: Path) -> None:
    socket_path = str(sock_dir / "s.sock")
    now, built = [0.0], []

    def build() -> Report:
        built.append(now[0])
        return make_report(received=len(built))

    bound = bind_stream_socket(control_path(socket_path), 0o600)
    server = ControlServer(bound, build, max_age=0.1, clock=lambda: now[0])
    server.start()
    try:
        first = [fetch(socket_path) for _ in range(50)]
        now[0] = 0.09  # still fresh
        first += [fetch(socket_path) for _ in range(50)]
        now[0] = 0.1
        second = fetch(socket_path)
    finally:
        server.close()
    assert built == [0.0, 0.1]
    assert {report.totals.received for report in first} == {1}
    assert second.totals.received == 2
    assert (server.answer.requests, server.answer.builds) == (101, 2)


def test_a_slow_report_is_kept_longer_so_a_flood_cannot_keep_building_it() -> None:
    now = [0.0]

    def slow_build() -> bytes:
        now[0] += 1.0  # a report that takes a second to build
        return b"{}"

    answer = control_module.CachedAnswer(slow_build, max_age=0.1, clock=lambda: now[0])
    for _ in range(100):  # a request every 0.1 s, each older than max_age
        answer()
        now[0] += 0.1
    # Each build (1 s) keeps its answer for 9 s: building is at most 10% of the time.
    assert answer.builds == 2, now


def test_fetch_without_a_server_says_so(sock_dir: Path) -> None:
    with pytest.raises(UgramError, match=r"no ugram server answers on .*s\.sock\.ctl"):
        fetch(str(sock_dir / "s.sock"))


def test_a_control_socket_path_taken_by_something_else_stops_the_start(sock_dir: Path) -> None:
    (sock_dir / "s.sock.ctl").mkdir()
    with pytest.raises(SocketError, match=r"control socket.*--control=false"):
        ControlServer.bind_for(str(sock_dir / "s.sock"), make_report, make_config())
    assert (sock_dir / "s.sock.ctl").is_dir(), "left as it was"


def test_render_shows_totals_rates_and_workers() -> None:
    before = make_report(received=100, handled=90)
    after = msgspec.structs.replace(
        make_report(received=300, handled=250), time=1002.0, uptime_seconds=14.5
    )
    text = render(before, after)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["received"] == ["300", "100.0"]  # (300 - 100) / 2 s
    assert rows["handled"] == ["250", "80.0"]
    assert rows["1"][:3] == ["11", "running", "1"]  # worker 1: pid, state, ring depth
    assert "— healthy" in text
    assert "p50 <= 8 us" in text


def test_render_shows_the_private_memory_of_each_process() -> None:
    base = make_report()
    report = msgspec.structs.replace(
        base,
        uss_bytes=15 * 2**20,
        receiver=ProcessInfo(pid=2, state="running", uss_bytes=9 * 2**20 + 2**19),
        workers=[
            msgspec.structs.replace(base.workers[0], uss_bytes=12 * 2**20),
            base.workers[1],  # not readable: shown as unknown, not as 0
        ],
    )
    lines = render(report, report).splitlines()
    assert (
        "private memory (USS): supervisor 15.0 MiB, receiver 9.5 MiB, workers 12.0 MiB in all"
        in lines
    )
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.strip()}
    assert rows["0"][-2:] == ["12.0", "MiB"]
    assert rows["1"][-1] == "-"
    assert rows["worker"][-1] == "private"


def test_render_escapes_every_string_the_server_sent() -> None:
    hostile = "\x1b]0;owned\x07\r\nfake line\u2028\u202e"
    report = msgspec.structs.replace(
        make_report(healthy=False),
        version=hostile,
        socket=hostile,
        phase=hostile,
        receiver=ProcessInfo(pid=2, state=hostile),
        workers=[msgspec.structs.replace(w, state=hostile) for w in make_report().workers],
        health=Health(ok=False, reasons=[hostile, hostile]),
    )
    text = render(report, report)
    assert text.count("\n") == render(make_report(), make_report()).count("\n")
    assert all(ch == "\n" or ch.isprintable() for ch in text), repr(text)
    assert "\\x1b]0;owned\\x07\\r\\nfake line\\u2028\\u202e" in text
    assert not any(line.startswith("fake line") for line in text.splitlines())


def serve_bytes(path: str, data: bytes) -> socket.socket:
    """A stream socket at ``path`` answering one connection with ``data`` (from a thread)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):  # the client may stop reading first
            conn.sendall(data)

    threading.Thread(target=answer, daemon=True).start()
    return listener


def test_fetch_reads_at_most_the_cap_and_says_so(sock_dir: Path) -> None:
    socket_path = str(sock_dir / "s.sock")
    endless = b"[" * (MAX_REPORT_BYTES + 1)
    with (
        serve_bytes(control_path(socket_path), endless),
        pytest.raises(UgramError, match=r"s\.sock\.ctl sent more than 4 MiB"),
    ):
        fetch(socket_path)


# -- logging --------------------------------------------------------------------------------------


@contextlib.contextmanager
def bare_root_logger() -> Iterator[None]:
    """A root logger without handlers, as in a fresh process (pytest's are put back after)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = handlers, level


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with bare_root_logger():
        logs.configure("info", "worker-9", log_format="json")
        logging.getLogger("ugram.test").warning("hello %s", "there")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "hello there"
    assert (line["level"], line["process"], line["logger"]) == ("warning", "worker-9", "ugram.test")


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_log_config_file_is_applied_last(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "out.log"
    config = {
        "handlers": {"f": {"class": "logging.FileHandler", "filename": str(out)}},
        "loggers": {"ugram.dicttest": {"handlers": ["f"], "level": "DEBUG"}},
    }
    file = tmp_path / f"logging{suffix}"
    if suffix == ".json":
        file.write_text(json.dumps(config))
    else:
        file.write_text(
            f'[logging.handlers.f]\nclass = "logging.FileHandler"\nfilename = "{out}"\n'
            '[logging.loggers."ugram.dicttest"]\nhandlers = ["f"]\nlevel = "DEBUG"\n'
        )
    with bare_root_logger():
        logs.configure("error", "supervisor", log_config=str(file))
        logging.getLogger("ugram.dicttest").debug("through the dictConfig")
    for handler in logging.getLogger("ugram.dicttest").handlers:
        handler.close()
    logging.getLogger("ugram.dicttest").handlers = []
    assert "through the dictConfig" in out.read_text()


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "No such file"), ("{not json", "not valid JSON"), ("[1, 2]", "dictionary")],
)
def test_bad_log_config_names_the_option(tmp_path: Path, content: str | None, why: str) -> None:
    file = tmp_path / "log.json"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ConfigError, match=rf"invalid value for log_config: '{file}'.*{why}"):
        logs.load_log_config(str(file))


def test_child_processes_survive_a_bad_log_config(capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(log_config="/nonexistent-ugram/log.json")
    with bare_root_logger():
        logs.configure_from(config, "receiver", strict=False)
    assert "keeping the basic logging set-up" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        logs.configure_from(config, "supervisor")


# -- callbacks ------------------------------------------------------------------------------------


def test_a_raising_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    callbacks, seen = Callbacks(), []

    def explode(*args: object) -> None:
        raise RuntimeError("callback bug")

    callbacks.info += [explode, lambda *args: seen.append(args)]
    callbacks.error += [explode, lambda *errors: seen.append(errors)]
    callbacks.server_info += [explode, lambda message: seen.append((message,))]

    callbacks.emit_info("/s", "worker 0", ConnState.WORKER_STARTED)
    callbacks.emit_error(ValueError("x"))
    callbacks.emit_server_info("hello")

    assert len(seen) == 3
    assert seen[0] == ("/s", "worker 0", ConnState.WORKER_STARTED)
    assert caplog.text.count("raised; ignored") == 3
    assert "RuntimeError: callback bug" in caplog.text


# -- doctor ---------------------------------------------------------------------------------------


def test_doctor_advises_raising_the_default_qlen(tmp_path: Path) -> None:
    file = tmp_path / "qlen"
    file.write_text("10\n")
    finding = check_qlen(str(file))
    assert finding.level == "warn"
    assert "net.unix.max_dgram_qlen = 10" in finding.title
    assert "sysctl -w net.unix.max_dgram_qlen=512" in finding.advice
    assert "network namespace" in finding.advice
    file.write_text("1024\n")
    assert check_qlen(str(file)).level == "ok"
    assert check_qlen(str(tmp_path / "missing")).level == "info"


def test_doctor_fails_on_a_missing_directory_and_on_an_open_one(sock_dir: Path) -> None:
    missing = make_config(socket=str(sock_dir / "nope" / "s.sock"))
    assert [f.level for f in check_socket_path(missing)] == ["fail"]
    assert run_checks(missing, io.StringIO()) == 1
    open_dir = sock_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    findings = check_socket_path(make_config(socket=str(open_dir / "s.sock")))
    assert findings[0].level == "fail", "the server refuses such a directory"
    assert "without the sticky bit" in findings[0].detail
    accepted = make_config(socket=str(open_dir / "s.sock"), allow_unsafe_dir=True)
    assert check_socket_path(accepted)[0].level == "warn"
    open_dir.chmod(0o1777)
    findings = check_socket_path(make_config(socket=str(open_dir / "s.sock")))
    assert findings[0].level == "warn"
    assert "sticky" in findings[0].detail


def test_doctor_passes_in_a_private_directory(sock_dir: Path) -> None:
    sock_dir.chmod(0o750)
    out = io.StringIO()
    assert run_checks(make_config(socket=str(sock_dir / "s.sock")), out) == 0
    assert "net.unix.max_dgram_qlen = " in out.getvalue()
    assert "0 fatal" in out.getvalue()


def test_doctor_bound_socket_path_findings(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(path))
    try:
        findings = check_socket_path(make_config(socket=str(path)))
        assert findings[-1].level == "warn"
        assert "already running" in findings[-1].detail
    finally:
        live.close()
    assert "stale" in check_socket_path(make_config(socket=str(path)))[-1].title


def test_unlink_if_ours_needs_the_same_inode(sock_dir: Path) -> None:
    path = str(sock_dir / "x")
    bound = bind_stream_socket(path, 0o600)
    bound.sock.close()
    assert unlink_if_ours(BoundSocket(bound.sock, path, (0, 0))) is False
    assert unlink_if_ours(bound) is True

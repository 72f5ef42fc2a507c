"""Observability of a real server: /metrics, /healthz, `ugram stats`, `ugram config`,
`ugram doctor` and logging, checked against what the test itself sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, child_env, gone, run_server, wait_for
from tests.scrape import metrics_url, scrape

APP = """
import msgspec


class Event(msgspec.Struct):
    n: int
    fail: bool = False


def handle(msg: Event) -> None:
    if msg.fail:
        raise ValueError(f"asked to fail at {msg.n}")
"""
MAX_DATAGRAM = 256


@pytest.fixture
def app_env(sock_dir: Path) -> dict[str, str]:
    """Environment in which ``obsapp:handle`` (a typed handler that fails on demand) imports."""
    (sock_dir / "obsapp.py").write_text(APP)
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(sock_dir), env["PYTHONPATH"]])
    return env


def ugram(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ugram", *args],
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def healthz(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stats_json(path: Path) -> dict[str, Any]:
    result = ugram("stats", "--socket", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# -- counters match the truth ---------------------------------------------------------------------


def mixed_payloads(count: int) -> tuple[list[bytes], dict[str, int]]:
    """Known valid, failing, undecodable and oversized datagrams, and the counts to expect."""
    garbage = [b"", b"not json", b"{", b'{"n": "text"}', b"[1, 2]"]
    payloads, truth = [], {"ok": 0, "fail": 0, "invalid": 0, "oversized": 0, "bytes": 0}
    for i in range(count):
        kind = ("oversized", "invalid", "fail", "ok", "ok", "ok", "ok")[i % 7]
        if kind == "oversized":
            payload = b'{"n": %d, "pad": "' % i + b"x" * MAX_DATAGRAM + b'"}'
        elif kind == "invalid":
            payload = garbage[i % len(garbage)]
        elif kind == "fail":
            payload = b'{"n": %d, "fail": true}' % i
        else:
            payload = b'{"n": %d}' % i
        payloads.append(payload)
        truth[kind] += 1
        truth["bytes"] += len(payload) if kind != "oversized" else 0
    return payloads, truth


def flood(path: Path, payloads: list[bytes]) -> threading.Thread:
    def run() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(str(path))
            for payload in payloads:
                sock.send(payload)  # blocking: a full queue slows us down, never drops

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_counters_match_what_was_sent_rejected_and_handled(
    sock_dir: Path, app_env: dict[str, str]
) -> None:
    path = sock_dir / "s.sock"
    payloads, truth = mixed_payloads(7000)
    args = ("--workers", "2", "--codec", "json", "--max-datagram", str(MAX_DATAGRAM))
    with run_server("obsapp:handle", path, *args, "--metrics", "127.0.0.1:0", env=app_env) as srv:
        url = metrics_url(srv)
        sender = flood(path, payloads)
        previous: dict[str, float] = {}
        while sender.is_alive():  # scrape during the flood: monotonic, never above the truth
            now = scrape(url)
            assert now["ugram_received_total{}"] <= len(payloads)
            assert all(now[k] >= v for k, v in previous.items() if k.endswith("_total{}")), now
            previous = now
        sender.join()
        taken = truth["ok"] + truth["fail"] + truth["invalid"]
        wait_for(
            lambda: scrape(url)["ugram_handling_latency_seconds_count{}"] == taken,
            what="every record taken by a worker",
        )

        metrics = scrape(url)
        report = stats_json(path)
        table = ugram("stats", "--socket", str(path), "--interval", "0.2")

    assert metrics["ugram_received_total{}"] == len(payloads)
    assert metrics["ugram_received_bytes_total{}"] == truth["bytes"]
    assert metrics["ugram_handled_total{}"] == truth["ok"] + truth["fail"]
    assert metrics["ugram_handler_errors_total{}"] == truth["fail"]
    assert metrics['ugram_rejected_total{reason="invalid"}'] == truth["invalid"]
    assert metrics['ugram_rejected_total{reason="oversized"}'] == truth["oversized"]
    for reason in ("unauthorized", "rate_limited", "shed"):
        assert metrics[f'ugram_rejected_total{{reason="{reason}"}}'] == 0
    for name in ("replayed", "restarts", "lost", "possibly_lost", "worker_timeouts"):
        assert metrics[f"ugram_{name}_total{{}}"] == 0
    assert metrics['ugram_ring_depth{worker="0"}'] == metrics['ugram_ring_depth{worker="1"}'] == 0
    assert (
        metrics['ugram_worker_handled_total{worker="0"}']
        + metrics['ugram_worker_handled_total{worker="1"}']
        == truth["ok"] + truth["fail"]
    )
    assert metrics["ugram_healthy{}"] == 1
    assert metrics["ugram_workers_active{}"] == 2

    totals = report["totals"]
    assert totals["received"] == len(payloads)
    assert (totals["handled"], totals["handler_errors"]) == (
        truth["ok"] + truth["fail"],
        truth["fail"],
    )
    assert (totals["invalid"], totals["oversized"]) == (truth["invalid"], truth["oversized"])
    assert sum(report["latency"]["counts"]) == taken
    assert report["health"] == {"ok": True, "reasons": []}
    assert [w["state"] for w in report["workers"]] == ["running", "running"]
    assert report["config"]["max_datagram"] == MAX_DATAGRAM

    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines() if line.strip()}
    assert rows["received"][0] == f"{len(payloads):,}"
    assert rows["oversized"][0] == f"{truth['oversized']:,}"


# -- /healthz follows the liveness check ----------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return not gone(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def test_healthz_turns_unhealthy_on_a_frozen_worker_and_recovers_after_its_replacement(
    sock_dir: Path, app_env: dict[str, str]
) -> None:
    path = sock_dir / "s.sock"
    args = ("--workers", "2", "--codec", "json", "--worker-timeout", "1")
    with run_server("obsapp:handle", path, *args, "--metrics", "127.0.0.1:0", env=app_env) as srv:
        url = metrics_url(srv)
        wait_for(lambda: healthz(url)[0] == 200, what="a healthy server")
        frozen = stats_json(path)["workers"][0]["pid"]

        os.kill(frozen, signal.SIGSTOP)
        stopped_at = time.monotonic()
        answers: list[tuple[int, str]] = []
        try:
            wait_for(
                lambda: answers.append(healthz(url)) or answers[-1][0] == 503,
                what="/healthz to notice the frozen worker",
            )
            noticed_after = time.monotonic() - stopped_at
            # /healthz and the supervisor judge independently; a SIGCONT before the supervisor
            # acted would let the worker recover. Wait until it is really gone.
            wait_for(lambda: not _alive(frozen), what="the frozen worker to be killed")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen, signal.SIGCONT)  # too late: it was declared stalled
        wait_for(lambda: healthz(url)[0] == 200, what="/healthz to recover")
        replacement = stats_json(path)["workers"][0]["pid"]
        metrics = scrape(url)

    reasons = answers[-1][1]
    assert {code for code, _ in answers[:-1]} <= {200}
    assert noticed_after >= 0.9, "unhealthy before worker_timeout ran out"
    assert re.fullmatch(
        rf"unhealthy: worker 0 \(pid {frozen}\) is (unresponsive|being killed)\b.*\n", reasons
    ), reasons
    assert "worker 1" not in reasons
    assert replacement not in (0, frozen)
    assert metrics["ugram_worker_timeouts_total{}"] == 1
    assert metrics["ugram_healthy{}"] == 1


# -- sockets next to the server socket ------------------------------------------------------------


def http_over_unix(path: Path, target: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        return b"".join(iter(lambda: client.recv(65536), b""))


def test_control_and_metrics_sockets_take_the_mode_and_are_removed(
    sock_dir: Path, app_env: dict[str, str]
) -> None:
    path, metrics = sock_dir / "s.sock", sock_dir / "m.sock"
    control = Path(f"{path}.ctl")
    args = ("--workers", "1", "--mode", "0640", "--metrics", str(metrics))
    with run_server(None, path, *args, env=app_env) as server:
        wait_for(lambda: control.exists() and metrics.exists(), what="control and metrics sockets")
        assert stat.S_IMODE(os.lstat(control).st_mode) == 0o640
        assert stat.S_IMODE(os.lstat(metrics).st_mode) == 0o640
        wait_for(lambda: http_over_unix(metrics, "/healthz").startswith(b"HTTP/1.0 200 OK"))
        assert http_over_unix(metrics, "/healthz").endswith(b"\r\n\r\nok\n")
        assert b"\nugram_received_total 0.0\n" in http_over_unix(metrics, "/metrics")
        assert stats_json(path)["metrics"] == f"unix:{metrics}:/metrics"
        assert server.stop() == 0
    assert not control.exists()
    assert not metrics.exists()


# -- the endpoint under slow and hostile clients -------------------------------------------------

Address = tuple[str, int] | str
SLOW_HEAD = b"GET /healthz HTTP/1.0\r\nUser-Agent: slowloris\r\n\r\n"


@pytest.fixture(params=["tcp", "unix"])
def endpoint(
    request: pytest.FixtureRequest, sock_dir: Path, app_env: dict[str, str]
) -> Iterator[Address]:
    """A real server's metrics endpoint, on TCP or on a unix path, answering /healthz."""
    path, metrics = sock_dir / "s.sock", sock_dir / "m.sock"
    value = "127.0.0.1:0" if request.param == "tcp" else str(metrics)
    with run_server(None, path, "--workers", "1", "--metrics", value, env=app_env) as server:
        if request.param == "tcp":
            host, port = re.findall(r"//(.+):(\d+)/", metrics_url(server))[0]
            where: Address = (host, int(port))
        else:
            wait_for(lambda: "serving metrics on" in server.stderr, what="the metrics endpoint")
            where = str(metrics)
        wait_for(lambda: get(where, "/healthz")[0] == 200, what="a healthy server")
        yield where


def connect(where: Address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX if isinstance(where, str) else socket.AF_INET)
    sock.settimeout(10)  # the old endpoint made a client wait longer: that fails the test
    sock.connect(where)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(where: Address, target: str) -> tuple[int, bytes]:
    """Status and body of one GET (HTTP/1.0, one request a connection)."""
    with connect(where) as sock:
        sock.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def endpoint_counters(where: Address) -> dict[str, float]:
    status, body = get(where, "/metrics")
    assert status == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith("ugram_metrics_connections_")
    }


class SlowClients:
    """Connections that send a request a byte every ``every`` seconds, or nothing at all.

    A thread trickles the bytes and notes when (seconds after connecting) and what the
    server answered on each connection before closing it.
    """

    def __init__(self, where: Address, idle: int, trickling: int, every: float = 0.5) -> None:
        self.started = time.monotonic()  # before connecting: the server cannot start earlier
        self.socks = [connect(where) for _ in range(idle + trickling)]
        self.trickling = self.socks[idle:]
        self.sent = dict.fromkeys(self.trickling, 0)
        self.answers: dict[socket.socket, tuple[float, bytes]] = {}
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while len(self.answers) < len(self.socks) and time.monotonic() - self.started < 30:
            waiting = [s for s in self.socks if s not in self.answers]
            readable = select.select(waiting, [], [], self._every)[0]
            for sock in readable:
                self.answers[sock] = (time.monotonic() - self.started, read_all(sock))
            for sock in self.trickling:
                if sock not in self.answers and self.sent[sock] < len(SLOW_HEAD) - 1:
                    with contextlib.suppress(OSError):
                        self.sent[sock] += sock.send(SLOW_HEAD[self.sent[sock] :][:1])

    def still_open(self) -> int:
        """How many connections the server has not answered or closed yet."""
        return len(self.socks) - len(self.answers)

    def join(self) -> None:
        self._thread.join(40)
        for sock in self.socks:
            sock.close()


def test_slow_clients_do_not_hold_the_endpoint_and_are_cut_off_at_the_deadline(
    endpoint: Address,
) -> None:
    slow = SlowClients(endpoint, idle=10, trickling=10)
    try:
        health, _ = get(endpoint, "/healthz")
        status, body = get(endpoint, "/metrics")
        open_while_answering = slow.still_open()
        slow.join()  # until the server has cut off every one of them
        counters = endpoint_counters(endpoint)
    finally:
        slow.join()

    # Answered while all 20 held their connections (the old endpoint served one at a time:
    # /healthz waited behind them, and a byte every 0.5 s held it forever).
    assert (health, status) == (200, 200)
    assert b"\nugram_received_total 0.0\n" in body
    assert open_while_answering == 20
    # Every slow client was cut off at the request deadline (5 s), slowloris or silent.
    assert len(slow.answers) == 20
    for after, answer in slow.answers.values():
        assert answer.startswith(b"HTTP/1.0 408 "), answer
        assert 4.5 <= after < 15, after
    assert min(slow.sent.values()) >= 5  # the tricklers kept sending until cut off
    assert counters["ugram_metrics_connections_timed_out_total"] == 20
    assert counters["ugram_metrics_connections_refused_total"] == 0


def test_past_the_cap_the_oldest_connection_without_a_request_makes_room(
    endpoint: Address,
) -> None:
    held = SlowClients(endpoint, idle=64, trickling=0)
    try:
        extra = [connect(endpoint) for _ in range(6)]
        wait_for(lambda: len(held.answers) == 6, what="six held connections cut off")
        oldest = held.socks[:6]
        health = get(endpoint, "/healthz")[0]  # the 7th past the cap: served, not refused
        counters = endpoint_counters(endpoint)
    finally:
        held.join()
        for sock in extra:
            sock.close()

    # The six that made room were the six oldest, told why (or reset) at once, not at the
    # request deadline; the rest were cut off at the deadline as before.
    assert set(oldest) <= set(held.answers)
    for sock in oldest:
        after, answer = held.answers[sock]
        assert answer.startswith(b"HTTP/1.0 503 ") or answer == b"", answer
        assert after < 4.5, after
    assert health == 200
    assert counters["ugram_metrics_connections_evicted_total"] >= 7
    assert counters["ugram_metrics_connections_refused_total"] == 0


def test_stats_shows_the_private_memory_of_each_process(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(None, path, "--workers", "2") as srv:
        report = stats_json(path)
        table = ugram("stats", "--socket", str(path), "--interval", "0.2")
        processes = {
            "supervisor": (report["pid"], report["uss_bytes"]),
            "receiver": (report["receiver"]["pid"], report["receiver"]["uss_bytes"]),
        }
        for w in report["workers"]:
            processes[f"worker {w['index']}"] = (w["pid"], w["uss_bytes"])
        rss = {name: psutil.Process(pid).memory_info().rss for name, (pid, _) in processes.items()}
        assert report["pid"] == srv.proc.pid

    # USS, not RSS: the pages only that process holds, less than all it has mapped in.
    for name, (_, uss) in processes.items():
        assert 0 < uss < rss[name], (name, uss, rss[name])
    assert table.returncode == 0, table.stderr
    memory = re.search(
        r"^private memory \(USS\): supervisor ([\d.,]+) MiB, receiver ([\d.,]+) MiB, "
        r"workers ([\d.,]+) MiB in all$",
        table.stdout,
        re.M,
    )
    assert memory is not None, table.stdout
    workers = [line.split() for line in table.stdout.splitlines() if re.match(r"[01] ", line)]
    assert [row[-1] for row in workers] == ["MiB", "MiB"], table.stdout
    assert all(float(row[-2]) > 0 for row in workers), table.stdout


def test_stats_without_control_socket_fails_with_one_line(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with run_server(None, path, "--workers", "1", "--control=false"):
        result = ugram("stats", "--socket", str(path))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"{path}.ctl" in result.stderr
    assert not Path(f"{path}.ctl").exists()


# -- ugram config, ugram doctor -------------------------------------------------------------------


def test_config_shows_cli_over_env_over_file_over_default(sock_dir: Path) -> None:
    file = sock_dir / "ugram.toml"
    file.write_text('workers = 3\ncodec = "json"\nmax_datagram = 1000\nlog_level = "warning"\n')
    env = child_env(UGRAM_WORKERS="5", UGRAM_MAX_DATAGRAM="2000")

    text = ugram("config", "--config", str(file), "--workers", "7", env=env)
    as_json = ugram("config", "--config", str(file), "--workers", "7", "--json", env=env)

    assert text.returncode == 0, text.stderr
    lines = dict(re.findall(r"^(\w+) = .*?# (.*)$", text.stdout, re.M))
    assert lines["workers"] == "cli"
    assert lines["max_datagram"] == "env UGRAM_MAX_DATAGRAM"
    assert lines["codec"] == lines["log_level"] == f"file {file}"
    assert lines["ring_size"] == "default"
    assert re.search(r"^workers = 7 ", text.stdout, re.M)
    effective = json.loads(as_json.stdout)
    assert effective["workers"] == {"value": 7, "source": "cli"}
    assert effective["max_datagram"] == {"value": 2000, "source": "env UGRAM_MAX_DATAGRAM"}
    assert effective["codec"] == {"value": "json", "source": f"file {file}"}


def test_config_refuses_an_unknown_key_with_a_suggestion(sock_dir: Path) -> None:
    file = sock_dir / "ugram.toml"
    file.write_text("wokers = 3\n")
    result = ugram("config", "--config", str(file))
    assert result.returncode == 2
    assert result.stderr.strip() == "ugram: unknown option 'wokers' (did you mean 'workers'?)"


def test_doctor_names_this_machines_qlen(sock_dir: Path) -> None:
    sock_dir.chmod(0o750)
    qlen = Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip()
    result = ugram("doctor", "--socket", str(sock_dir / "s.sock"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"net.unix.max_dgram_qlen = {qlen}" in result.stdout
    if int(qlen) < 512:
        assert "sysctl -w net.unix.max_dgram_qlen=512" in result.stdout


# -- logging in every process ---------------------------------------------------------------------


def _stop_after_warnings(server: Server) -> str:
    path = server.path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"x" * (MAX_DATAGRAM + 1), str(path))  # receiver: oversized
        for _ in range(2):
            sock.sendto(b"not json", str(path))  # a worker: undecodable
    wait_for(lambda: server.stderr.count("undecodable") == 2, what="both warnings")
    assert server.stop() == 0
    return server.stderr


def logged_server(
    sock_dir: Path, app_env: dict[str, str], *extra: str
) -> contextlib.AbstractContextManager[Server]:
    args = ("--workers", "2", "--codec", "json", "--max-datagram", str(MAX_DATAGRAM), *extra)
    return run_server("obsapp:handle", sock_dir / "s.sock", *args, env=app_env)


def test_json_logs_come_from_every_process(sock_dir: Path, app_env: dict[str, str]) -> None:
    with logged_server(sock_dir, app_env, "--log-format", "json") as server:
        stderr = _stop_after_warnings(server)
    entries = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    processes = {entry["process"] for entry in entries}
    assert {"supervisor", "receiver"} <= processes
    assert processes & {"worker-0", "worker-1"}
    assert any("larger than max_datagram" in e["message"] for e in entries)


def test_log_config_file_applies_in_every_process(sock_dir: Path, app_env: dict[str, str]) -> None:
    file = sock_dir / "logging.toml"
    file.write_text(
        '[formatters.tagged]\nformat = "TAGGED|%(processName)s|%(message)s"\n'
        '[handlers.err]\nclass = "logging.StreamHandler"\nformatter = "tagged"\n'
        '[root]\nhandlers = ["err"]\nlevel = "INFO"\n'
    )
    with logged_server(sock_dir, app_env, "--log-config", str(file)) as server:
        stderr = _stop_after_warnings(server)
    tagged = [line.split("|")[1] for line in stderr.splitlines() if line.startswith("TAGGED|")]
    assert {"supervisor", "receiver"} <= set(tagged)
    assert set(tagged) & {"worker-0", "worker-1"}


def test_unusable_log_config_stops_serve_with_one_line(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    bad = sock_dir / "missing.toml"
    result = ugram("serve", "--socket", str(path), "--log-config", str(bad))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"log_config: '{bad}'" in result.stderr
    assert not path.exists()


# -- a flood of scrapes --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.asyncio
async def test_a_scrape_flood_builds_one_report_per_max_age(
    sock_dir: Path, apps_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any local user can reach a loopback port; each report built takes the supervisor's
    # GIL. One report must serve every scrape within SCRAPE_MAX_AGE (made long here, so
    # that the count does not depend on how fast this machine is).
    import asyncio

    from tests.conftest import until
    from ugram import Supervisor, make_config
    from ugram.supervisor import observers

    builds: list[int] = []
    real = observers.build_report

    def counting(*args: Any, **kwargs: Any) -> Any:
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(observers, "build_report", counting)
    monkeypatch.setattr(observers, "SCRAPE_MAX_AGE", 3600.0)
    port = _free_port()
    config = make_config(
        socket=str(sock_dir / "m.sock"),
        handler="seqrec:Recorder",
        workers=1,
        metrics=f"127.0.0.1:{port}",
        control=False,
    )
    sup = Supervisor(config)
    task = asyncio.create_task(sup.serve())
    try:
        await until(lambda: sup.is_running or task.done(), what="serving")

        def fetch() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                body = r.read()
                assert b"ugram_received_total" in body
                return int(r.status)

        codes = await asyncio.gather(*(asyncio.to_thread(fetch) for _ in range(40)))
        assert codes == [200] * 40
        assert len(builds) == 1
        assert await sup.shutdown() == 0
    finally:
        if not task.done():
            sup.close()
        await asyncio.wait_for(task, 30)

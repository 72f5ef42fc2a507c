"""The examples of docs/many-hosts.md, run as the page says against a real nats-server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, run_server, send_all
from tests.integration.test_doc_blocks import extract
from tests.nats.conftest import NatsServer, read_stream
from tests.nats.helpers import forward_env


def _file(name: str) -> str:
    blocks = [b for b in extract(REPO / "docs" / "many-hosts.md") if b.code.startswith(f"# {name}")]
    assert len(blocks) == 1, f"docs/many-hosts.md has no single {name} block"
    return blocks[0].code


def test_the_handler_and_the_consumer_of_the_page_work(
    sock_dir: Path, tmp_path: Path, nats_server: NatsServer
) -> None:
    for name in ("forward_app.py", "consumer.py"):
        (tmp_path / name).write_text(_file(name))
    env = forward_env([nats_server.url], "EVENTS")
    env["NATS_URL"] = nats_server.url
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    path = sock_dir / "events.sock"
    with run_server("forward_app:App", path, "--codec", "json", env=env) as server:
        send_all(
            path,
            b'{"kind": "paid", "user": 7, "amount": 12.5}',
            b'{"kind": "refunded", "user": 8, "amount": 1.25}',
        )
        stored = read_stream([nats_server.url], "EVENTS", 2)
        assert server.stop() == 0, server.stderr[-3000:]
    assert sorted((m.subject, json.loads(m.data)["cents"]) for m in stored) == [
        ("events.paid", 1250),
        ("events.refunded", 125),
    ]
    out = subprocess.run(
        [sys.executable, "consumer.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.splitlines())
    assert len(lines) == 2
    assert lines[0].startswith("events.paid ")
    assert lines[0].endswith('{"user":7,"cents":1250}')
